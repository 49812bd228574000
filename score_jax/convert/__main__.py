"""``python -m score_jax.convert ...`` (see `score_jax.convert.score_sde.main`)."""
from score_jax.convert.score_sde import main

if __name__ == "__main__":
    main()

"""Moved to `score_jax.convert.dit` (re-exported here; ``python -m score_jax.convert_dit`` still
works, as does ``python -m score_jax.convert dit``)."""
from score_jax.convert.dit import *  # noqa: F403
from score_jax.convert.dit import convert_dit, load_state_dict, main  # noqa: F401

if __name__ == "__main__":
    main()

"""``python -m score_jax.evaluation.inception --to_npz IN.pth OUT.npz``."""
from score_jax.convert.inception import main

if __name__ == "__main__":
    main()

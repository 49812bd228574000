"""Moved to `score_jax.convert.autoencoder` (re-exported here; ``python -m
score_jax.convert_autoencoder`` still works, as does ``python -m score_jax.convert
autoencoder_kl``)."""
from score_jax.convert.autoencoder import *  # noqa: F403
from score_jax.convert.autoencoder import (  # noqa: F401
    convert_autoencoder_kl,
    load_state_dict,
    main,
)

if __name__ == "__main__":
    main()

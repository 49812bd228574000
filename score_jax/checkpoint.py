"""Checkpoints: converters for the released Score SDE checkpoints (and, later, the orbax manager).

Sections are kept apart so that each can grow independently.
"""

# ----------------------------------------------------------------------------------------------
# Converters for released checkpoints (implemented in score_jax.convert)
# ----------------------------------------------------------------------------------------------
from score_jax.convert import (  # noqa: F401 - re-exported API
    check_tree,
    convert_flax_score_sde,
    convert_pytorch,
    load_pytorch_checkpoint,
    load_variables,
    pytorch_ema_state_dict,
    save_variables,
)

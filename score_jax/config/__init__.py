"""The config boundary: what reads an ``ml_collections.ConfigDict`` lives in this package.

An ``ml_collections.ConfigDict`` is read here and nowhere below: ``build(config)`` returns a
typed `Built` of plain objects (SDE, network, optimiser, loss functions, jitted steps, sampler
method and options) that ``train_lib``, ``sample_lib`` and ``evaluation`` use. The modules:

- `schema`: `base_config` (every key with the reference defaults; absent values are None
  placeholders) and `known_keys`;
- `sampler_options`: ``config.sampling`` -> ``(method, options)`` read generically from the
  samplers' signatures, and `set_sampler`;
- `builders`: config -> SDE (generic over ``sde.SDES``), network, optimiser, dataset, labels;
- `objectives`: the registry of training objectives (`OBJECTIVE_SPECS`: loss builder, score
  wiring, sampler kind, what evaluation applies), `register_objective` to add one;
- `latent`: latent diffusion's keys (`is_latent`, `validate_latent`, `latent_space_from_config`,
  `resolve_latent_config`, `resolve_latent_scale_factor`: the ``latent.json`` record);
- `text`: objective "text_score" (captions, caption dropout, a jointly trained or frozen text
  encoder);
- `validation`: `validate_config`, before anything is compiled;
- `build`: `Built` and `build`.

Every public name is re-exported here: ``from score_jax import config; config.build(...)``.
"""
from score_jax.config import text as _text  # noqa: F401  (registers objective text_score)
from score_jax.config.build import Built, build
from score_jax.config.builders import (
                                       dataset_from_config,
                                       eval_split,
                                       guidance_scale_from_config,
                                       label_dropout_from_config,
                                       model_from_config,
                                       optimizer_from_config,
                                       scaled_loss_fn,
                                       sde_from_config,
)
from score_jax.config.latent import (
                                       autoencoder_fields_from_config,
                                       check_no_bpd,
                                       check_samplable,
                                       is_latent,
                                       latent_space_from_config,
                                       load_autoencoder_from_config,
                                       validate_latent,
)
from score_jax.config.latent import resolve_config as resolve_latent_config
from score_jax.config.latent import resolve_scale_factor as resolve_latent_scale_factor
from score_jax.config.objectives import (
                                       OBJECTIVE_SPECS,
                                       OBJECTIVES,
                                       Objective,
                                       distill_loss_from_config,
                                       flow_path_from_config,
                                       frozen_from_config,
                                       loss_fn_from_config,
                                       objective_from_config,
                                       objective_spec,
                                       precond_from_config,
                                       register_objective,
                                       score_fn_factory,
)
from score_jax.config.sampler_options import (
                                       FLOW_METHOD,
                                       config_methods,
                                       method_options,
                                       sampling_methods,
                                       sampling_options_from_config,
                                       set_sampler,
)
from score_jax.config.schema import (
                                       DATASET_NUM_CLASSES,
                                       DEFAULT_LABEL_DROPOUT,
                                       LIKELIHOOD_EPS,
                                       NO_DATASET,
                                       OPTION_ALIASES,
                                       SECTIONS,
                                       base_config,
                                       distill_base_config,
                                       known_keys,
                                       placeholder,
)
from score_jax.config.validation import fsdp_from_config, mesh_from_config, min_shard_size_from_config, validate_config

__all__ = [
    "LIKELIHOOD_EPS", "FLOW_METHOD", "OBJECTIVES", "OPTION_ALIASES", "DATASET_NUM_CLASSES",
    "NO_DATASET",
    "base_config", "known_keys", "sde_from_config", "model_from_config", "optimizer_from_config",
    "scaled_loss_fn", "dataset_from_config", "eval_split", "objective_from_config",
    "flow_path_from_config", "precond_from_config", "score_fn_factory", "frozen_from_config",
    "loss_fn_from_config",
    "DEFAULT_LABEL_DROPOUT", "label_dropout_from_config", "guidance_scale_from_config",
    "method_options", "config_methods", "sampling_methods", "sampling_options_from_config",
    "validate_config", "Built", "build", "SECTIONS", "placeholder", "OBJECTIVE_SPECS", "Objective",
    "objective_spec", "register_objective", "set_sampler", "distill_base_config",
    "distill_loss_from_config", "fsdp_from_config",
    "min_shard_size_from_config", "mesh_from_config",
    "is_latent", "validate_latent", "check_no_bpd", "check_samplable",
    "autoencoder_fields_from_config", "load_autoencoder_from_config", "latent_space_from_config",
    "resolve_latent_config", "resolve_latent_scale_factor",
]

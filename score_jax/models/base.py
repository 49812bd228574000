"""The declared interface of a network of ``models.MODELS`` (what ``get_model``, training and
the score wiring call).

A score / denoiser / velocity network is a ``flax.linen`` module called as

    model.apply(variables, x, labels, train=False, y=None) -> same shape as x

with x (B, H, W, C) NHWC, labels (B,) the noise label of the SDE / objective (sigma, or t * 999,
or an integer step: ``sde.network_labels``), ``train`` (dropout on) keyword-only, and ``y`` (B,)
int class labels when the network takes ``num_classes`` (label ``num_classes`` is the null
label). Its dataclass fields are the ``config.model`` keys (typed, named like the reference's).

`ScoreNetwork` declares this (a ``typing.Protocol``); `Network` is the base class that gives the
two optional parts their defaults:

- ``validate()``: raise ``ValueError`` for settings the network cannot take (called by
  ``get_model`` before anything is compiled); default: accept everything;
- ``smoke_config(model_config)`` (classmethod): shrink ``config.model`` in place so that the
  ``:smoke`` variant of every config runs in CPU seconds (``configs/common.smoke``); default:
  leave it as it is.

A user's module that does not subclass `Network` works as well (``get_model`` treats missing
parts as their defaults); its call signature is checked by `check_call_signature`.
"""
from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

import flax.linen as nn


@runtime_checkable
class ScoreNetwork(Protocol):
    """What a network of ``models.MODELS`` provides (see the module docstring)."""

    def validate(self) -> None:
        """Raise ValueError for settings the network cannot take."""

    def __call__(self, x: Any, labels: Any, *, train: bool = False) -> Any:
        """The network output, shape of ``x``."""


class Network(nn.Module):
    """Base class of the project's networks: the defaults of `ScoreNetwork`'s optional parts."""

    def validate(self) -> None:
        """Raise ValueError for settings this network cannot take (default: none)."""

    @classmethod
    def smoke_config(cls, model_config) -> None:
        """Shrink ``model_config`` (a ``config.model``) in place for the CPU-seconds ``:smoke``
        variant of a config (default: unchanged)."""


def validate_network(model) -> None:
    """``model.validate()`` when the network declares it (a plain ``nn.Module`` need not)."""
    fn = getattr(model, "validate", None)
    if callable(fn):
        fn()


def smoke_config(cls, model_config) -> None:
    """``cls.smoke_config(model_config)`` when the network class declares it."""
    fn = getattr(cls, "smoke_config", None)
    if callable(fn):
        fn(model_config)


def check_call_signature(model) -> None:
    """Check that ``model.__call__`` takes ``(x, labels, *, train)`` (the second positional
    argument may have another name, as DiT's ``t``; more keywords are fine).

    Raises:
      TypeError: naming the class, its signature and the expected one.
    """
    cls = model if isinstance(model, type) else type(model)
    sig = inspect.signature(cls.__call__)
    params = list(sig.parameters.values())[1:]  # drop self
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_pos = any(p.kind == p.VAR_POSITIONAL for p in params)
    has_train = any(p.name == "train" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                    for p in params) or any(p.kind == p.VAR_KEYWORD for p in params)
    if (len(positional) < 2 and not var_pos) or not has_train:
        raise TypeError(f"{cls.__name__}.__call__{sig} does not match the network interface "
                        "__call__(self, x, labels, *, train=False, y=None) "
                        "(score_jax.models.base.ScoreNetwork)")


__all__ = ["ScoreNetwork", "Network", "validate_network", "smoke_config", "check_call_signature"]

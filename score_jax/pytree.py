"""``pytree.dataclass``: ``flax.struct.dataclass`` with a tree structure that knows its class.

``flax.struct.dataclass`` registers with ``jax.tree_util.register_dataclass``. In jaxlib 0.10.x
two such tree structures compare *equal* when their static fields and child counts match, even
for different classes (``tree_structure(VPSDE()) == tree_structure(VESDE())`` is True) while their
hashes differ. jit's C++ cache is a hash table that confirms a probe by equality, so a rare
partial hash collision hands one class's compiled function to the other: a VE sampler ran with a
VP SDE's executable (wrong samples, no error; seen as order-dependent test failures,
``tests/test_pytree.py``). Nodes registered with ``register_pytree_with_keys`` compare their
class, so this decorator registers that way; everything else is flax's: frozen dataclass,
``struct.field(pytree_node=False)`` for static fields, ``.replace``, flax serialization.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from flax import serialization


def dataclass(clz=None, **kwargs):
    """Decorate ``clz`` as a frozen dataclass registered as a pytree (see the module docstring).

    Fields with ``metadata["pytree_node"] = False`` (``flax.struct.field(pytree_node=False)``) are
    static (part of the tree structure, hashable); the others are children, with
    ``GetAttrKey(name)`` paths as flax's.
    """
    if clz is None:
        return functools.partial(dataclass, **kwargs)
    kwargs.setdefault("frozen", True)
    data_clz = dataclasses.dataclass(**kwargs)(clz)
    fields = dataclasses.fields(data_clz)
    data_fields = tuple(f.name for f in fields if f.metadata.get("pytree_node", True))
    meta_fields = tuple(f.name for f in fields if not f.metadata.get("pytree_node", True))
    keys = tuple(jax.tree_util.GetAttrKey(name) for name in data_fields)

    def flatten_with_keys(x):
        return ([(k, getattr(x, n)) for k, n in zip(keys, data_fields, strict=True)],
                tuple(getattr(x, n) for n in meta_fields))

    def flatten(x):
        return (tuple(getattr(x, n) for n in data_fields),
                tuple(getattr(x, n) for n in meta_fields))

    def unflatten(meta, children):
        obj = object.__new__(data_clz)
        for name, value in zip(data_fields, children, strict=True):
            object.__setattr__(obj, name, value)
        for name, value in zip(meta_fields, meta, strict=True):
            object.__setattr__(obj, name, value)
        return obj

    def replace(self, **updates):
        """A copy with the given fields replaced."""
        return dataclasses.replace(self, **updates)

    data_clz.replace = replace
    jax.tree_util.register_pytree_with_keys(data_clz, flatten_with_keys, unflatten, flatten)

    def to_state_dict(x):
        return {name: serialization.to_state_dict(getattr(x, name)) for name in data_fields}

    def from_state_dict(x, state):
        state = dict(state)
        updates = {}
        for name in data_fields:
            if name not in state:
                raise ValueError(f"missing field {name} in the state dict of {clz.__name__}")
            updates[name] = serialization.from_state_dict(getattr(x, name), state.pop(name),
                                                          name=name)
        if state:
            raise ValueError(f"unknown field(s) {sorted(state)} in the state dict of "
                             f"{clz.__name__}")
        return x.replace(**updates)

    serialization.register_serialization_state(data_clz, to_state_dict, from_state_dict)
    return data_clz


__all__ = ["dataclass"]

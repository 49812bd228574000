"""score_jax.pytree.dataclass: tree structures that know their class (jit's cache relies on it)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, struct

from score_jax import pytree, toy
from score_jax.sde import VESDE, VPSDE, subVPSDE


def test_structures_of_different_classes_differ():
    """flax's register_dataclass structures compare equal across classes with the same static
    fields and child count (jaxlib 0.10); jit's hash table confirms a probe by equality, so a
    partial hash collision served one SDE's compiled sampler to another. Ours compare classes."""
    sdes = [VPSDE(), subVPSDE(), VESDE()]
    defs = [jax.tree_util.tree_structure(s) for s in sdes]
    for i in range(3):
        for j in range(3):
            assert (defs[i] == defs[j]) == (i == j), (sdes[i], sdes[j])
    # nested: the same score pytree over two SDE classes
    m = toy.ring_mixture(8, std=0.1)
    a, b = (jax.tree_util.tree_structure(m.score_fn(s)) for s in (VPSDE(), VESDE()))
    assert a != b
    # the same class with another static field differs too; equal values are equal
    assert defs[0] != jax.tree_util.tree_structure(VPSDE(N=100))
    assert defs[0] == jax.tree_util.tree_structure(VPSDE(beta_min=0.2))


def test_dataclass_behaves_like_flax_struct():
    @pytree.dataclass
    class P:
        w: jax.Array
        n: int = struct.field(pytree_node=False, default=3)

    p = P(jnp.arange(3.0), 5)
    leaves, treedef = jax.tree_util.tree_flatten(p)
    assert len(leaves) == 1
    q = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(q, P) and q.n == 5 and np.array_equal(q.w, p.w)
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(p)[0]]
    assert paths == [".w"]
    assert p.replace(n=7).n == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.n = 1
    doubled = jax.jit(lambda x: jax.tree_util.tree_map(lambda v: 2 * v, x))(p)
    assert doubled.n == 5 and np.array_equal(doubled.w, 2 * p.w)
    state = serialization.to_state_dict(p)
    assert set(state) == {"w"}
    restored = serialization.from_state_dict(P(jnp.zeros(3), 5), state)
    assert np.array_equal(restored.w, p.w)
    with pytest.raises(ValueError, match="unknown field"):
        serialization.from_state_dict(p, {"w": p.w, "extra": 1})

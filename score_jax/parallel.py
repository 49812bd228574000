"""Device mesh, shardings, and host-local batch -> global array.

One code path serves one device, N devices on one host and N hosts (JAX docs "Distributed arrays
and automatic parallelization"; flax lm1b, big_vision): a ``Mesh`` over all devices. Batches are
split over every axis of the mesh (``P(("data", "fsdp"))``: each device holds
``global_batch / num_devices`` examples). Each process holds ``global_batch / process_count``
examples and assembles the global array with ``jax.make_array_from_process_local_data``.

Parameter sharding (FSDP / ZeRO-3, big_vision ``fsdp`` sharding rule): with ``fsdp = F > 1`` the
mesh is 2-D, ``data x fsdp`` = ``(devices / F, F)``, and every leaf of the train state (parameters,
EMA, optimiser moments) of at least ``min_size`` elements is split over ``"fsdp"`` along its
largest axis divisible by F (`fsdp_spec`); smaller leaves, and leaves with no divisible axis, stay
replicated. The train step stays a plain function: ``jit`` with these in / out shardings makes XLA
all-gather each weight before its use and reduce-scatter its gradient (GSPMD), so each device
keeps ~1/F of the state. ``fsdp = 1`` (and the 1-D ``"data"`` mesh) is the replicated state.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# leaves with fewer elements stay replicated under FSDP (2^16 float32 = 256 KiB; big_vision's rule
# uses 4 MiB): the all-gather of a small leaf costs latency, not memory
MIN_SHARD_SIZE = 2 ** 16


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` for multi-host runs (call before any other JAX call).

    With no arguments JAX auto-detects the cluster (TPU pods, SLURM, Open MPI, ...); on CPU pass the
    coordinator ``host:port``, the number of processes and this process's id. On the CPU backend the
    gloo collectives are enabled so that cross-process all-reduces work.
    """
    import os

    platforms = os.environ.get("JAX_PLATFORMS", "") or ""
    if platforms.startswith("cpu") or (coordinator_address or "").startswith(("127.", "localhost")):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if coordinator_address is not None:
        kwargs.update(coordinator_address=coordinator_address, num_processes=num_processes,
                      process_id=process_id)
    jax.distributed.initialize(**kwargs)


DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "score_jax", "xla")


def compilation_cache_dir(value: str | None) -> str | None:
    """The persistent XLA compilation cache folder of the CLIs' ``--compilation_cache`` flag:
    None -> ``$SCORE_JAX_CACHE`` or ``~/.cache/score_jax/xla``; "" / "none" -> None (off); any
    other value is the folder (user-expanded). Does not touch jax.config: the entry points do."""
    if value is None:
        value = os.environ.get("SCORE_JAX_CACHE", DEFAULT_COMPILATION_CACHE)
    if value.strip().lower() in ("", "none", "off"):
        return None
    return os.path.abspath(os.path.expanduser(value))


def check_fsdp(fsdp: Any, num_devices: int, what: str = "parallel.fsdp") -> int:
    """Validate the parameter-shard group size ``fsdp`` for ``num_devices`` devices; returns it.

    Raises:
      ValueError: naming the value and the valid choices (the divisors of ``num_devices``):
        "must be a positive integer" for 0, a negative number, a bool or a non-integer;
        "does not divide the number of devices" for a positive integer that does not.
    """
    valid = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
    if isinstance(fsdp, bool) or not isinstance(fsdp, (int, np.integer)) or fsdp < 1:
        raise ValueError(f"config.{what}={fsdp!r} must be a positive integer dividing the number "
                         f"of devices {num_devices}; valid choices: {valid}")
    if num_devices % int(fsdp):
        raise ValueError(f"config.{what}={fsdp!r} does not divide the number of devices "
                         f"{num_devices}; valid choices: {valid}")
    return int(fsdp)


def make_mesh(num_devices: int | None = None, fsdp: int | None = None) -> Mesh:
    """The device mesh over ``num_devices`` devices (default: all of them).

    ``fsdp=None``: a 1-D mesh with axis ``"data"``. ``fsdp=F`` (an int): a 2-D mesh
    ``("data", "fsdp")`` of shape ``(num_devices / F, F)`` (F = 1: the same replicated state as the
    1-D mesh). Devices follow ``jax.make_mesh``'s order, so the ``fsdp`` groups are neighbours
    (on one host where possible). The axis types are ``Auto`` so that ``jit`` propagates shardings
    from the in/out shardings we give it (``jax.make_mesh`` defaults to ``Explicit`` axes in
    JAX >= 0.8).

    Raises:
      ValueError: ``num_devices`` outside 1..device_count, or ``fsdp`` not dividing it
        (`check_fsdp`, before anything compiles).
    """
    devices = jax.devices()
    n = len(devices) if num_devices is None else int(num_devices)
    if n < 1 or n > len(devices):
        raise ValueError(f"num_devices={num_devices} is invalid; valid: 1..{len(devices)} "
                         f"(devices: {[d.platform for d in devices[:1]]} x {len(devices)})")
    if fsdp is None:
        shape, names = (n,), (DATA_AXIS,)
    else:
        f = check_fsdp(fsdp, n)
        shape, names = (n // f, f), (DATA_AXIS, FSDP_AXIS)
    auto = (jax.sharding.AxisType.Auto,) * len(shape)
    if n == len(devices):
        return jax.make_mesh(shape, names, axis_types=auto)
    if jax.process_count() > 1:
        raise ValueError("a mesh over a subset of devices is only supported with one process")
    return Mesh(np.asarray(devices[:n]).reshape(shape), names, axis_types=auto)


def fsdp_size(mesh: Mesh) -> int:
    """The size of the mesh's ``"fsdp"`` axis (1 when it has none)."""
    return int(dict(mesh.shape).get(FSDP_AXIS, 1))


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int = MIN_SHARD_SIZE) -> P:
    """The FSDP ``PartitionSpec`` of a leaf of ``shape`` (big_vision ``sharding.py``, rule
    ``fsdp``): ``"fsdp"`` on its largest axis divisible by ``fsdp`` (the first such axis among
    equal sizes), None elsewhere; ``P()`` (replicated) when ``fsdp == 1``, the leaf has fewer than
    ``min_size`` elements, or no axis is divisible."""
    if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda i: (-shape[i], i)):
        if shape[axis] % fsdp == 0:
            return P(*[FSDP_AXIS if i == axis else None for i in range(len(shape))])
    return P()


def state_shardings(tree: Any, mesh: Mesh, min_size: int = MIN_SHARD_SIZE) -> Any:
    """A ``NamedSharding`` per leaf of ``tree`` (arrays or ``ShapeDtypeStruct`` s): `fsdp_spec`
    over ``mesh``'s ``"fsdp"`` axis, so replicated everywhere on a mesh without one."""
    f = fsdp_size(mesh)
    return jax.tree_util.tree_map(
        lambda a: NamedSharding(mesh, fsdp_spec(tuple(a.shape), f, min_size)), tree)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` s of ``abstract`` carrying ``shardings`` (what orbax restores into:
    a checkpoint written under any mesh restores under this one)."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def batch_axes(mesh: Mesh) -> str | tuple[str, ...]:
    """The mesh axes a batch is split over: all of them (``"data"``, or ``("data", "fsdp")``)."""
    names = tuple(mesh.axis_names)
    return names[0] if len(names) == 1 else names


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh: ``P("data")`` on the 1-D mesh,
    ``P(("data", "fsdp"))`` on the FSDP mesh."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    """Replicated on every device of the mesh: ``P()``."""
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "training.batch_size") -> int:
    """Validate a global batch size for ``mesh``; returns the per-process batch size.

    Raises:
      ValueError: naming the value when it is not positive, or not divisible by the number of
        devices (every device gets the same share) and processes.
    """
    n_dev = mesh.devices.size
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"{what}={batch_size!r} must be a positive integer")
    if batch_size % n_dev:
        valid = [m * n_dev for m in range(1, 5)]
        raise ValueError(f"{what}={batch_size} is not divisible by the number of devices {n_dev}; "
                         f"valid choices are multiples of {n_dev}, e.g. {valid}")
    return batch_size // jax.process_count()


def to_global(local_batch: Any, mesh: Mesh) -> Any:
    """Assemble a pytree of host-local numpy batches (leading axis = this process's share) into
    global ``jax.Array`` s sharded over the batch axes of ``mesh`` (`data_sharding`)."""
    sharding = data_sharding(mesh)

    def one(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree_util.tree_map(one, local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree (identical on every process) replicated over ``mesh``."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def to_host(x: Any) -> Any:
    """Fetch a (possibly multi-process) global array to numpy on every process."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree_util.tree_map(one, x)


def prefetch_to_device(batches: Any, mesh: Mesh, size: int = 2):
    """Yield ``(host_batch, global_batch)`` for each host batch of the iterator ``batches``:
    `to_global` runs on a background thread ``size`` batches ahead, so reading and the host ->
    device copy overlap the train step (flax ``jax_utils.prefetch_to_device``, for a mesh).
    ``size=0``: no thread, each batch is laid out when asked for. The order is kept; an error of
    the reader is raised at the batch where it happened. Closing the generator stops the thread
    (and closes ``batches`` when it is a generator).

    Raises ValueError for a negative ``size``."""
    import queue
    import threading

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
        raise ValueError(f"config.data.prefetch={size!r} must be an integer >= 0 (0: no prefetch)")
    it = iter(batches)
    if size == 0:
        try:
            for host in it:
                yield host, to_global(host, mesh)
        finally:
            getattr(it, "close", lambda: None)()
        return
    q: queue.Queue = queue.Queue(maxsize=int(size))
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for host in it:
                if not put((host, to_global(host, mesh))):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(e)

    thread = threading.Thread(target=produce, name="prefetch_to_device", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
        getattr(it, "close", lambda: None)()

"""CPU speed of our networks against the official PyTorch ones, side by side in one process.

    python bench/bench_vs_torch.py --reference_path /tmp/ssp [--model ddpmpp|ncsnpp|both]
                                   [--repeats 5] [--batch_size 8]
    python bench/bench_vs_torch.py --flag_sweep [--repeats 3]      # no torch needed
    python bench/bench_vs_torch.py --smoke [--reference_path ...]  # runs in seconds (tests)

Default mode: builds the reference network (score_sde_pytorch, ``models/ncsnpp.py`` from the
reference config ``configs/vp/cifar10_ddpmpp_continuous.py`` or
``configs/ve/cifar10_ncsnpp_continuous.py``), overwrites every parameter with deterministic noise
(the reference zero-initialises its output layers, which would make an agreement check vacuous),
converts the weights with `score_jax.convert.convert_pytorch` into our network built from this
project's config of the same name, checks that both forwards agree, and then times, interleaved
(ours, theirs, ours, theirs, ...) so that the machine's load hits both alike:

* forward: ``model(x, labels)`` in eval mode, batch ``--batch_size`` of 32x32x3;
* train step: loss (reference ``losses.get_sde_loss_fn`` / our ``config.build(...).train_loss``)
  + gradient + clip + Adam update + EMA (reference ``losses.get_step_fn`` with
  ``optimization_manager`` and ``ExponentialMovingAverage``; ours ``config.build(...).train_step``).

Our side runs under the project's XLA CPU flags (`score_jax.xla_flags.apply_default_cpu_flags`,
what train.py / sample.py / evaluate.py run) unless ``--xla_flags xla_default``: under XLA's
defaults YNNPACK does the convolutions, whose weight gradient is 4x PyTorch's time at 32 x 32 x 128
(``bench/bench_backward_layers.py``), and the DDPM++ backward 2.4x. The flags in effect are in the
JSON line (``xla_flags``).

torch runs with ``torch.set_num_threads(2)``, XLA on its CPU thread pool (one thread per core; this
machine has 2). The reference's CUDA ops (``op/upfirdn2d``, ``op/fused_act``) compile a CUDA
extension at import time; the script replaces ``torch.utils.cpp_extension.load`` with a stub while
``op`` is imported, so that the reference's own pure-PyTorch CPU path (``upfirdn2d_native``) runs.
Nothing of the reference tree is copied; it is imported from ``--reference_path`` (an unmodified
checkout of github.com/yang-song/score_sde_pytorch).

``--flag_sweep``: our DDPM++ forward only, one worker process per candidate XLA CPU flag set
(XLA reads ``XLA_FLAGS`` once per process), same random weights and input in each; the workers
take turns (set 0, 1, ..., rotating the order each round) so that load hits all alike. Prints
median / min seconds, the ratio to the default flags, and the largest deviation from the default
flags' output relative to max |y|.

Prints one JSON line per measurement and a summary table (median and min seconds, ratio
ours / theirs).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {"ddpmpp": "vp/cifar10_ddpmpp_continuous", "ncsnpp": "ve/cifar10_ncsnpp_continuous"}

# --smoke: the same networks shrunk (applied to our config and the reference's alike), batch 2,
# one repeat: checks that the script runs end to end in seconds, times nothing worth reading.
SMOKE_MODEL = {"nf": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (16,)}

# Candidate XLA CPU flag sets for --flag_sweep. jaxlib 0.10.2 sends convolutions, dots and
# reductions to YNNPACK by default ("__ynn_fusion" in the compiled HLO); of the flags listed by
# `strings libjax_common.so | grep xla_cpu_`, only xla_cpu_experimental_ynn_fusion_type changes
# the compiled DDPM++ forward. --xla_cpu_use_xnnpack, --xla_cpu_use_onednn,
# --xla_cpu_experimental_{xnn,onednn}_fusion_type=dot and --xla_cpu_experimental_onednn_custom_call
# compile to byte-identical HLO, so they are not timed. fast-math flags change numbers: left out.
# "ynn_dot_only" is timed for the record but is unsafe: in jaxlib 0.10.2 it returns NaN for a dot
# with a constant operand (see score_jax/xla_flags.py and tests/test_xla_flags.py).
SWEEP = {
    "default": "",
    "ynn_no_reduce": "--xla_cpu_experimental_ynn_fusion_type=-reduce",
    "ynn_no_conv": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "ynn_dot_only": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "single_thread_eigen": "--xla_cpu_multi_thread_eigen=false",
}


def _shrink(config, smoke: bool):
    """Apply `SMOKE_MODEL` to ``config.model`` (ours or the reference's) when ``smoke``."""
    if smoke:
        for k, v in SMOKE_MODEL.items():
            setattr(config.model, k, v)
    return config


def _load_our_config(name: str, smoke: bool = False):
    config = importlib.import_module("configs." + CONFIGS[name].replace("/", ".")).get_config()
    return _shrink(config, smoke)


@contextlib.contextmanager
def _reference_on_path(reference_path: str):
    """Import the reference tree (its top-level ``configs``, ``models``, ``op``, ``losses`` ...)
    without clobbering this project's ``configs`` package: our modules are set aside while the
    reference's are imported, and restored afterwards."""
    ours = {k: sys.modules.pop(k) for k in list(sys.modules)
            if k == "configs" or k.startswith("configs.")}
    sys.path.insert(0, reference_path)
    try:
        yield
    finally:
        sys.path.remove(reference_path)
        for k in [k for k in sys.modules if k == "configs" or k.startswith("configs.")]:
            sys.modules["_reference_" + k] = sys.modules.pop(k)
        sys.modules.update(ours)


def build_reference(name: str, reference_path: str, seed: int, smoke: bool = False):
    """(config, torch module, sde, step_fn, make_state) of the reference network."""
    import torch
    import torch.utils.cpp_extension as cpp_ext

    with _reference_on_path(reference_path):
        real_load = cpp_ext.load
        cpp_ext.load = lambda *a, **k: None  # CUDA extension stub: CPU path is upfirdn2d_native
        try:
            importlib.import_module("op")
        finally:
            cpp_ext.load = real_load
        config = importlib.import_module(
            "configs." + CONFIGS[name].replace("/", ".")).get_config()
        _shrink(config, smoke)
        config.device = torch.device("cpu")
        mutils = importlib.import_module("models.utils")
        importlib.import_module("models.ncsnpp")
        losses = importlib.import_module("losses")
        sde_lib = importlib.import_module("sde_lib")
        ema_mod = importlib.import_module("models.ema")

    torch.manual_seed(seed)
    model = mutils.get_model(config.model.name)(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel() if not pname.endswith(".W") else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            elif pname.endswith(".W"):  # Gaussian Fourier features: frozen, keep the init
                pass
            elif pname.endswith("weight"):  # the only 1-D weights are GroupNorm scales
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    if config.training.sde.lower() == "vpsde":
        sde = sde_lib.VPSDE(beta_min=config.model.beta_min, beta_max=config.model.beta_max,
                            N=config.model.num_scales)
    else:
        sde = sde_lib.VESDE(sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max,
                            N=config.model.num_scales)
    step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                                 reduce_mean=config.training.reduce_mean,
                                 continuous=config.training.continuous,
                                 likelihood_weighting=config.training.likelihood_weighting)

    def make_state():
        return dict(optimizer=losses.get_optimizer(config, model.parameters()), model=model,
                    ema=ema_mod.ExponentialMovingAverage(model.parameters(),
                                                         decay=config.model.ema_rate), step=0)

    return config, model, sde, step_fn, make_state


def labels_for(name: str, t):
    """What the reference's ``get_score_fn`` feeds the network: VP continuous ``999 t``; VE
    continuous ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` (0.01, 50 in both configs)."""
    import numpy as np

    return (999.0 * t if name == "ddpmpp" else 0.01 * (50.0 / 0.01) ** t).astype(np.float32)


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_pair(name: str, reference_path: str, repeats: int, batch: int, seed: int,
               skip_train: bool, compiler_options: dict | None = None,
               smoke: bool = False) -> dict:
    import jax
    import numpy as np
    import torch

    from score_jax import config as config_lib
    from score_jax import parallel
    from score_jax.convert import convert_pytorch

    ref_config, tmodel, _, tstep, make_tstate = build_reference(name, reference_path, seed, smoke)
    config = _load_our_config(name, smoke)
    config.training.batch_size = batch
    sd = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    variables = convert_pytorch(sd, config.model, image_size=config.data.image_size,
                                num_channels=config.data.num_channels,
                                centered=config.data.centered)
    mesh = parallel.make_mesh(1)
    b = config_lib.build(config, mesh=mesh)
    model = b.model

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
    t = rng.uniform(1e-3, 1.0, batch)
    labels = labels_for(name, t)
    x_t, l_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels)
    params = jax.device_put(variables)
    x_j, l_j = jax.device_put(x), jax.device_put(labels)
    fwd = jax.jit(lambda v, x, l: model.apply(v, x, l, train=False))
    t0 = time.perf_counter()
    fwd_c = fwd.lower(params, x_j, l_j).compile()
    fwd_v = (fwd.lower(params, x_j, l_j).compile(compiler_options=compiler_options)
             if compiler_options else None)
    compile_fwd = time.perf_counter() - t0

    def ours_fwd():
        return jax.block_until_ready(fwd_c(params, x_j, l_j))

    def ours_fwd_v():
        return jax.block_until_ready(fwd_v(params, x_j, l_j))

    tmodel.eval()

    def theirs_fwd():
        with torch.no_grad():
            return tmodel(x_t, l_t)

    y_ours = np.asarray(ours_fwd())
    y_ref = theirs_fwd().numpy().transpose(0, 2, 3, 1)
    relerr = float(np.abs(y_ours - y_ref).max() / np.abs(y_ref).max())
    print(json.dumps({"model": name, "check": "forward ours vs reference",
                      "max_abs_diff_over_max_abs_y": relerr, "max_abs_y": float(np.abs(y_ref).max()),
                      }), flush=True)
    if not relerr < 1e-4:
        raise SystemExit(f"{name}: outputs disagree (relative error {relerr:.3g})")
    if fwd_v is not None:
        y_v = np.asarray(ours_fwd_v())
        print(json.dumps({"model": name, "check": "forward ours with compiler_options",
                          "compiler_options": compiler_options,
                          "vs_reference": float(np.abs(y_v - y_ref).max() / np.abs(y_ref).max()),
                          "vs_ours_default": float(np.abs(y_v - y_ours).max()
                                                   / np.abs(y_ref).max())}), flush=True)

    times = {"fwd_ours": [], "fwd_theirs": [], "train_ours": [], "train_theirs": []}
    if fwd_v is not None:
        times["fwd_ours_options"] = []
    for _ in range(repeats):
        times["fwd_ours"].append(_timed(ours_fwd))
        if fwd_v is not None:
            times["fwd_ours_options"].append(_timed(ours_fwd_v))
        times["fwd_theirs"].append(_timed(theirs_fwd))

    if not skip_train:
        jstep = b.train_step  # loss + grad + clip + Adam + EMA, as train.py runs it
        # Images in [0, 1]: our loss scales them to the model range like the reference's scaler.
        img = rng.random((batch, 32, 32, 3), dtype=np.float32)
        batch_j = parallel.to_global({"image": img, "label": np.zeros(batch, np.int32)}, mesh)
        scaler = (lambda a: 2.0 * a - 1.0) if ref_config.data.centered else (lambda a: a)
        batch_t = torch.from_numpy(scaler(img).transpose(0, 3, 1, 2).copy())
        key = jax.random.key(seed + 1)

        def make_ours_step(options):
            """A compiled train step (with its own state: the step donates it) and its timer."""
            state = b.init(jax.random.key(seed))
            p = jax.device_put(variables["params"])
            state = state.replace(params=p, opt_state=b.tx.init(p),
                                  ema_params=jax.tree_util.tree_map(lambda a: a.copy(), p))
            t0 = time.perf_counter()
            compiled = jstep.lower(state, batch_j, key).compile(compiler_options=options)
            print(json.dumps({"model": name, "compiler_options": options,
                              "compile_ours_train_s": round(time.perf_counter() - t0, 1)}),
                  flush=True)
            holder = {"state": state}

            def run():
                holder["state"], m = compiled(holder["state"], batch_j, key)
                return jax.block_until_ready(m["loss"])

            run()
            return run

        variants = [("train_ours", make_ours_step({}))]
        if compiler_options:
            variants.append(("train_ours_options", make_ours_step(compiler_options)))
        tmodel.train()
        tstate = make_tstate()

        def theirs_step():
            return tstep(tstate, batch_t).item()

        theirs_step()  # warm-up (allocator, Adam state)
        for k, _ in variants:
            times.setdefault(k, [])
        for _ in range(repeats):
            for k, run in variants:
                times[k].append(_timed(run))
            times["train_theirs"].append(_timed(theirs_step))

    out = {"model": name, "batch": batch, "repeats": repeats, "relerr_fwd": relerr,
           "load_avg": os.getloadavg(), "torch_threads": torch.get_num_threads(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "compiler_options": compiler_options,
           "compile_ours_fwd_s": round(compile_fwd, 1), "jax": jax.__version__,
           "torch": torch.__version__}
    for k, v in times.items():
        if v:
            out[k] = {"median": float(np.median(v)), "min": float(np.min(v)),
                      "all": [round(s, 3) for s in v]}
    print(json.dumps(out), flush=True)
    return out


def summary(results: list[dict]) -> str:
    rows = ["| network | what | ours median (min) s | PyTorch median (min) s | ratio ours/PyTorch "
            "median (min) |", "|---|---|---|---|---|"]
    for r in results:
        for what in ("fwd", "train"):
            if f"{what}_ours" not in r:
                continue
            o, th = r[f"{what}_ours"], r[f"{what}_theirs"]
            rows.append(f"| {r['model']} | {'forward' if what == 'fwd' else 'train step'} | "
                        f"{o['median']:.2f} ({o['min']:.2f}) | {th['median']:.2f} "
                        f"({th['min']:.2f}) | {o['median'] / th['median']:.2f} "
                        f"({o['min'] / th['min']:.2f}) |")
            if f"{what}_ours_options" in r:
                o = r[f"{what}_ours_options"]
                rows.append(f"| {r['model']} | {'forward' if what == 'fwd' else 'train step'}, "
                            f"ours with --compiler_options | {o['median']:.2f} ({o['min']:.2f}) | "
                            f"{th['median']:.2f} ({th['min']:.2f}) | "
                            f"{o['median'] / th['median']:.2f} ({o['min'] / th['min']:.2f}) |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Flag sweep (ours only)
# ---------------------------------------------------------------------------------------------
def sweep_worker(repeats: int, batch: int, workdir: str, index: int, train: bool = False,
                 smoke: bool = False) -> None:
    """Compile our DDPM++ forward under this process's XLA_FLAGS, save its output, then run it
    whenever the coordinator drops ``go_<index>_<round>`` into ``workdir`` (turn taking, so
    that all flag sets see the same load)."""
    import jax
    import numpy as np

    from score_jax import config as config_lib

    model = config_lib.model_from_config(_load_our_config("ddpmpp", smoke))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
    labels = labels_for("ddpmpp", rng.uniform(1e-3, 1.0, batch))
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, labels, train=False))

    def noise(path, a):
        if len(a.shape) >= 2:
            return rng.standard_normal(a.shape).astype(np.float32) / np.sqrt(np.prod(a.shape[:-1]))
        if "scale" in str(path[-1]):
            return (1.0 + 0.1 * rng.standard_normal(a.shape)).astype(np.float32)
        return (0.1 * rng.standard_normal(a.shape)).astype(np.float32)

    variables = jax.device_put(jax.tree_util.tree_map_with_path(noise, abstract))
    x, labels = jax.device_put(x), jax.device_put(labels)
    fwd = jax.jit(lambda v, x, l: model.apply(v, x, l, train=False))
    if train:  # the full train step instead (loss + grad + clip + Adam + EMA); output: new params
        from score_jax import parallel

        config = _load_our_config("ddpmpp", smoke)
        config.training.batch_size = batch
        mesh = parallel.make_mesh(1)
        b = config_lib.build(config, mesh=mesh, model=model)
        jstep = b.train_step
        p = variables["params"]
        state = b.init(jax.random.key(0)).replace(params=p, opt_state=b.tx.init(p))
        img = parallel.to_global({"image": (rng.random((batch, 32, 32, 3)) * 1).astype(
            np.float32), "label": np.zeros(batch, np.int32)}, mesh)
        key = jax.random.key(1)
        holder = {"state": state}

        def fwd(v, x, l):  # noqa: F811 -- same call shape as the forward
            holder["state"], m = jstep(holder["state"], img, key)
            return m["loss"]

        t0 = time.perf_counter()
        y = np.asarray(fwd(variables, x, labels))[None]  # the loss of the first step
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(fwd(variables, x, labels))  # 2nd call compiles once more
    else:
        t0 = time.perf_counter()
        y = np.asarray(fwd(variables, x, labels))
        compile_s = time.perf_counter() - t0
    np.save(os.path.join(workdir, f"y_{index}.npy"), y)
    _write(os.path.join(workdir, f"ready_{index}"), json.dumps({"compile_s": compile_s}))
    for r in range(repeats):
        go = os.path.join(workdir, f"go_{index}_{r}")
        while not os.path.exists(go):
            time.sleep(0.02)
        dt = _timed(lambda: jax.block_until_ready(fwd(variables, x, labels)))
        _write(os.path.join(workdir, f"done_{index}_{r}"), str(dt))


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _wait(path: str, procs) -> str:
    while not os.path.exists(path):
        if any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit("a sweep worker failed: " + " | ".join(
                p.stderr.read()[-500:] for p in procs if p.poll() not in (None, 0)))
        time.sleep(0.02)
    with open(path) as f:
        return f.read()


def flag_sweep(repeats: int, batch: int, names: list[str], train: bool = False,
               smoke: bool = False) -> list[dict]:
    """All flag sets compiled in parallel worker processes, then timed in turns: round r runs
    set 0, 1, ..., n-1 one after the other (the order rotates each round)."""
    import tempfile

    import numpy as np

    base_flags = os.environ.get("XLA_FLAGS", "")
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i, label in enumerate(names):
            env = dict(os.environ, XLA_FLAGS=(base_flags + " " + SWEEP[label]).strip())
            procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--_sweep_worker", tmp, str(i),
                 "--repeats", str(repeats), "--batch_size", str(batch)]
                + (["--sweep_train"] if train else []) + (["--smoke"] if smoke else []),
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            # compile one at a time: parallel compiles would only fight over the two cores
            _wait(os.path.join(tmp, f"ready_{i}"), procs)
        compile_s = [json.loads(_wait(os.path.join(tmp, f"ready_{i}"), procs))["compile_s"]
                     for i in range(len(names))]
        times = [[] for _ in names]
        for r in range(repeats):
            order = list(range(len(names)))
            order = order[r % len(order):] + order[:r % len(order)]
            for i in order:
                _write(os.path.join(tmp, f"go_{i}_{r}"), "")
                times[i].append(float(_wait(os.path.join(tmp, f"done_{i}_{r}"), procs)))
        for p in procs:
            p.wait()
        ys = [np.load(os.path.join(tmp, f"y_{i}.npy")) for i in range(len(names))]
    rows = []
    for i, label in enumerate(names):
        row = {"flags": label, "xla_flags": SWEEP[label],
               "median_s": round(float(np.median(times[i])), 3),
               "min_s": round(float(np.min(times[i])), 3),
               "median_vs_default": round(float(np.median(times[i]) / np.median(times[0])), 3),
               "compile_s": round(compile_s[i], 1),
               "max_dev_rel": float(np.abs(ys[i] - ys[0]).max() / np.abs(ys[0]).max()),
               "all": [round(t, 3) for t in times[i]], "load_avg": os.getloadavg()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference_path", help="unmodified score_sde_pytorch checkout")
    ap.add_argument("--model", choices=["ddpmpp", "ncsnpp", "both"], default="both")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip_train", action="store_true", help="forward only")
    ap.add_argument("--compiler_options", type=json.loads, default=None,
                    help='JSON dict of XLA options for our compiles, e.g. \'{"xla_cpu_experimental_'
                         'ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}\': ours is then timed '
                         'with and without them, interleaved')
    ap.add_argument("--flag_sweep", nargs="*", default=None, metavar="NAME",
                    help=f"time our DDPM++ forward under XLA flag sets (default all): {list(SWEEP)}")
    ap.add_argument("--sweep_train", action="store_true",
                    help="--flag_sweep times the DDPM++ train step instead of the forward "
                         "(deviation: of the first step's loss)")
    ap.add_argument("--smoke", action="store_true",
                    help="shrunk networks (both sides), batch 2, 1 repeat: checks the script runs")
    ap.add_argument("--xla_flags", choices=["project", "xla_default"], default="project",
                    help="side-by-side mode: project (default) = score_jax.xla_flags's flags, "
                         "what the CLIs run (XLA's Eigen convolutions); xla_default = XLA's own "
                         "defaults (YNNPACK convolutions; how this script ran before 2026-12-05 "
                         "19:30 UTC). --flag_sweep manages its flags itself")
    ap.add_argument("--_sweep_worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.repeats, args.batch_size = 1, 2

    if args._sweep_worker:
        sweep_worker(args.repeats, args.batch_size, args._sweep_worker[0],
                     int(args._sweep_worker[1]), args.sweep_train, args.smoke)
        return
    if args.flag_sweep is not None:
        names = args.flag_sweep or list(SWEEP)
        bad = [n for n in names if n not in SWEEP]
        if bad:
            raise ValueError(f"--flag_sweep {bad} unknown; valid choices: {list(SWEEP)}")
        if names[0] != "default":
            names = ["default"] + names
        flag_sweep(args.repeats, args.batch_size, names, args.sweep_train, args.smoke)
        return
    if not args.reference_path:
        ap.error("--reference_path is required (or use --flag_sweep)")
    if args.xla_flags == "project":
        from score_jax.xla_flags import apply_default_cpu_flags

        apply_default_cpu_flags()  # before the first jax computation (XLA reads them once)
    # OpenMP's default active (spinning) wait makes torch's 2-thread barriers collapse when the
    # cores are shared with other jobs (20 s instead of 3.6 s per DDPM++ forward at load 15);
    # passive waiting has to be chosen before torch (libgomp) starts.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        raise SystemExit("torch is not installed: only --flag_sweep can run") from None
    torch.set_num_threads(2)
    names = ["ddpmpp", "ncsnpp"] if args.model == "both" else [args.model]
    results = [bench_pair(n, os.path.abspath(args.reference_path), args.repeats, args.batch_size,
                          args.seed, args.skip_train, args.compiler_options, args.smoke)
               for n in names]
    print(summary(results))


if __name__ == "__main__":
    main()

"""The package is layered: its import graph has no cycle, and every module imports on its own in a
fresh interpreter (whatever the order of the lines in ``score_jax/__init__.py``)."""
import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "score_jax")


CONFIGS = os.path.join(os.path.dirname(ROOT), "configs")


def _modules(root: str = ROOT) -> dict[str, str]:
    """module name -> file, for every .py file of the package at ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, os.path.dirname(root))[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = path
    return out


def _targets(node, name: str, is_pkg: bool, modules) -> list[str]:
    """The package modules an import statement in module ``name`` loads (all of them, including
    the parent packages Python initialises first, but not the root package, whose __init__ only
    re-exports, nor ``name``'s own ancestors)."""
    found = []
    if isinstance(node, ast.Import):
        found = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = name.split(".")
            pkg = parts if is_pkg else parts[:-1]
            pkg = pkg[:len(pkg) - node.level + 1]
            base = ".".join(pkg + ([base] if base else []))
        found = [base] + [f"{base}.{a.name}" for a in node.names]
    out = set()
    for mod in found:
        parts = mod.split(".")
        for i in range(2, len(parts) + 1):  # the module and its parent packages below the root
            m = ".".join(parts[:i])
            # A module's own ancestor packages are initialised before it: no dependency.
            if m in modules and m != name and not name.startswith(m + "."):
                out.add(m)
    return sorted(out)


def import_graph(root: str = ROOT) -> dict[str, list[str]]:
    """module -> modules of the package it imports, from the source (every import statement,
    also those inside functions: a deferred import hides a cycle, it does not remove it)."""
    modules = _modules(root)
    graph = {}
    for name, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        is_pkg = path.endswith("__init__.py")
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(_targets(node, name, is_pkg, modules))
        graph[name] = sorted(deps)
    return graph


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert "score_jax.sampling" in graph["score_jax.guidance.inpainting"]
    assert find_cycle(graph) is None, find_cycle(graph)


def test_configs_import_graph_has_no_cycle():
    """Issue 21: configs/default_digits.py and configs/edm/digits_edm.py imported each other (a
    deferred import hid the cycle)."""
    graph = import_graph(CONFIGS)
    assert "configs.default_digits" in graph["configs.edm.digits_edm"]
    assert find_cycle(graph) is None, find_cycle(graph)
    assert "configs.edm.digits_edm" not in graph["configs.default_digits"]


def test_layers_point_one_way():
    """ode below sampling; likelihood and flow use ode and never the sampler package; sampling
    never imports guidance; __init__ of the root only re-exports; the checkpoint converters sit
    below the evaluation package (Inception's weights included), and pure metrics below the
    evaluators (metrics / likelihood / digits never reach an evaluator, sample_lib or config)."""
    graph = import_graph()

    def reach(n, seen=None):
        seen = set() if seen is None else seen
        for m in graph.get(n, ()):
            if m not in seen:
                seen.add(m)
                reach(m, seen)
        return seen

    sampler_pkg = {m for m in graph if m.startswith("score_jax.sampling")}
    for low in ("score_jax.ode", "score_jax.runner", "score_jax.likelihood", "score_jax.flow"):
        assert not (reach(low) & sampler_pkg), (low, reach(low) & sampler_pkg)
    for m in sampler_pkg:
        assert not any(d.startswith("score_jax.guidance") for d in reach(m)), m
    assert "score_jax.ode" in graph["score_jax.likelihood"]
    assert "score_jax.ode" in graph["score_jax.flow.sampling"]
    flow_pkg = {m for m in graph if m.startswith("score_jax.flow")}
    for m in flow_pkg:
        assert not (reach(m) & sampler_pkg), m
    convert_pkg = {m for m in graph if m.startswith("score_jax.convert")}
    for m in convert_pkg:
        assert not any(d.startswith("score_jax.evaluation") for d in reach(m)), m
    above_metrics = {"score_jax.evaluation.evaluators", "score_jax.evaluation.build",
                     "score_jax.evaluation.workdir", "score_jax.sample_lib", "score_jax.config"}
    for low in ("score_jax.evaluation.metrics", "score_jax.likelihood",
                "score_jax.evaluation.digits", "score_jax.files", "score_jax.convert.reader"):
        assert not (reach(low) & above_metrics), (low, reach(low) & above_metrics)
    # one home per reader: every converter reads through convert.reader
    for m in ("score_jax.convert.score_sde", "score_jax.convert.dit",
              "score_jax.convert.autoencoder", "score_jax.convert.inception"):
        assert "score_jax.convert.reader" in graph[m], m


def _fresh_import(mods):
    code = "; ".join(f"import {m}" for m in mods)
    cwd = os.path.dirname(ROOT)
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=600)
    assert r.returncode == 0, (mods, r.stderr[-2000:])


LAYERED = ["score_jax.guidance.colorization", "score_jax.guidance", "score_jax.sampling.fast",
           "score_jax.flow", "score_jax.flow.sampling", "score_jax.likelihood", "score_jax.ode",
           "score_jax.convert", "score_jax.convert.inception", "score_jax.evaluation.inception",
           "score_jax.evaluation.build", "score_jax.labels", "score_jax.sample_io",
           "score_jax.files"]


# One interpreter for all of LAYERED (one ~1.5 s jax start instead of one per module): before each
# module, every score_jax / configs module is dropped from sys.modules, so the package is imported
# from scratch with that module as the entry point, exactly as in a fresh interpreter (third-party
# modules such as jax stay loaded: they do not take part in the package's import order). The slow
# test below still starts one real fresh interpreter per module of the package.
_PURGED_IMPORTS = """
import importlib, json, sys, traceback
out = {}
for mod in sys.argv[1:]:
    for m in [m for m in sys.modules if m.split('.')[0] in ('score_jax', 'configs')]:
        del sys.modules[m]
    try:
        importlib.import_module(mod)
        out[mod] = None
    except BaseException:
        out[mod] = traceback.format_exc()[-2000:]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def purged_imports():
    """module -> None (imported) or the traceback, from one interpreter (see _PURGED_IMPORTS)."""
    r = subprocess.run([sys.executable, "-c", _PURGED_IMPORTS, *LAYERED], cwd=os.path.dirname(ROOT),
                       capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mod", LAYERED)
def test_fresh_interpreter_imports_layered_modules(mod, purged_imports):
    assert purged_imports[mod] is None, (mod, purged_imports[mod])


def test_purged_imports_see_an_import_cycle(tmp_path):
    """The purge really re-imports: in a package whose import order matters (a imports b first,
    b needs a's name at import time), a fails as an entry point even right after b's import
    loaded a successfully in the same interpreter (without the purge, a would come from the
    cache and pass)."""
    pkg = tmp_path / "score_jax_cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from score_jax_cyc import b\nNAME = 1\n")
    (pkg / "b.py").write_text("from score_jax_cyc.a import NAME\n")
    code = _PURGED_IMPORTS.replace("('score_jax', 'configs')", "('score_jax_cyc',)")
    r = subprocess.run([sys.executable, "-c", code, "score_jax_cyc.b", "score_jax_cyc.a"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["score_jax_cyc.b"] is None
    assert "ImportError" in out["score_jax_cyc.a"], out


@pytest.mark.slow
@pytest.mark.parametrize("mod", sorted(_modules()))
def test_fresh_interpreter_imports_every_module(mod):
    _fresh_import([mod])

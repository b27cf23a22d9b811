"""The layout's rules (docs/conventions.md "Layout"), checked on the source: imports run one way, scripts are
entry points only, files stay small, private names stay in their module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "data", "models", "losses", "metrics", "training", "inference", "webapp")
SCRIPTS = {p.stem for p in ROOT.glob("*.py")}  # train_lora_otf, inference_hf, prepare_data, dataset, evaluate, app
MAX_LINES = 600


def _sources() -> dict[str, Path]:
    """Dotted module name -> file, for every project source outside tests/ (and the virtualenv)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".venv", "outputs") or rel.parts[0].startswith("."):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


SOURCES = _sources()


def _imports(path: Path, module: str) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import in the file, function-level ones included."""
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [a.name for a in node.names]
            # `from pkg import submodule` imports the submodule
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in SOURCES]
            rest = [n for n in names if f"{base}.{n}" not in SOURCES]
            if rest or not subs:
                out.append((base, rest))
            out += [(s, []) for s in subs]
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in SOURCES.items():
        graph[module] = {m for m, _ in _imports(path, module) if m in SOURCES and m != module}
    return graph


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_package_has_a_layer():
    packages = {m.split(".")[0] for m, p in SOURCES.items() if p.parent != ROOT and (ROOT / m.split(".")[0] / "__init__.py").exists()}
    assert packages - {"scripts", "benchmarks"} == set(RANK), "add new packages to LAYERS"


def test_kernels_are_the_bottom():
    bad = [(m, dep) for m, deps in _graph().items() if m.split(".")[0] == "kernels"
           for dep in deps if dep.split(".")[0] != "kernels"]
    assert not bad, f"kernels/ must import only torch/numpy and kernels/ itself: {bad}"


# Packages from the bottom up; a package imports only packages on lower layers (docs/conventions.md, "Style").
LAYERS = (("kernels",), ("data",), ("models",), ("losses", "metrics"), ("training", "inference"), ("webapp",))
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def test_packages_import_only_lower_layers():
    bad = sorted({(m.split(".")[0], dep.split(".")[0]) for m, deps in _graph().items() for dep in deps
                  if m.split(".")[0] in RANK and dep.split(".")[0] in RANK and m.split(".")[0] != dep.split(".")[0]
                  and RANK[dep.split(".")[0]] >= RANK[m.split(".")[0]]})
    assert not bad, f"imports must run down the layers {LAYERS}: {bad}"


def test_no_script_is_imported():
    bad = [(m, dep) for m, deps in _graph().items() for dep in deps if dep in SCRIPTS]
    assert not bad, f"top-level scripts are entry points; move what is shared into a package: {bad}"


def test_no_private_name_crosses_modules():
    bad = []
    for module, path in SOURCES.items():
        for target, names in _imports(path, module):
            if target in SOURCES and target != module:
                bad += [f"{module}: from {target} import {n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "make these public in a lower module:\n" + "\n".join(bad)


def test_files_stay_small():
    big = {str(p.relative_to(ROOT)): n for p in SOURCES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"split these by concern (> {MAX_LINES} lines): {big}"


def test_the_checker_sees_the_project():
    # The rules above pass vacuously if the walk finds nothing: it must see every package and script.
    assert {"models.pipeline", "kernels", "inference_hf", "train_lora_otf"} <= set(SOURCES)
    graph = _graph()
    assert any(dep.startswith("inference.") for dep in graph["inference_hf"])
    assert any(dep.startswith("models.pisa") for dep in graph["models.pipeline"])

"""The engine's packages form layers that only import downward (no cycles, no climbing back).

Read from the source (no imports are executed): every ``import`` and ``from ... import`` of a
``dsm_engine`` name, at module level or inside a function, is an edge from the importing
package to the imported one. Each package has a layer below; an edge may only point to a lower
layer (or stay inside its own package). Inside a package, modules import each other without
cycles either (``from pkg import name`` is an edge to the module ``pkg.name`` when it is one).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package's source lives (pyproject's package_dir).
SOURCES = {
    "dsm_engine": ROOT / "dsm_engine",
    "dsm_engine.kernels": ROOT / "kernels",
    "dsm_engine.data_pipeline": ROOT / "data_pipeline",
}

# Lowest first. A package may import packages of lower layers only.
LAYERS: list[set[str]] = [
    # foundations
    {"dsm_engine", "_C", "config", "jsonl", "procs", "folder_lock"},
    {"text_codec", "plotting"},
    # leaf libraries (rollouts run tool calls in the sandbox)
    {"kernels", "models", "rewards", "sandbox", "tasks"},
    {"rollout"},
    # the loops
    {"reward_models"},
    {"trainers"},
    {"grpo"},
    # applications of the loops and libraries
    {"eval", "data_pipeline"},
    # the top: commands, then recipes built from them, and the CLI
    {"commands"},
    {"recipes", "quickstart", "cli"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    """Every engine module's dotted name -> its file."""
    out = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _package(module: str) -> str:
    """The engine package a dotted name belongs to (``dsm_engine.grpo.step`` -> ``grpo``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "dsm_engine"


def _source(module: str, path: Path, node: ast.ImportFrom) -> str | None:
    """The dotted name a ``from ... import`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module
    base = module.split(".")
    if path.name != "__init__.py":
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported(module: str, path: Path) -> set[str]:
    """The ``dsm_engine`` names ``module`` imports (relative imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _source(module, path, node)
            if source:
                names.add(source)
                if node.module == "dsm_engine" and not node.level:  # from dsm_engine import _C
                    names.update(f"dsm_engine.{alias.name}" for alias in node.names)
    return {n for n in names if n == "dsm_engine" or n.startswith("dsm_engine.")}


def _edges() -> dict[tuple[str, str], list[str]]:
    """``(importer package, imported package) -> [importing modules]``, across packages."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, path in _modules().items():
        for name in _imported(module, path):
            a, b = _package(module), _package(name)
            if a != b and b != "dsm_engine":  # the top package holds only __version__
                edges.setdefault((a, b), []).append(module)
    return edges


def _module_imports(module: str, path: Path, modules: set[str]) -> set[str]:
    """The engine modules ``module`` imports: ``from a.b import c`` is ``a.b.c`` when that is
    a module, else ``a.b`` (a package's ``__init__``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _source(module, path, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                names.add(sub if sub in modules else source)
    return {n for n in names if n in modules and n != module}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_layer():
    packages = {_package(m) for m in _modules()}
    assert packages - LAYER_OF.keys() == set()


def test_imports_only_point_down():
    upward = {
        f"{a} (layer {LAYER_OF[a]}) imports {b} (layer {LAYER_OF[b]}) in {sorted(set(mods))}"
        for (a, b), mods in _edges().items()
        if LAYER_OF[b] >= LAYER_OF[a]
    }
    assert upward == set()


def test_an_upward_relative_import_is_seen(tmp_path):
    """The walk resolves relative imports, so an upward ``from ..grpo import x`` is caught."""
    path = tmp_path / "labeling.py"
    path.write_text("from ..grpo.data import PromptDataset\nimport dsm_engine.recipes\n")
    names = _imported("dsm_engine.rewards.labeling", path)
    assert names == {"dsm_engine.grpo.data", "dsm_engine.recipes"}
    assert all(LAYER_OF[_package(n)] > LAYER_OF["rewards"] for n in names)


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {m: _module_imports(m, p, set(modules)) for m, p in modules.items()}
    assert _cycles(graph) == []


def test_a_cycle_between_modules_is_seen(tmp_path):
    """``a -> b -> c -> a`` (a ``from pkg import module`` among them) is one cycle; a package
    importing its own submodules, which import nothing back, is none."""
    files = {
        "pkg/__init__.py": "from dsm_engine.pkg import a\n",
        "pkg/a.py": "from dsm_engine.pkg.b import thing\n",
        "pkg/b.py": "def f():\n    from . import c\n",
        "pkg/c.py": "import dsm_engine.pkg.a\n",
        "pkg/d.py": "from dsm_engine.pkg.a import x\n",
    }
    paths = {}
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        dotted = "dsm_engine." + name.removesuffix(".py").replace("/", ".")
        paths[dotted.removesuffix(".__init__")] = path
    graph = {m: _module_imports(m, p, set(paths)) for m, p in paths.items()}
    assert graph["dsm_engine.pkg.b"] == {"dsm_engine.pkg.c"}
    assert _cycles(graph) == [["dsm_engine.pkg.a", "dsm_engine.pkg.b", "dsm_engine.pkg.c"]]

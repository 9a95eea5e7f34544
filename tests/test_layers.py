"""The engine's packages form layers that only import downward (no cycles, no climbing back).

Read from the source (no imports are executed): every ``import`` and ``from ... import`` of a
``dsm_engine`` name, at module level or inside a function, is an edge from the importing
package to the imported one. Each package has a layer below; an edge may only point to a lower
layer (or stay inside its own package).
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


def _imported(module: str, path: Path) -> set[str]:
    """The ``dsm_engine`` names ``module`` imports (relative imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if path.name != "__init__.py":
                    base.pop()
                base = base[: len(base) - (node.level - 1)]
                names.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.add(node.module)
                if node.module == "dsm_engine":  # from dsm_engine import _C
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

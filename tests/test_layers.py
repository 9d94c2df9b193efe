"""The package's floors (README "Layout"): a module imports only from its own floor or lower ones,
and never a private name (`_x`) of another module. Walks every import statement of anatomist/,
including the lazy ones inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "anatomist"

# lowest first; a unit on floor i may import units on floors 0..i (same floor: different units
# may import each other only where listed as one floor, and package cycles are checked separately)
FLOORS: list[set[str]] = [
    {"errors", "fileio", "progress", "html", "parallel", "options", "stats", "__init__"},
    {"models"},
    {"data"},
    {"capture"},
    {"sae"},
    {"screen"},
    {"audit"},
    {"spec_decode", "tasks"},
    {"shape", "organism"},
    {"train", "monitor"},
    {"evaluate"},
    {"loop", "cli", "demo"},
]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}


def _unit(module: str) -> str:
    """anatomist.audit.run → audit; anatomist.cli → cli; anatomist → __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path):
    """(line, imported module, imported names) for every `anatomist…` import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "anatomist":
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "anatomist":
                    yield node.lineno, a.name, []


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def test_every_unit_has_a_floor():
    units = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").is_file())}
    assert units <= set(FLOOR), f"units without a floor (add them to FLOORS and the README): {units - set(FLOOR)}"


def test_no_import_reaches_a_higher_floor():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        here = _unit(_module_of(path)) if path.parent != ROOT else (path.stem)
        for line, module, _ in _imports(path):
            there = _unit(module)
            if FLOOR[there] > FLOOR[here]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} ({here}, floor {FLOOR[here]}) imports "
                           f"{module} ({there}, floor {FLOOR[there]})")
    assert not bad, "\n".join(bad)


def test_no_private_name_is_imported_across_modules():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        me = _module_of(path)
        for line, module, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and module != me:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {', '.join(private)} from {module}")
    assert not bad, "\n".join(bad)

"""The package's layers (ARCHITECTURE.md) import one way only: no module imports from a layer above its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import mmlens

PACKAGE = Path(mmlens.__file__).parent
ARCHITECTURE = PACKAGE.parents[1] / "ARCHITECTURE.md"


def _layers() -> list[list[str]]:
    """Layers from the table in ARCHITECTURE.md, bottom first: each row lists its modules / packages."""
    rows = re.findall(r"^\|\s*(\d+)\s*\|[^|]*\|([^|]*)\|", ARCHITECTURE.read_text(), flags=re.M)
    assert rows, "ARCHITECTURE.md has no layer table"
    ordered = sorted(rows, key=lambda r: int(r[0]))
    return [re.findall(r"`(mmlens[\w.]*)`", cell) for _, cell in ordered]


def _layer_of(module: str, layers: list[list[str]]) -> int:
    best, depth = -1, -1
    for i, names in enumerate(layers):
        for name in names:
            inside = module == name or (name != "mmlens" and module.startswith(name + "."))
            if inside and name.count(".") > depth:
                best, depth = i, name.count(".")
    return best


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the module's package
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                found.add(".".join(parts + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "mmlens" or m.startswith("mmlens.")}


def test_every_module_belongs_to_a_layer() -> None:
    layers = _layers()
    orphans = sorted(m for m in _modules() if _layer_of(m, layers) < 0)
    assert not orphans, f"modules missing from ARCHITECTURE.md's layer table: {orphans}"


def test_listed_modules_exist() -> None:
    modules = _modules()
    missing = [n for names in _layers() for n in names if n not in modules]
    assert not missing, f"ARCHITECTURE.md names modules that do not exist: {missing}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_import_from_a_higher_layer(module: str) -> None:
    layers = _layers()
    own = _layer_of(module, layers)
    upward = sorted(
        f"{target} (layer {_layer_of(target, layers)})"
        for target in _imports(_modules()[module], module)
        if target != "mmlens" and _layer_of(target, layers) > own
    )
    assert not upward, f"{module} (layer {own}) imports from above: {upward}"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an upward import in a module's source is found."""
    fake = tmp_path / "m.py"
    fake.write_text("from mmlens.cli import app\n")
    layers = _layers()
    targets = _imports(fake, "mmlens.errors")
    assert any(_layer_of(t, layers) > _layer_of("mmlens.errors", layers) for t in targets)


def _sources(exclude: tuple[str, ...] = ()) -> dict[str, str]:
    return {m: p.read_text() for m, p in _modules().items() if not m.startswith(exclude)}


@pytest.mark.parametrize("what, pattern, home, exclude", [
    ("progress bars", r"rich\.progress|tqdm", "mmlens.util.progress", ()),
    ("option validators", r"def _?check_(int|float|range|choice)\b", "mmlens.util.options", ()),
    ("blur defaults", r"GaussianBlur", "mmlens.model.images", ()),
    ("head counts", r"num_attention_heads", "mmlens.model.subject", ("mmlens.testing", "mmlens.demo")),
    ("MLP module names", r"down_proj", "mmlens.hooks.points", ("mmlens.adapters", "mmlens.testing", "mmlens.demo")),
])
def test_one_home_for_shared_helpers(what: str, pattern: str, home: str, exclude: tuple[str, ...]) -> None:
    """Each shared helper lives in one module; the others call it instead of repeating it."""
    found = sorted(m for m, src in _sources(exclude).items() if re.search(pattern, src))
    assert found == [home], f"{what}: expected only in {home}, found in {found}"


def test_no_module_over_400_lines() -> None:
    """Long modules are split by concern (issue #11): each source file stays at or under 400 lines."""
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these by concern: {long}"

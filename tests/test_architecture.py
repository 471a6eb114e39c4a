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


# -- family names live in adapters/ and testing/ only ---------------------------------------------------------

#: the bundled demo model *is* one LLaVA checkpoint (its build / train scripts construct that class)
_MAY_NAME_FAMILIES = ("mmlens.adapters", "mmlens.testing", "mmlens.demo")


def _family_words() -> set[str]:
    """Every registered family and model type, lower-case without underscores, and their leading words
    (``qwen2_5_vl`` -> ``qwen25vl``, ``qwen``)."""
    from mmlens.adapters import ADAPTERS

    words = set()
    for cls in ADAPTERS.values():
        for name in (cls.family, *cls.model_types):
            words |= {name.replace("_", "").lower(), re.match(r"[a-z]+", name.lower()).group()}
    return words - _CODE_VERBS


#: family names that are also everyday code (``np.clip`` / ``Tensor.clip``): not searched for
_CODE_VERBS = {"clip"}


def _code_words(source: str) -> list[tuple[int, str]]:
    """Identifiers, attribute names, imported names and string constants of ``source`` (docstrings and
    comments are prose, not decisions, and are left out)."""
    tree = ast.parse(source)
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words = [node.id]
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words = [node.name]
        elif isinstance(node, ast.alias):
            words = [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom):
            words = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            words = [node.value]
        else:
            continue
        out += [(getattr(node, "lineno", 0), w) for w in words]
    return out


def _family_names_in(source: str, words: set[str]) -> list[str]:
    return [f"line {line}: {text[:60]!r}" for line, text in _code_words(source)
            if any(w in text.lower().replace("_", "") for w in words)]


def test_nothing_outside_adapters_and_testing_names_a_family() -> None:
    """A family is one adapter file (+ its tiny model): no other module branches on, imports or spells a
    family's name in code."""
    words = _family_words()
    found = {m: hits for m, src in _sources(_MAY_NAME_FAMILIES).items() if (hits := _family_names_in(src, words))}
    assert not found, f"family names outside adapters/ and testing/: {found}"


def test_the_family_name_check_sees_a_family_name() -> None:
    """The checker itself: a branch on a family, a family's class and an import are found; prose is not."""
    words = _family_words()
    planted = (
        '"""Works for LLaVA and Qwen2-VL."""\n'
        "from transformers import Gemma3ForConditionalGeneration\n"
        "def f(subject):\n"
        "    # a comment on llava\n"
        "    return subject.family == 'qwen2_5_vl'\n"
    )
    hits = _family_names_in(planted, words)
    assert len(hits) == 2 and all("line 1:" not in h and "line 4:" not in h for h in hits), hits


def test_each_family_adapter_is_one_file_of_at_most_200_lines() -> None:
    """Adding a family = one adapter file (<= 200 lines) + its tiny model: every registered adapter class lives
    in an adapters/ module of at most 200 lines."""
    from mmlens.adapters import ADAPTERS

    for cls in set(ADAPTERS.values()):
        module = cls.__module__
        assert module.startswith("mmlens.adapters."), (cls, module)
        lines = len(_modules()[module].read_text().splitlines())
        assert lines <= 200, f"{module} has {lines} lines"

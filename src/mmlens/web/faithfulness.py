"""Faithfulness figures of the bundled demo model, read from the benchmark table (benchmarks/demo/results.md)."""

from __future__ import annotations

import functools
from pathlib import Path

import mmlens
from mmlens.web.render import esc

SHOWN = ("energy in mask ↑", "pointing game ↑", "deletion AUC ↓", "insertion AUC ↑", "sanity check")


def table_path() -> Path:
    """benchmarks/demo/results.md of a source checkout (absent in an installed wheel: then nothing is shown)."""
    return Path(mmlens.__file__).resolve().parents[2] / "benchmarks" / "demo" / "results.md"


@functools.lru_cache(maxsize=4)
def read_table(path: str) -> dict[str, dict[str, str]]:
    """{method: {column: cell}} from the first Markdown table of ``path`` ({} when missing or unreadable)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines if ln.lstrip().startswith("|")]
    if len(rows) < 3:
        return {}
    head = rows[0]
    return {r[0]: dict(zip(head, r)) for r in rows[2:] if len(r) == len(head)}


@functools.lru_cache(maxsize=4)
def is_stale(path: str) -> bool:
    """Whether the table's header says it was measured with earlier metric or method definitions."""
    try:
        head = Path(path).read_text(encoding="utf-8").split("|", 1)[0]
    except OSError:
        return False
    return "**Stale" in head


def figures_html(method: str, is_demo: bool) -> str:
    """A small table of the method's benchmark figures on the demo model (empty for other models)."""
    if not is_demo:
        return ""
    table = read_table(str(table_path()))
    row = table.get(method)
    if not row:
        return ""
    base = table.get("baseline:random", {})
    head = "".join(f"<th>{esc(k)}</th>" for k in SHOWN)
    cells = "".join(f"<td>{esc(row.get(k, ''))}</td>" for k in SHOWN)
    ref = "".join(f"<td>{esc(base.get(k, ''))}</td>" for k in SHOWN)
    return (f'<div class="mm-sub">faithfulness on the demo model (ShapesVQA benchmark, n={esc(row.get("n", "?"))})'
            f'</div><table class="mm-fig" id="faithfulness"><tr><th></th>{head}</tr><tr><th>{esc(method)}</th>'
            f"{cells}</tr><tr><th>random baseline</th>{ref}</tr></table>"
            + ('<div class="mm-sub" id="faithfulness-stale">measured before the current metric and method definitions '
               "(see benchmarks/demo/results.md): read as indicative</div>" if is_stale(str(table_path())) else ""))

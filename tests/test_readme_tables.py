"""The README's family x method table (written by docs/family_support.py) covers what is registered today."""

from __future__ import annotations

import re
from pathlib import Path

import mmlens
from mmlens.testing.tiny_dual import DUAL_FAMILIES
from mmlens.testing.tiny_models import FAMILIES

README = Path(__file__).resolve().parents[1] / "README.md"


def test_family_support_table_names_every_family_and_method() -> None:
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- family-support:start -->", 1)[1].split("<!-- family-support:end -->", 1)[0]
    lines = [ln for ln in table.strip().splitlines() if ln.startswith("|")]
    header = re.findall(r"`(\w+)`", lines[0])
    rows = [re.match(r"\| `(\w+)` \|", ln).group(1) for ln in lines[2:]]
    assert header == [*FAMILIES, *DUAL_FAMILIES], "rerun `PYTHONPATH=src python docs/family_support.py`"
    assert rows == [m.name for m in mmlens.methods(kind="attribution")], "rerun docs/family_support.py"
    assert all(len(ln.strip("|").split("|")) == len(FAMILIES) + len(DUAL_FAMILIES) + 1 for ln in lines)

"""`make demo`'s main job runs end to end and writes what the README says."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmlens.demo import DEMO_MODEL_DIR
from mmlens.demo.__main__ import main


@pytest.mark.skipif(not (DEMO_MODEL_DIR / "config.json").is_file(), reason="the demo model is not built")
def test_demo_main_writes_both_explanations(tmp_path: Path, capsys) -> None:
    assert main(["--n-eval", "8", "--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["occlusion_slic.html", "occlusion_slic.png", "relevancy.html", "relevancy.png"]
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    # the trusted method's peak lies on the evidence object of the explained sample (pointing 0.97 over 200)
    assert "occlusion_slic explanation" in out and "(peak inside the evidence object)" in out.split("relevancy")[0]

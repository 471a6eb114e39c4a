"""Probes and the logit lens across training checkpoints: when does a property become readable?

``probe_checkpoints`` runs :func:`mmlens.runs.probe_run.run_probes` on every checkpoint of a training run
(``python -m mmlens.demo.train --save-every N --checkpoint-dir DIR``) and the logit lens on colour questions, and
writes ``checkpoints.json`` and ``checkpoints.png``: layer x checkpoint maps of probe accuracy, selectivity and
the answer token's logit-lens probability (at the position that predicts it). Per-checkpoint probe outputs land
in ``out/<checkpoint>/``.

>>> r = probe_checkpoints("ckpts", "lm.blocks.*.resid_post", "object", "color", n=200, out="ckpt-probes")  # doctest: +SKIP
>>> r["accuracy"][-1]                                                                                   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.demo.checkpoints import read_manifest
from mmlens.errors import InputError
from mmlens.util.io import atomic_write, check_output_folder, read_json
from mmlens.util.options import check_int

JSON, PLOT = "checkpoints.json", "checkpoints.png"
_IGNORED = {"_name_or_path", "transformers_version", "torch_dtype", "dtype"}


def check_same_model(folder: Path, names: Sequence[str]) -> None:
    """One line if the checkpoints are not of one architecture (a folder mixing runs of different models)."""
    def arch(name: str) -> dict:
        cfg = read_json(folder / name / "config.json", "model config", "pass the checkpoint folder of one training run")
        return {k: v for k, v in cfg.items() if k not in _IGNORED}

    first = arch(names[0])
    for name in names[1:]:
        if arch(name) != first:
            raise InputError(f"checkpoint {name!r} is of another model than {names[0]!r} (different config.json): "
                             "pass the checkpoint folder of one training run")


def probe_checkpoints(checkpoints: str | os.PathLike, points: str = "lm.blocks.*.resid_post", group: str = "object",
                      prop: str = "color", n: int = 200, out: str | os.PathLike = "checkpoint-probes", *,
                      kinds: str | Sequence[str] = ("logistic",), seeds: int = 2, lens_n: int = 20, seed: int = 0,
                      show_progress: bool | None = None, command: str | None = None) -> dict[str, Any]:
    """Probe ``prop`` and run the logit lens at every checkpoint in ``checkpoints``; return (and save) the maps."""
    from mmlens.runs.probe_run import run_probes

    folder = Path(checkpoints)
    manifest = read_manifest(folder)
    names = [c["name"] for c in manifest["checkpoints"]]
    check_same_model(folder, names)
    lens_n = check_int("lens_n", lens_n, 1, 1000)
    out = check_output_folder(out, "--out")
    kind = (kinds.split(",") if isinstance(kinds, str) else list(kinds))[0].strip()
    acc, sel, lens, lens_top1, points_seen = [], [], [], [], None
    for name in names:
        r = run_probes(str(folder / name), points, group, prop, n, Path(out) / name, kinds=kinds, seeds=seeds,
                       seed=seed, show_progress=show_progress)
        rows = {s["point"]: s for s in r.summary() if s["model"] == "trained" and s["kind"] == kind}
        points_seen = points_seen or list(rows)
        acc.append([rows[p]["accuracy"] for p in points_seen])
        sel.append([rows[p].get("selectivity", np.nan) for p in points_seen])
        p_answer, top1 = _lens(str(folder / name), manifest.get("image_size", 64), lens_n, seed, show_progress)
        lens.append(p_answer)
        lens_top1.append(top1)
    result = {"checkpoints": names, "steps": [c["step"] for c in manifest["checkpoints"]], "points": points_seen,
              "probe_kind": kind, "property": prop, "group": group, "n": n,
              "accuracy": np.asarray(acc).T.tolist(), "selectivity": np.asarray(sel, float).T.tolist(),
              "lens_layers": [f"layer {i}" for i in range(len(lens[0]))],
              "lens_p_answer": np.asarray(lens).T.tolist(), "lens_top1": np.asarray(lens_top1).T.tolist(),
              "lens_n": lens_n, "command": command}
    atomic_write(Path(out) / JSON, lambda t: t.write_text(json.dumps(result, indent=1)))
    atomic_write(Path(out) / PLOT, lambda t: _plot(result, t))
    return result


def _lens(path: str, image_size: int, n: int, seed: int, show_progress: bool | None) -> tuple[list, list]:
    """Per layer: mean logit-lens probability of the answer token (and top-1 rate) over ``n`` colour questions."""
    from mmlens.data.shapes_vqa import ShapesVQA
    from mmlens.layer.logit_lens import logit_lens
    from mmlens.model.loading import load
    from mmlens.util.progress import progress_bar

    subject = load(path)
    data = ShapesVQA(image_size=image_size, seed=seed, question_types=("color",))
    probs, hits = [], []
    with progress_bar(n, f"logit lens {Path(path).name}", show=show_progress) as bar:
        for s in data.samples(n):
            batch = subject.prepare(s.image, s.question, answer=s.answer)
            pos = int(batch.answer_positions[0]) - 1  # the position whose output predicts the answer
            lens = logit_lens(subject, batch, positions=[pos], top_k=1)
            probs.append(lens.values[:, 0].float().numpy())
            hits.append([row[0][0][0] == lens.meta["target"] for row in lens.extras["topk"]])
            bar.update()
    return np.mean(probs, axis=0).tolist(), np.mean(hits, axis=0).tolist()


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("accuracy", f"{result['probe_kind']} probe accuracy ({result['property']})", result["points"]),
              ("selectivity", "selectivity (accuracy - control)", result["points"]),
              ("lens_p_answer", "logit lens: p(answer)", result["lens_layers"])]
    fig, axes = plt.subplots(1, 3, figsize=(4.2 * 3, 0.5 * max(len(result["points"]), 4) + 1.8))
    for ax, (key, title, rows) in zip(axes, panels):
        values = np.asarray(result[key], float)
        low = min(0.0, float(np.nanmin(values)))  # selectivity may be negative
        im = ax.imshow(values, aspect="auto", cmap="viridis", origin="lower", vmin=low, vmax=1.0)
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
        ticks = [f"{name.split('-step-')[0]}\n{step}" for name, step in zip(result["checkpoints"], result["steps"])]
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_yticks(range(len(rows)), [r.removesuffix(".resid_post") for r in rows], fontsize=7)
        ax.set_xlabel("training step (checkpoint)")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


__all__ = ["JSON", "PLOT", "check_same_model", "probe_checkpoints"]

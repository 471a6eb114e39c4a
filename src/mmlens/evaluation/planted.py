"""``mmlens benchmark --suite planted``: attribution methods scored against the evidence a model *really* uses.

The planted-evidence demo variants are trained so that what they read is known by construction (a trigger patch
that flips the answer, a shortcut cue that disagrees with the object, questions that need two objects); their
test splits carry a ``model_evidence`` mask per sample. For every variant, every method (and the random / centre
/ uniform baselines) is scored:

The answer explained (teacher-forced) is what the variant was trained to say (the sample's ``planted_answer``,
e.g. "no" on a triggered image that holds the object), so the map explains the model's own behaviour.

- localisation against the object the question is about (``pointing_game``, ...) and against the model's
  evidence (``pointing_game@model``, ...), and their difference on *conflicting* samples (some of the model's
  evidence lies outside the object): ``pointing_game@gap`` > 0 means the map follows what the model used;
- model-side checks that need no mask: ROAD (top-k vs random-k removal with noisy linear imputation) and the
  randomisation sanity check on the first ``sanity_n`` (default 30) samples;
- every score with its 95% bootstrap interval over samples.

A reference run (``subject``, default the demo model, on standard ShapesVQA) gives the ranking on object masks;
the Spearman correlation between it and each variant's ranking on the model's evidence is reported, with the
leaderboard figure (``leaderboard.png`` / ``.svg``). ``data``: a user JSONL file whose rows carry
``model_evidence`` replaces the variants (``subject`` runs on it).

>>> result = run_planted("demo", methods=["saliency", "gradcam"], n=30)          # doctest: +SKIP
>>> result.spearman()[0]["rho_reference"]                                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.demo.suite import PLANTED_VARIANTS, PlantedVariant
from mmlens.errors import InputError
from mmlens.util.io import read_json, write_files_together

#: Benchmark suites by name.
SUITES = {"default": "one model on ShapesVQA object masks or a user data file",
          "planted": "every planted-evidence demo variant, scored against the evidence the model really uses"}
DEFAULT_METRICS = "pointing_game,energy_in_mask,road,randomisation"
OUTPUT_FILES = ("planted.md", "planted.csv", "planted.json", "leaderboard.png", "leaderboard.svg")


def check_suite(suite: str) -> str:
    """``suite`` if known, else one line listing the suites."""
    if suite not in SUITES:
        raise InputError(f"unknown suite {suite!r}: choose one of {', '.join(SUITES)}")
    return suite


def shipped(variant: PlantedVariant) -> bool:
    """Whether the variant's model and split exist in this install."""
    from mmlens.data.shapes_splits import SPLITS
    from mmlens.demo import DEMO_VARIANTS

    return variant.model.split(":", 1)[1] in DEMO_VARIANTS and variant.split in SPLITS


def resolve_variants(variants: str | Sequence[str] | None) -> list[PlantedVariant]:
    """The chosen variants (default: every shipped one); unknown or unshipped names list the valid ones."""
    available = [v.name for v in PLANTED_VARIANTS.values() if shipped(v)]
    if variants is None or variants == "all":
        names = available
    else:
        items = variants.split(",") if isinstance(variants, str) else list(variants)
        names = [str(v).strip() for v in items if str(v).strip()]
    for name in names:
        if name not in PLANTED_VARIANTS:
            raise InputError(f"unknown planted variant {name!r}: choose from {', '.join(PLANTED_VARIANTS)}")
        if name not in available:
            raise InputError(f"planted variant {name!r} ({PLANTED_VARIANTS[name].model}) is not shipped in this "
                             f"install: choose from {', '.join(available) or 'none (pass --data with model_evidence)'}")
    if not names:
        raise InputError("no planted variant is shipped in this install: pass --data FILE whose rows carry "
                         "model_evidence, or install a version with demo:trigger / demo:shortcut / demo:twoobject")
    return [PLANTED_VARIANTS[n] for n in dict.fromkeys(names)]


def run_planted(subject: Any = "demo", methods: str | Sequence[str] = "all", n: int = 50, seed: int = 0,
                variants: str | Sequence[str] | None = None, data: str | os.PathLike | None = None,
                metrics: str | Sequence[str] | None = None, out: str | os.PathLike | None = None,
                sanity_n: int = 30, command: str | None = None, **kwargs: Any) -> PlantedResult:
    """Run the planted suite (see the module docstring); ``kwargs`` go to each
    :func:`~mmlens.evaluation.benchmark.run_benchmark` run (options, engine, progress)."""
    from mmlens.evaluation.benchmark import resolve_methods, resolve_metrics, run_benchmark
    from mmlens.util.io import check_output_folder
    from mmlens.util.limits import MAX_SAMPLES
    from mmlens.util.options import check_int

    check_int("n", n, 1, MAX_SAMPLES)
    check_int("sanity_n", sanity_n, 0, MAX_SAMPLES)
    resolve_methods(methods)
    metric_list = resolve_metrics(DEFAULT_METRICS if metrics is None else metrics)
    if not any(m.category == "localisation" for m in metric_list):
        raise InputError("the planted suite compares localisation against the object and the model's evidence: "
                         "include a localisation metric (pointing_game, energy_in_mask or topk_iou)")
    chosen = [] if data is not None else resolve_variants(variants)
    if data is not None and variants is not None:
        raise InputError("pass either --data (a file with model_evidence) or --variants, not both")
    if out is not None:
        check_output_folder(out, "out")
    names = ",".join(m.name for m in metric_list)
    common = {"methods": methods, "n": n, "seed": seed, "metrics": names, "sanity_n": sanity_n, **kwargs}

    def folder(name: str) -> Path | None:
        return Path(out) / name if out is not None else None

    results: dict[str, Any] = {}
    reference = None
    if data is not None:
        results["data"] = run_benchmark(subject, data=data, out=folder("data"), require_model_evidence=True,
                                        command=command, **common)
    else:
        reference = run_benchmark(subject, out=folder("reference"), command=command, **common)
        for v in chosen:
            results[v.name] = run_benchmark(v.model, split=v.split, out=folder(v.name), command=command, **common)
    meta = {"n": n, "seed": seed, "sanity_n": sanity_n, "metrics": names, "command": command,
            "reference": None if reference is None else reference.meta["model"],
            "variants": {v.name: {"model": v.model, "split": v.split, "evidence": v.evidence} for v in chosen}}
    result = PlantedResult(reference, results, meta)
    if out is not None:
        result.save(out)
    return result


@dataclass
class PlantedResult:
    """The suite's runs: ``reference`` (object masks, or None with a data file) and one
    :class:`~mmlens.evaluation.benchmark_result.BenchmarkResult` per variant."""

    reference: Any
    variants: dict[str, Any]
    meta: dict[str, Any]

    def localisation(self) -> list[str]:
        """The localisation metrics of the run, headline first (pointing game: area-insensitive)."""
        runs = [self.reference, *self.variants.values()]
        names = [m["name"] for m in next(r for r in runs if r is not None).metrics if m["category"] == "localisation"]
        return sorted(names, key=lambda n: n != "pointing_game")

    def spearman(self) -> list[dict[str, Any]]:
        """Per variant and localisation metric: Spearman between the method ranking on object masks (the
        reference run, and the variant's own samples) and the ranking on the model's evidence."""
        out = []
        for name, res in self.variants.items():
            conflicting = res.meta.get("n_conflict", 1) > 0  # else the two masks agree: the same ranking
            for metric in self.localisation():
                for key in (metric + "@model", metric + "@weakest"):
                    if not any(key in r for r in res.rows):
                        continue
                    same = _rho(res, metric, res, key) if conflicting or key.endswith("@weakest") else float("nan")
                    out.append({"variant": name, "metric": key.replace("@model", ""),
                                "rho_reference": _rho(self.reference, metric, res, key) if self.reference
                                else float("nan"), "rho_same_samples": same})
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PlantedResult:
        """The suite saved in ``folder`` (its ``planted.json``), e.g. to redraw the figure or the tables."""
        from mmlens.evaluation.benchmark_result import BenchmarkResult

        data = read_json(Path(folder) / "planted.json", "planted-suite result",
                         "pass the --out folder of a planted-suite run")
        ref = BenchmarkResult.from_dict(data["reference"]) if data.get("reference") else None
        return cls(ref, {k: BenchmarkResult.from_dict(v) for k, v in data["variants"].items()}, data["meta"])

    def verdicts(self, res: Any) -> dict[str, str]:
        """Per method: which evidence its map follows on conflicting samples, from the headline gap's 95%
        interval: "model's evidence" (above 0), "the object" (below 0) or "unclear"."""
        key = self.localisation()[0] + "@gap"
        out = {}
        for r in res.rows:
            if r["kind"] == "baseline":  # chance level: the gap of a flat map is the masks' area difference
                out[r["method"]] = "(chance)"
                continue
            lo, hi = r.get(key + "_ci") or (float("nan"), float("nan"))
            out[r["method"]] = ("model's evidence" if lo > 0 else "the object" if hi < 0 else
                                "unclear" if math.isfinite(lo) else "n/a")
        return out

    def to_markdown(self) -> str:
        from mmlens.evaluation.planted_report import planted_markdown

        return planted_markdown(self)

    def to_csv(self) -> str:
        from mmlens.evaluation.planted_report import planted_csv

        return planted_csv(self)

    def to_json(self) -> str:
        from mmlens.evaluation.benchmark_result import _nan_to_none

        runs = {"reference": self.reference.to_dict() if self.reference else None,
                "variants": {k: v.to_dict() for k, v in self.variants.items()}}
        return json.dumps(_nan_to_none({"format": "mmlens.benchmark.planted", "format_version": 1, "meta": self.meta,
                                        "spearman": self.spearman(), **runs}), indent=2)

    def plot_leaderboard(self) -> Any:
        from mmlens.evaluation.leaderboard import leaderboard_figure

        return leaderboard_figure(self)

    def save(self, out: str | os.PathLike) -> list[Path]:
        """Write planted.md / .csv / .json and leaderboard.png / .svg into ``out`` (each run's own files are in
        ``out/reference`` and ``out/VARIANT``); staged under temporary names, renamed once all succeeded."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        fig = self.plot_leaderboard()
        writers = {"planted.md": lambda p: p.write_text(self.to_markdown(), encoding="utf-8"),
                   "planted.csv": lambda p: p.write_text(self.to_csv(), encoding="utf-8"),
                   "planted.json": lambda p: p.write_text(self.to_json(), encoding="utf-8"),
                   "leaderboard.png": lambda p: fig.savefig(p, format="png", dpi=120),
                   "leaderboard.svg": lambda p: fig.savefig(p, format="svg")}
        return write_files_together(folder, writers)


def method_scores(res: Any, key: str) -> dict[str, float]:
    """``{method: score}`` of the non-baseline rows of ``res`` with a finite ``key``."""
    return {r["method"]: float(r[key]) for r in res.rows
            if r["kind"] == "method" and isinstance(r.get(key), float) and math.isfinite(r[key])}


def _rho(a: Any, key_a: str, b: Any, key_b: str) -> float:
    from scipy.stats import spearmanr

    sa, sb = method_scores(a, key_a), method_scores(b, key_b)
    common = [m for m in sa if m in sb]
    if len(common) < 3:
        return float("nan")
    x, y = np.array([sa[m] for m in common]), np.array([sb[m] for m in common])
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)

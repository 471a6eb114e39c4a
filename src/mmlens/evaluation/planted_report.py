"""The planted suite's tables: Markdown (headline table per variant, Spearman between rankings, the reference
run) and a long-format CSV (one line per run, method and score, with its 95% bootstrap interval).

>>> print(planted_markdown(result))          # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from mmlens.evaluation.benchmark_notes import label
from mmlens.evaluation.benchmark_result import _cell, _ci_cell


def _keys(result: Any, res: Any) -> list[str]:
    """The headline columns of one run: per localisation metric its object / model / gap scores, then ROAD
    and randomisation (those the run holds)."""
    keys = []
    for metric in result.localisation():
        keys += [k for k in (metric, metric + "@model", metric + "@gap", metric + "@weakest")
                 if any(k in r for r in res.rows)]
    return keys + [k for k in ("road", "road:drop", "road:random_drop", "randomisation")
                   if any(k in r for r in res.rows)]


def _header(key: str) -> str:
    text = label(key)
    if "@" not in key and ":" not in key and key not in ("road", "randomisation"):
        text += " (object)"
    return text


def _table(result: Any, res: Any, verdicts: bool) -> list[str]:
    keys = _keys(result, res)
    follows = result.verdicts(res) if verdicts and any(k.endswith("@gap") for k in keys) else {}
    cols = ["method", *map(_header, keys), *(["map follows"] if follows else []), "sanity", "n"]
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * len(keys) + ("---|" if follows else "") + "---|---:|"]
    for r in res.rows:
        cells = [r["method"], *(_ci_cell(r, k) for k in keys)]
        cells += [follows.get(r["method"], "")] if follows else []
        cells += [str(r.get("sanity", "")), str(r["n"])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def planted_markdown(result: Any) -> str:
    """The suite's Markdown report."""
    meta = result.meta
    lines = ["# mmlens benchmark: planted-evidence suite", "",
             ("Attribution maps scored against the evidence each model *really* uses (planted by training), beside "
             "the object the question is about. Cells: mean [95% bootstrap interval over samples, seeded]. "
             f"n = {meta['n']} samples per run, seed {meta['seed']}; randomisation on the first "
             f"{meta['sanity_n']}."), "",
             "- '(object)': against the object the question is about (samples whose evidence is one object);",
             "- '(model evidence)': against the pixels the model uses (the samples that define them);",
             ("- 'gap (model - object)': their difference on conflicting samples (some of the model's evidence lies "
             "outside the object); > 0: the map follows what the model used, < 0: it keeps pointing at the object;"),
             ("- '(weakest part of the model evidence)': when the model's evidence has several parts (both objects "
             "of a two-object question), the score against the part the map covers least;"),
             ("- 'map follows': the headline gap's 95% interval above 0 (model's evidence), below 0 (the object), "
             "else unclear;"),
             ("- ROAD: answer-probability drop when the map's top-k% pixels are removed with noisy linear imputation "
             "minus the drop for a random k% (mean over k = 5, 10, 20%); randomisation: Spearman correlation with "
             "the map of the cascade-randomised model (pass below 0.5)."), ""]
    for name, res in result.variants.items():
        info = meta["variants"].get(name, {})
        what = f" ({info['split']}; the model reads {info['evidence']})" if info else ""
        lines += [f"## {name}: {res.meta['model']}{what}", "",
                  (f"{res.meta['n']} samples: {res.meta['n_localisation']} whose evidence is one object (or two: "
                  "two-object questions), "
                  f"{res.meta.get('n_model_evidence', 0)} with a model-evidence mask, "
                  f"{res.meta.get('n_conflict', 0)} conflicting."), ""]
        lines += _table(result, res, verdicts=True) + [""]
    rho = result.spearman()
    if rho:
        lines += ["## Do the rankings agree?", "",
                  ("Spearman correlation between the method ranking (baselines left out) on object masks and the "
                  "ranking on the model's evidence."), "",
                  ("| variant | metric | vs the reference ranking (ShapesVQA object masks) | vs object masks of the "
                  "same samples |"), "|---|---|---:|---:|"]
        lines += [f"| {r['variant']} | {label(r['metric'])} | {_cell(r['rho_reference'])} | "
                  f"{_cell(r['rho_same_samples'])} |" for r in rho] + [""]
    if result.reference is not None:
        ref = result.reference
        lines += [f"## Reference: {ref.meta['model']} on {ref.meta['data_description']} (object masks)", ""]
        lines += _table(result, ref, verdicts=False) + [""]
    lines += [("Each run's full table: `reference/results.md`, `VARIANT/results.md` next to this file; the leaderboard "
              "figure: `leaderboard.png` / `leaderboard.svg`.")]
    if meta.get("command"):
        lines += ["", "Regenerate with:", "", "```", meta["command"], "```"]
    return "\n".join(lines) + "\n"


def planted_csv(result: Any) -> str:
    """One line per (run, method, score): mean, 95% interval, samples."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", "model", "split", "method", "kind", "score", "mean", "ci_low", "ci_high"])
    runs = ([("reference", result.reference)] if result.reference is not None else []) + list(result.variants.items())
    for name, res in runs:
        split = result.meta["variants"].get(name, {}).get("split", "standard" if name == "reference" else "")
        for r in res.rows:
            for key in res.score_keys():
                if key not in r:
                    continue
                lo, hi = r.get(f"{key}_ci") or (float("nan"), float("nan"))
                writer.writerow([name, res.meta["model"], split, r["method"], r["kind"], key,
                                 *(("" if not math.isfinite(v) else repr(float(v))) for v in (r[key], lo, hi))])
    return buf.getvalue()

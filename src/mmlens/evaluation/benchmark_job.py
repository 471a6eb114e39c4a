"""The benchmark as a dataset-run job: per sample, every method and baseline explained and scored, one row per
event (sample, explained, failed, score) in the run's Parquet shards; :func:`reduce_rows` replays the rows in
sample order into the streaming accumulators, so the table is the same whichever engine ran the samples.

>>> job = BenchmarkJob("demo", ["gradcam"], {"gradcam": {}}, ["pointing_game"], {}, seed=0, sanity_n=5)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from mmlens.errors import InputError
from mmlens.evaluation.baselines import BASELINE_NAMES, baseline_explanation
from mmlens.evaluation.benchmark_result import MethodStats
from mmlens.evaluation.method_spec import parse_method_spec
from mmlens.evaluation.registry import MetricInfo, get_metric
from mmlens.runs.engine import Job

#: Metrics run only on the first ``sanity_n`` samples (each costs several explanations per sample).
SANITY_CATEGORIES = ("randomisation", "robustness")


def sample_seed(seed: int, index: int) -> int:
    """The seed of every random choice made for sample ``index``."""
    return int(np.random.default_rng([seed, index]).integers(2**31))


def _schema() -> Any:
    import pyarrow as pa

    floats = pa.list_(pa.float64())
    return pa.schema([("index", pa.int64()), ("event", pa.string()), ("method", pa.string()),
                      ("metric", pa.string()), ("score", pa.float64()), ("values", floats), ("fractions", floats),
                      ("passed", pa.bool_()), ("seconds", pa.float64()), ("object_evidence", pa.bool_()),
                      ("model_evidence", pa.bool_()), ("conflict", pa.bool_()), ("error", pa.string())])


#: ``sample.evidence`` values whose ``mask`` is one object or a few (not the whole image).
OBJECT_EVIDENCE = ("object", "objects")
#: Suffixes of the localisation scores against the model's evidence and of their gap to the object's score.
AT_MODEL, AT_GAP = "@model", "@gap"
#: Suffix of the localisation score of the worst-covered part of a model evidence made of several parts.
AT_WEAKEST = "@weakest"


def evidence_parts(evidence: np.ndarray) -> list[np.ndarray]:
    """The connected parts (8-connectivity) of a model-evidence mask, e.g. the two objects of a two-object
    question; one part for a single region."""
    from scipy.ndimage import label

    labels, count = label(evidence, structure=np.ones((3, 3), dtype=int))
    return [labels == k for k in range(1, count + 1)]


def model_evidence_of(sample: Any, mask: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """(the sample's ``model_evidence`` mask or None, whether it conflicts with the object's ``mask``: some of
    the evidence the model uses lies outside the object)."""
    evidence = getattr(sample, "model_evidence", None)
    if evidence is None:
        return None, False
    evidence = np.asarray(evidence, dtype=bool)
    if evidence.shape != mask.shape or not evidence.any():
        raise InputError(f"model_evidence of shape {evidence.shape} with {int(evidence.sum())} pixels: pass a "
                         f"non-empty boolean mask of the image's shape {mask.shape}")
    return evidence, bool((evidence & ~mask).any())


class BenchmarkJob(Job):
    """Explain and score one sample with every method (``specs``) and, with ``baselines``, the baselines."""

    name = "benchmark"

    def __init__(self, model: str, specs: list[str], method_options: dict[str, dict[str, Any]], metrics: list[str],
                 metric_options: dict[str, dict[str, Any]], seed: int, sanity_n: int, baselines: bool = True) -> None:
        self.model, self.specs, self.method_options = model, list(specs), method_options
        self.metrics, self.metric_options = list(metrics), metric_options
        self.seed, self.sanity_n, self.baselines = int(seed), int(sanity_n), bool(baselines)

    def methods(self) -> list[tuple[str, str]]:
        """(method, kind) in table order: methods, then baselines."""
        return [(m, "method") for m in self.specs] + ([(b, "baseline") for b in BASELINE_NAMES] if self.baselines
                                                      else [])

    def config(self) -> dict[str, Any]:
        return {"model": self.model, "methods": self.specs, "method_options": self.method_options,
                "metrics": self.metrics, "metric_options": self.metric_options, "sanity_n": self.sanity_n,
                "baselines": self.baselines}

    def schema(self) -> Any:
        return _schema()

    def setup(self, subject: Any) -> dict[str, Any]:
        return {"warmed": set(), "metrics": [get_metric(name) for name in self.metrics]}

    def process(self, subject: Any, state: dict[str, Any], index: int, sample: Any, where: str) -> list[dict[str, Any]]:
        answer = getattr(sample, "planted_answer", None) or sample.answer  # what a planted variant says
        try:
            batch = subject.prepare(sample.image, sample.question, answer=answer)
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
        object_evidence = getattr(sample, "evidence", "object") in OBJECT_EVIDENCE
        try:
            evidence, conflict = model_evidence_of(sample, np.asarray(sample.mask, dtype=bool))
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
        rows = [_row(index, "sample", object_evidence=object_evidence, model_evidence=evidence is not None,
                     conflict=conflict and object_evidence)]
        seed = sample_seed(self.seed, index)
        for method, kind in self.methods():
            rows += self._one(subject, batch, sample, index, method, kind, state, seed, object_evidence, where,
                              evidence, conflict)
        return rows

    def _one(self, subject: Any, batch: Any, sample: Any, index: int, method: str, kind: str, state: dict[str, Any],
             seed: int, object_evidence: bool, where: str, evidence: np.ndarray | None = None,
             conflict: bool = False) -> list[dict[str, Any]]:
        from mmlens.explain import explain

        options = self.method_options.get(method, {})

        def make() -> Any:
            if kind == "baseline":
                return baseline_explanation(subject, batch, method, seed)
            return explain(subject, sample.image, sample.question, method=parse_method_spec(method)[0],
                           target="answer", answer=batch.answer_ids.tolist(), seed=seed, **options)

        if method not in state["warmed"]:  # lazy imports and first-call set-up are not part of the timing
            try:
                make()
            except InputError as err:  # e.g. a bad option value: stop before any table is written
                raise InputError(f"method {method!r}: {err}") from None
            except Exception:  # noqa: BLE001 - counted below, when the timed call fails the same way
                pass
            state["warmed"].add(method)
        try:
            start = time.perf_counter()
            ex = make()
            seconds = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - a method failing on one sample is counted, not fatal
            return [_row(index, "failed", method=method, error=_error(where, err))]
        rows = [_row(index, "explained", method=method, seconds=seconds)]
        heat = ex.image_map(0, 0)
        mask = np.asarray(sample.mask, dtype=bool)
        sanity = index < self.sanity_n
        for m in state["metrics"]:
            if m.category == "localisation":
                rows += self._localise(subject, ex, heat, mask, evidence, object_evidence, conflict, m, method,
                                       index, seed, where)
                continue
            if m.category in SANITY_CATEGORIES and not sanity:
                continue
            rows += self._score(subject, ex, heat, mask, m, method, index, seed, where)
        return rows

    def _localise(self, subject: Any, ex: Any, heat: np.ndarray, mask: np.ndarray, evidence: np.ndarray | None,
                  object_evidence: bool, conflict: bool, m: MetricInfo, method: str, index: int, seed: int,
                  where: str) -> list[dict[str, Any]]:
        """A localisation metric against the object (object-evidence samples), against the model's evidence
        (``name@model``, samples that define it) and their difference on conflicting samples (``name@gap``)."""
        rows = self._score(subject, ex, heat, mask, m, method, index, seed, where) if object_evidence else []
        if evidence is None:
            return rows
        at_model = self._score(subject, ex, heat, evidence, m, method, index, seed, where, m.name + AT_MODEL)
        rows += at_model
        parts = evidence_parts(evidence) if m.name != "pointing_game" else []  # one peak cannot hit two parts
        if len(parts) > 1:  # e.g. both objects of a two-object question: does the map cover the weaker one?
            each = [self._score(subject, ex, heat, part, m, method, index, seed, where)[0] for part in parts]
            if all(r["event"] == "score" for r in each):
                rows.append(_row(index, "score", method=method, metric=m.name + AT_WEAKEST,
                                 score=min(r["score"] for r in each)))
        if conflict and object_evidence and rows[0]["event"] == at_model[0]["event"] == "score":
            rows.append(_row(index, "score", method=method, metric=m.name + AT_GAP,
                             score=at_model[0]["score"] - rows[0]["score"]))
        return rows

    def _score(self, subject: Any, ex: Any, heat: np.ndarray, mask: np.ndarray, m: MetricInfo, method: str,
               index: int, seed: int, where: str, name: str | None = None) -> list[dict[str, Any]]:
        import inspect

        opts = dict(self.metric_options.get(m.name, {}))
        try:
            if m.needs_model:
                if "seed" in inspect.signature(m.fn).parameters and "seed" not in opts and \
                        m.category != "randomisation":
                    opts["seed"] = seed
                result = m.fn(subject, ex, **opts)
            else:
                result = m.fn(heat, mask, **opts)
        except Exception as err:  # noqa: BLE001 - counted and reported like a method failure
            return [_row(index, "failed", method=method, metric=m.name,
                         error=_error(f"{where}, metric {m.name}", err))]
        name = name or m.name
        row = _row(index, "score", method=method, metric=name, score=float(getattr(result, "score", result)))
        if hasattr(result, "values") and isinstance(result.values, list):
            row["values"], row["fractions"] = [float(v) for v in result.values], [float(f) for f in result.fractions]
        if hasattr(result, "correlations"):
            row["values"], row["passed"] = [float(v) for v in result.correlations], bool(result.passed)
        extras = [_row(index, "score", method=method, metric=f"{name}:{key}", score=float(value))
                  for key, value in (getattr(result, "extras", None) or {}).items()]
        return [row, *extras]


def _row(index: int, event: str, **fields: Any) -> dict[str, Any]:
    return {"index": index, "event": event, **fields}


def _error(where: str, err: BaseException) -> str:
    return f"{where}: {err.__class__.__name__}: {' '.join(str(err).split())[:300]}"


def reduce_rows(rows: Iterable[dict[str, Any]], methods: list[tuple[str, str]], boot_seed: int | None = None,
                counts: dict[str, int] | None = None) -> tuple[list[MethodStats], int]:
    """(stats per method, samples whose evidence is one object) from the run's rows, in sample order.

    ``boot_seed``: also stream the bootstrap replicates of every score (:mod:`mmlens.evaluation.bootstrap`);
    ``counts``: a dict that receives the numbers of samples with a model-evidence mask (``"model"``) and of
    conflicting samples (``"conflict"``)."""
    from mmlens.evaluation.bootstrap import sample_weights

    stats = {m: MethodStats(m, kind) for m, kind in methods}
    n_loc = 0
    counts = counts if counts is not None else {}
    counts.update(model=0, conflict=0)
    weights: tuple[int, Any] = (-1, None)
    for row in rows:
        event = row["event"]
        if event == "sample":
            n_loc += int(bool(row["object_evidence"]))
            counts["model"] += int(bool(row.get("model_evidence")))
            counts["conflict"] += int(bool(row.get("conflict")))
            continue
        st = stats[row["method"]]
        if event == "failed":
            _fail(st, row["error"])
        elif event == "explained":
            st.seconds.add(row["seconds"])
            st.explained += 1
        elif event == "score":
            name = row["metric"]
            st.score(name).add(row["score"])
            if boot_seed is not None:
                if weights[0] != row["index"]:
                    weights = (row["index"], sample_weights(boot_seed, row["index"]))
                st.boot(name).add(row["score"], weights[1])
            if row["fractions"] is not None:
                st.curve(name).add(row["values"])
                st.fractions.setdefault(name, list(row["fractions"]))
            elif row["passed"] is not None:
                st.curve(name).add(row["values"])
                st.sanity_checked += 1
                st.sanity_passes += int(row["passed"])
    return list(stats.values()), n_loc


def _fail(st: MethodStats, message: str) -> None:
    """:meth:`MethodStats.fail` with the message already formatted by the worker."""
    st.failures += 1
    if not st.first_error:
        st.first_error = message

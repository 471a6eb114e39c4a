"""POPE-style object probing (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language
Models"): ask "is there a X?" about objects that are in the image (truth "yes") and as many that are not
(truth "no"), and score the yes / no answers as a binary classification (positive = "yes").

Negative objects, per image, from the objects absent from it:

- ``random``: drawn at random;
- ``popular``: the most frequent objects of the probed images (ties by name);
- ``adversarial``: the objects that co-occur most often with the image's objects over the probed images.

On ShapesVQA an object is a ``"color shape"`` pair; each image gets up to ``per_image`` present objects
and the same number of negatives. A user JSONL file (:mod:`mmlens.evaluation.pope_data`) lists each image's
objects (negatives then come from the file's other objects), or gives the probes itself: each row's
question with answer ``yes`` or ``no``.

An answer is read as POPE does: its first sentence is "no" if it holds the word "no" or "not", else "yes".

>>> result = run_pope(mmlens.load("demo"), n=50)                  # doctest: +SKIP
>>> result.rows[0]["setting"], round(result.rows[0]["f1"], 3)    # doctest: +SKIP
('random', 0.995)
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmlens.errors import InputError
from mmlens.util.io import atomic_write, check_output_folder
from mmlens.util.limits import MAX_SAMPLES
from mmlens.util.options import check_choice, check_int

NEGATIVES = ("random", "popular", "adversarial")
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
OUTPUT_FILES = ("pope.json", "pope.md", "pope.png")
#: POPE's question for a user file's objects.
POPE_TEMPLATE = "is there a {} in the image?"


@dataclass(frozen=True)
class Probe:
    """One yes / no question about one image: ``truth`` is ``"yes"`` or ``"no"``."""

    image_index: int
    question: str
    truth: str
    object: str | None = None


def parse_yes_no(text: str) -> str:
    """POPE's reading of an answer: "no" if its first sentence holds "no" or "not", else "yes".

    >>> parse_yes_no("No, there is not."), parse_yes_no("yes"), parse_yes_no("a red circle")
    ('no', 'yes', 'yes')
    """
    first = re.split(r"[.!?\n]", text.strip(), maxsplit=1)[0]
    words = re.findall(r"[a-z']+", first.lower())
    return "no" if "no" in words or "not" in words else "yes"


def pope_metrics(truths: Sequence[str], answers: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive = "yes") and the share of "yes" answers.

    A precision or F1 with no positive prediction is 0.

    >>> m = pope_metrics(["yes", "yes", "no", "no"], ["yes", "no", "yes", "no"])
    >>> m["accuracy"], m["precision"], m["recall"], m["yes_ratio"]
    (0.5, 0.5, 0.5, 0.5)
    """
    if len(truths) != len(answers) or not truths:
        raise InputError(f"pope_metrics needs as many answers as truths (got {len(answers)} and {len(truths)}), "
                         "at least one")
    t = np.asarray([x == "yes" for x in truths])
    a = np.asarray([x == "yes" for x in answers])
    tp, fp = int((t & a).sum()), int((~t & a).sum())
    tn, fn = int((~t & ~a).sum()), int((t & ~a).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(t), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / len(t), "n": float(len(t))}


def object_probes(
    objects: Sequence[Sequence[str]],
    negatives: str,
    seed: int = 0,
    per_image: int = 3,
    vocabulary: Sequence[str] | None = None,
    template: str = "is there a {}?",
) -> list[Probe]:
    """POPE probes for images whose objects are ``objects[i]``; negatives come from ``vocabulary`` (default:
    every object of ``objects``), absent from the image.

    >>> objs = [["red circle", "blue square"], ["red circle", "blue square"], ["red circle", "green circle"]]
    >>> [(p.object, p.truth) for p in object_probes(objs, "adversarial", per_image=2) if p.image_index == 2]
    [('red circle', 'yes'), ('blue square', 'no')]
    """
    check_choice("negatives", negatives, NEGATIVES)
    sets = [sorted(set(o)) for o in objects]
    names = sorted(set(vocabulary) if vocabulary is not None else {o for s in sets for o in s})
    freq = Counter(o for s in sets for o in s)
    cooc = Counter((a, b) for s in sets for a in s for b in s if a != b)
    probes = []
    for i, present in enumerate(sets):
        rng = np.random.default_rng([seed, i])
        absent = [o for o in names if o not in present]
        k = min(per_image, len(present), len(absent))
        positives = [present[j] for j in sorted(rng.choice(len(present), k, replace=False))]
        if negatives == "random":
            chosen = [absent[j] for j in sorted(rng.choice(len(absent), k, replace=False))]
        elif negatives == "popular":
            chosen = sorted(absent, key=lambda o: (-freq[o], o))[:k]
        else:
            chosen = sorted(absent, key=lambda o: (-sum(cooc[p, o] for p in present), o))[:k]
        probes += [Probe(i, template.format(o), "yes", o) for o in positives]
        probes += [Probe(i, template.format(o), "no", o) for o in chosen]
    return probes


def shapes_probes(objects: Sequence[Sequence[str]], negatives: str, seed: int = 0, per_image: int = 3) -> list[Probe]:
    """:func:`object_probes` over ShapesVQA's 15 ``"color shape"`` objects, in the demo's wording.

    >>> objs = [["red circle", "blue square"], ["red circle", "blue square"], ["red circle", "green circle"]]
    >>> [(p.object, p.truth) for p in shapes_probes(objs, "adversarial", per_image=2) if p.image_index == 2]
    [('green circle', 'yes'), ('red circle', 'yes'), ('blue square', 'no'), ('blue circle', 'no')]
    """
    from mmlens.data.shapes_vqa import COLORS, SHAPES

    return object_probes(objects, negatives, seed, per_image, [f"{c} {s}" for c in COLORS for s in SHAPES])


@dataclass
class PopeResult:
    """POPE rows (one per negative setting, or one for a data file) with what produced them."""

    model: str
    description: str
    rows: list[dict[str, Any]]
    command: str | None = None
    answers: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_markdown(self) -> str:
        head = f"POPE on {self.description}, model `{self.model}`"
        lines = [head + (f" (command: `{self.command}`)" if self.command else ""), "",
                 "| setting | n | accuracy | precision | recall | F1 | yes-ratio |", "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            values = " | ".join(f"{r[m]:.3f}" for m in METRICS)
            lines.append(f"| {r['setting']} | {int(r['n'])} | {values} |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "description": self.description, "command": self.command, "rows": self.rows,
                "answers": self.answers}

    def plot(self) -> Any:
        """Grouped bars: one group per metric, one bar per setting."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.2))
        width = 0.8 / max(1, len(self.rows))
        for j, r in enumerate(self.rows):
            ax.bar(np.arange(len(METRICS)) + j * width, [r[m] for m in METRICS], width, label=r["setting"])
        ax.set_xticks(np.arange(len(METRICS)) + width * (len(self.rows) - 1) / 2, METRICS)
        ax.set_ylim(0, 1.25)
        ax.set_title(f"POPE: {self.model}", fontsize=9)
        ax.legend(fontsize=8, loc="upper center", ncol=max(1, len(self.rows)), frameon=False)
        fig.tight_layout()
        return fig

    def save(self, out: str | os.PathLike) -> list[Path]:
        """Write pope.json, pope.md and pope.png into the folder ``out`` (each atomically)."""
        import matplotlib.pyplot as plt

        out = check_output_folder(out, "out")
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1)
        paths = [atomic_write(out / "pope.json", lambda t: t.write_text(text), (".json",)),
                 atomic_write(out / "pope.md", lambda t: t.write_text(self.to_markdown()), (".md",))]
        fig = self.plot()
        try:
            paths.append(atomic_write(out / "pope.png", lambda t: fig.savefig(t, dpi=120, format="png"), (".png",)))
        finally:
            plt.close(fig)
        return paths


def _settings(negatives: str | Sequence[str]) -> list[str]:
    items = [x.strip() for x in negatives.split(",")] if isinstance(negatives, str) else list(negatives)
    items = [n for x in items for n in (NEGATIVES if x == "all" else [x])]
    if not items:
        raise InputError(f"negatives is empty: choose from all, {', '.join(NEGATIVES)}")
    return [check_choice("negatives", x, NEGATIVES) for x in dict.fromkeys(items)]


def run_pope(
    subject: Any,
    n: int = 100,
    negatives: str | Sequence[str] = "all",
    seed: int = 0,
    split: str = "standard",
    data: str | os.PathLike | None = None,
    per_image: int = 3,
    out: str | os.PathLike | None = None,
    max_new_tokens: int = 8,
    show_progress: bool | None = None,
    command: str | None = None,
    template: str = POPE_TEMPLATE,
) -> PopeResult:
    """POPE on ``n`` ShapesVQA images (``seed``, ``split``) per negative setting, or on the first ``n`` rows of
    the JSONL ``data`` (:mod:`mmlens.evaluation.pope_data`: images with their objects, probed per setting with
    ``template``, POPE's "is there a {} in the image?" by default, or given yes / no questions). ``subject``: a Subject or a
    model name. Each question is answered once by greedy generation (shared by the settings). ``out``: folder
    for pope.json / .md / .png. Every argument is checked before the model is loaded.
    """
    from mmlens.data.shapes_splits import check_split
    from mmlens.data.shapes_vqa import ShapesVQA
    from mmlens.evaluation.pope_data import read_pope_file
    from mmlens.util.progress import progress

    n = check_int("n", n, 1, MAX_SAMPLES)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    per_image = check_int("per_image", per_image, 1, 15)
    settings = _settings(negatives)
    check_split(split)
    if not isinstance(template, str) or template.count("{}") != 1 or "{" in template.replace("{}", ""):
        raise InputError(f"template {template!r} must hold '{{}}' once (where the object goes), e.g. {POPE_TEMPLATE!r}")
    if out is not None:
        check_output_folder(out, "out")
    data_file = read_pope_file(data, n) if data is not None else None
    if isinstance(subject, str):
        from mmlens.model.loading import load

        subject = load(subject)
    model_name = getattr(subject, "model_id", None) or type(subject.model).__name__
    if data_file is not None:
        image_of = data_file.image
        description = f"{len(data_file)} rows of {data_file.path.name}"
        if data_file.kind == "questions":
            plan = {"file": [Probe(i, r.question, r.answer) for i, r in enumerate(data_file.rows)]}
        else:
            objects = [r.objects for r in data_file.rows]
            plan = {name: object_probes(objects, name, seed, per_image, template=template) for name in settings}
            description += f", up to {per_image} objects each"
    else:
        from mmlens.evaluation.benchmark import shapes_image_size

        samples = list(ShapesVQA(image_size=shapes_image_size(subject), seed=seed, split=split).samples(n))
        image_of = lambda i: samples[i].image
        objects = [[f"{o['color']} {o['shape']}" for o in s.objects] for s in samples]
        plan = {name: shapes_probes(objects, name, seed, per_image) for name in settings}
        description = f"{n} ShapesVQA images (split {split}, seed {seed}), up to {per_image} objects each"
    todo = sorted({(p.image_index, p.question) for ps in plan.values() for p in ps})
    said: dict[tuple[int, str], str] = {}
    image, current = None, -1
    for key in progress(todo, "pope", enabled=show_progress, total=len(todo)):
        if key[0] != current:  # sorted by image: each image is opened once
            image, current = image_of(key[0]), key[0]
        said[key] = subject.generate(image, key[1], max_new_tokens=max_new_tokens).text
    rows_out = []
    for name, probes in plan.items():
        answers = [parse_yes_no(said[p.image_index, p.question]) for p in probes]
        rows_out.append({"setting": name, **pope_metrics([p.truth for p in probes], answers)})
    answers_out = [{"image": i, "question": q, "text": t} for (i, q), t in said.items()]
    result = PopeResult(str(model_name), description, rows_out, command, answers_out)
    if out is not None:
        result.save(out)
    return result

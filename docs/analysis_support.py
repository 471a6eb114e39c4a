"""Which analysis runs on which family: every public analysis entry point (beyond the attribution methods of the
README's family x method table) and every CLI command, run with small settings on every family's tiny model; the
table is written to docs/ANALYSES.md.

    PYTHONPATH=src python docs/analysis_support.py            # rewrites docs/ANALYSES.md (API and CLI tables)
    PYTHONPATH=src python docs/analysis_support.py --api      # only the API sweep, printed (no file written)
    PYTHONPATH=src python docs/analysis_support.py --check    # exit 1 when docs/ANALYSES.md is out of date

A cell is "yes" when the call returned with no hook left behind (for the CLI: exit code 0 and no traceback),
"refused: <the one-line InputError>" (CLI: exit code 2 with one ``error:`` line), else "CRASH: <exception type
and first line>" (CLI: any other exit code, a traceback, or a multi-line error): a bug to fix.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import mmlens
from mmlens.layer.attention_knockout import attention_knockout
from mmlens.layer.causal_trace import causal_trace
from mmlens.layer.heads import head_ablation, head_image_share
from mmlens.layer.logit_lens import logit_lens
from mmlens.neuron.dataset import neuron_specificity, top_activating_patches
from mmlens.neuron.scores import ablate_neurons, neuron_scores
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_dual import DUAL_FAMILIES, tiny_dual_model_and_processor, tiny_dual_subject
from mmlens.testing.tiny_models import FAMILIES, tiny_images, tiny_model_and_processor, tiny_video
from mmlens.token.pruning import pruning_curve

COLUMNS = (*FAMILIES, *DUAL_FAMILIES)
DOC = Path(__file__).resolve().parent / "ANALYSES.md"
HOOK = "lm.blocks.0.resid_post"
DUAL_HOOK = "vision.blocks.0.resid_post"  # the hook point the rows that name one use on a dual encoder


class Ctx:
    """One family's subject, inputs and scratch folder, with the shared intermediate results."""

    def __init__(self, family: str, tmp: Path) -> None:
        self.family, self.tmp = family, tmp
        self.dual = family in DUAL_FAMILIES
        self.subject = tiny_dual_subject(family) if self.dual else tiny_subject(family)
        self.images = tiny_images("llava" if self.dual else family, n=1)
        self.prompt, self.answer = ("a red cat", None) if self.dual else ("what color is the cat ?", "red cat")
        self.samples = [(im, self.prompt, self.answer) for im in tiny_images(
            "llava" if self.dual else family, n=2, seed=1)]
        self.hook = DUAL_HOOK if self.dual else HOOK  # a dual encoder has no language model
        self._cache: dict[str, Any] = {}

    def video(self):
        """A 3-frame video (of a video family's processor size; a non-video family refuses it in one line)."""
        from mmlens.adapters.base import video_families

        return tiny_video(self.family if self.family in video_families() else "qwen2_vl", 3)

    def batch(self):
        return self.subject.prepare(self.images, self.prompt, answer=self.answer)

    def explanation(self):
        if "ex" not in self._cache:
            self._cache["ex"] = mmlens.explain(self.subject, self.images, self.prompt, method="saliency",
                                               answer=self.answer)
        return self._cache["ex"]

    def sae(self):
        if "sae" not in self._cache:
            acts = []
            for im, prompt, answer in self.samples:
                with self.subject.trace() as tr:
                    tr.capture(self.hook, reduce=lambda h: h[0].detach())
                    self.subject.forward(self.subject.prepare(im, prompt, answer=answer))
                acts.append(tr[self.hook])
            data = torch.cat(acts).float()
            self._cache["sae"] = mmlens.train_sae([data], d_sae=8, k=2, batch_size=64, hook_name=self.hook,
                                                  show_progress=False).sae
        return self._cache["sae"]

    def tower(self):
        from mmlens.embedding import tower

        return tower(self.subject)


def _grid(result: Any, ctx: Ctx) -> None:
    result.save(ctx.tmp / "grid.png")


def _tuned(ctx: Ctx) -> None:
    lens = mmlens.train_tuned_lens(ctx.subject, ctx.samples, show=False)
    mmlens.lens_kl(ctx.subject, ctx.samples[:1], lens)
    logit_lens(ctx.subject, ctx.batch(), tuned=lens)


def _steering(ctx: Ctx) -> None:
    other = ctx.subject.prepare(ctx.samples[0][0], ctx.prompt, answer=ctx.answer)
    vector = mmlens.steering_vector(ctx.subject, [ctx.batch()], [other], layer=0, show=False)
    mmlens.generate_with(ctx.subject, ctx.images, ctx.prompt, max_new_tokens=2, steering=mmlens.Steering(vector, 1.0))


def _collect(ctx: Ctx) -> None:
    mmlens.collect_activations(ctx.subject, ctx.hook, "image", ctx.tmp / "acts", n=2, show_progress=False)


def _textspan(ctx: Ctx) -> None:
    from mmlens.embedding import text_bank

    t = ctx.tower()
    dec = mmlens.decompose_embedding(t, ctx.images + ctx.images, show=False)
    mmlens.text_spans(dec, text_bank(t, ["red", "blue", "a cat", "a dog"], show=False), n_texts=2)


def _gap(ctx: Ctx) -> None:
    t = ctx.tower()
    mmlens.modality_gap(t.encode_images(ctx.images * 2, show=False), t.encode_texts(["a red cat", "a dog"]))


def _cbm(ctx: Ctx) -> None:
    t = ctx.tower()
    words = ["red", "blue", "cat", "dog"]
    mmlens.train_cbm(t.encode_images(ctx.images * 2, show=False), [0, 1], ["cat", "dog"], words,
                     t.encode_texts(words), steps=20)


def _metric(name: str, **options: Any) -> Callable[..., None]:
    def run(ctx: Ctx | None, explanation: Any = None, subject: Any = None) -> None:
        import importlib

        module = {"deletion": "deletion_insertion", "insertion": "deletion_insertion"}.get(name, name)
        fn = getattr(importlib.import_module(f"mmlens.evaluation.metrics.{module}"), name)
        fn(subject or ctx.subject, explanation or ctx.explanation(), **options)

    return run


VQ = "what is this ?"
#: the video rows: (subject, video, answer) -> None
VIDEO: dict[str, Callable[..., Any]] = {
    "logit_lens": lambda s, v, a: logit_lens(s, b := s.prepare(v, VQ, answer=a)).image_map(b, 0),
    "causal_trace": lambda s, v, a: causal_trace(s, s.prepare(v, VQ, answer=a), layers=[0], batch_size=64),
    "attention_knockout": lambda s, v, a: attention_knockout(s, s.prepare(v, VQ, answer=a)),
    "token_pruning": lambda s, v, a: pruning_curve(s, s.prepare(v, VQ, answer=a), ratios=(0.0, 0.5), after_layer=1),
    "grounding_signals": lambda s, v, a: mmlens.generate_explained(s, v, VQ, max_new_tokens=2),
    "vcd": lambda s, v, a: mmlens.generate_with(s, v, VQ, max_new_tokens=2, vcd=mmlens.VCD()),
    "deletion": lambda s, v, a: _metric("deletion", cells=2, steps=2)(
        None, mmlens.explain(s, v, VQ, method="saliency", answer=a), s),
}


#: every row of the API table: (name, what it calls, the call)
ANALYSES: tuple[tuple[str, str, Callable[[Ctx], None]], ...] = (
    ("logit_lens", "layer.logit_lens + GridResult.save",
     lambda ctx: _grid(logit_lens(ctx.subject, ctx.batch(), top_k=2), ctx)),
    ("logit_lens_image_map", "LogitLens.image_map",
     lambda ctx: logit_lens(ctx.subject, b := ctx.batch(), top_k=1).image_map(b, image=0)),
    ("tuned_lens", "train_tuned_lens, lens_kl, logit_lens(tuned=)", _tuned),
    ("causal_trace", "layer.causal_trace",
     lambda ctx: _grid(causal_trace(ctx.subject, ctx.batch(), layers=[0], batch_size=64), ctx)),
    ("attention_knockout", "layer.attention_knockout",
     lambda ctx: _grid(attention_knockout(ctx.subject, ctx.batch()), ctx)),
    ("head_image_share", "layer.heads.head_image_share",
     lambda ctx: _grid(head_image_share(ctx.subject, ctx.batch()), ctx)),
    ("head_ablation", "layer.heads.head_ablation",
     lambda ctx: _grid(head_ablation(ctx.subject, ctx.batch(), layers=[0]), ctx)),
    ("neuron_scores", "neuron.scores.neuron_scores",
     lambda ctx: neuron_scores(ctx.subject, ctx.batch(), layers=[0]).top(3)),
    ("ablate_neurons", "neuron.scores.ablate_neurons", lambda ctx: ablate_neurons(ctx.subject, ctx.batch(), [(0, 0)])),
    ("top_patches", "neuron.dataset.top_activating_patches",
     lambda ctx: top_activating_patches(ctx.subject, ctx.samples, layer=0, neuron=0, k=2, show_progress=False)),
    ("neuron_specificity", "neuron.dataset.neuron_specificity",
     lambda ctx: neuron_specificity(ctx.subject, ctx.samples, layer=0, show_progress=False)),
    ("token_pruning", "token.pruning.pruning_curve",
     lambda ctx: pruning_curve(ctx.subject, ctx.batch(), ratios=(0.0, 0.5), after_layer=1)),
    ("grounding_signals", "generate_explained + html",
     lambda ctx: mmlens.generate_explained(ctx.subject, ctx.images, ctx.prompt, max_new_tokens=2).html()),
    ("vcd", "generate_with(vcd=VCD())",
     lambda ctx: mmlens.generate_with(ctx.subject, ctx.images, ctx.prompt, max_new_tokens=2, vcd=mmlens.VCD())),
    ("pai", "generate_with(pai=PAI(0.5))",
     lambda ctx: mmlens.generate_with(ctx.subject, ctx.images, ctx.prompt, max_new_tokens=2, pai=mmlens.PAI(0.5))),
    ("steering", "steering_vector + generate_with(steering=)", _steering),
    ("collect_activations", "collect_activations (ShapesVQA, image tokens)", _collect),
    ("sae_ce_recovered", "train_sae on a hook point + ce_recovered",
     lambda ctx: mmlens.ce_recovered(ctx.subject, ctx.sae(), ctx.samples[:1], ctx.hook, show_progress=False)),
    ("sae_generate_with_feature", "generate_with_feature",
     lambda ctx: mmlens.generate_with_feature(ctx.subject, ctx.images, ctx.prompt, ctx.sae(), 0, max_new_tokens=2)),
    ("decompose_embedding", "decompose_embedding",
     lambda ctx: mmlens.decompose_embedding(ctx.subject, ctx.images, show=False)),
    ("text_spans", "text_bank + text_spans", _textspan),
    ("splice", "splice",
     lambda ctx: mmlens.splice(ctx.subject, ctx.images * 2, ["red", "blue", "cat", "dog"], steps=20)),
    ("modality_gap", "tower encode_images / encode_texts + modality_gap", _gap),
    ("concept_bottleneck", "train_cbm", _cbm),
    ("zero_shot", "zero_shot", lambda ctx: mmlens.zero_shot(ctx.subject, ctx.images[0], ["a red cat", "a blue dog"])),
    ("deletion", "metrics.deletion (saliency map)", _metric("deletion", cells=2, steps=2)),
    ("insertion", "metrics.insertion (saliency map)", _metric("insertion", cells=2, steps=2)),
    ("road", "metrics.road (saliency map)", _metric("road", fractions=(0.5,))),
    ("randomisation", "metrics.randomisation (saliency map)", _metric("randomisation", max_steps=2)),
    ("max_sensitivity", "metrics.max_sensitivity (saliency map)", _metric("max_sensitivity", n=1)),
    *((f"{name} (video)", f"{name} of a 3-frame video (other families refuse videos)",
       lambda ctx, call=call: call(ctx.subject, ctx.video(), None if ctx.dual else "red"))
      for name, call in VIDEO.items()),
)


def outcome(call: Callable[[], Any], model: torch.nn.Module | None = None) -> str:
    """"yes", "refused: <line>" or "CRASH: <type>: <first line>" for one call."""
    try:
        call()
    except mmlens.InputError as err:
        lines = str(err).strip().splitlines()
        if len(lines) != 1:
            return f"CRASH: a {len(lines)}-line InputError: {lines[0] if lines else ''}"
        return f"refused: {lines[0]}"
    except Exception as err:  # noqa: BLE001 - the sweep records every failure
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return f"CRASH: {type(err).__name__}: {first}"
    if model is not None and mmlens.count_hooks(model):
        return "CRASH: hooks left on the model"
    return "yes"


#: every row of the CLI table: (name, arguments; {m} = the saved model folder, {i} = an image, {v} = a folder of 3
#: video frames, {o} = a scratch folder)
COMMANDS: tuple[tuple[str, str], ...] = (
    ("explain", "explain {i} {p} -m {m} --method saliency --answer red -o {o}/ex.png"),
    ("explain --video", "explain {v} {p} -m {m} --video --method saliency --answer red -o {o}/video.png"),
    ("lens", "lens {i} {p} -m {m} --answer red -o {o}/lens.png"),
    ("trace", "trace {i} {p} -m {m} --answer red --batch-size 64 -o {o}/trace.png"),
    ("knockout", "knockout {i} {p} -m {m} --answer red -o {o}/knockout.png"),
    ("generate", "generate {i} {p} -m {m} --max-new-tokens 2 -o {o}/gen.html"),
    ("generate --vcd-alpha --pai-alpha", ("generate {i} {p} -m {m} --max-new-tokens 2 --vcd-alpha 1 "
                                          "--pai-alpha 0.5 -o {o}/gen.json")),
    ("tuned-lens", "tuned-lens {o}/tuned.safetensors -m {m} --n 2"),
    ("pope", "pope -m {m} --n 2 --per-image 1 -o {o}/pope"),
    ("probe", "probe -m {m} --point " + HOOK + " --n 12 --seeds 1 -o {o}/probe"),
    ("benchmark", "benchmark -m {m} --methods saliency --n 2 --sanity-n 1 --cells 2 -o {o}/bench"),
    ("explain-dataset", "explain-dataset --method saliency -o {o}/ed -m {m} --n 2 --sheet 2"),
    ("embed decompose", "embed decompose -m {m} --shapes 2 -o {o}/dec.png"),
    ("embed textspan", "embed textspan -m {m} --shapes 2 --n-texts 2 -o {o}/ts.png"),
    ("embed splice", "embed splice -m {m} --shapes 2 -o {o}/splice.png"),
    ("embed gap", "embed gap -m {m} --shapes 4 -o {o}/gap.png"),
    ("embed cbm", "embed cbm -m {m} --n 6 -o {o}/cbm.png"),
    ("sae train", "sae train -m {m} --hook " + HOOK + " --n 2 --eval-n 1 --d-sae 8 --k 2 -o {o}/sae"),
    ("sae inspect", "sae inspect {o}/sae -m {m} --n 2 --top 2 -o {o}/sae_inspect.png"),
    ("dataset-stats neurons", "dataset-stats neurons --layer 0 --neuron 0 -o {o}/neurons -m {m} --n 2 --k 2"),
    ("dataset-stats heads", "dataset-stats heads -o {o}/heads -m {m} --n 2"),
    ("dataset-stats pruning", "dataset-stats pruning -o {o}/pruning -m {m} --n 2 --after-layer 1"),
)


def cli_outcome(args: list[str]) -> str:
    """Run one command in-process; "yes" (exit 0), "refused: <line>" (exit 2, one error line), else "CRASH: ..."."""
    from typer.testing import CliRunner

    from mmlens.cli import app

    result = CliRunner().invoke(app, args)
    out = result.output
    errors = [ln.split("error:", 1)[1].strip() for ln in out.splitlines() if ln.startswith("error:")]
    if "Traceback" in out or result.exit_code not in (0, 2) or (result.exit_code == 2 and len(errors) != 1):
        first = errors[0] if errors else (out.strip().splitlines() or [""])[-1]
        return f"CRASH: exit {result.exit_code}: {first[:200]}"
    return "yes" if result.exit_code == 0 else f"refused: {errors[0]}"


def generic(cell: str, family: str, folder: Path) -> str:
    """``cell`` with the family's name, the model's id and the scratch folder written the same in every column."""
    cell = cell.replace(str(folder / "model"), "MODEL").replace(str(folder), "OUT").replace(f"tiny-{family}", "MODEL")
    return re.sub(rf"\b{re.escape(family)}\b", "FAMILY", cell)


def save_tiny(family: str, folder: Path) -> None:
    """The family's tiny model and processor, saved as a local model folder (safetensors)."""
    build = tiny_dual_model_and_processor if family in DUAL_FAMILIES else tiny_model_and_processor
    model, processor = build(family)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def api_column(family: str, log: bool = True) -> dict[str, str]:
    """Every API row's cell for one family."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Ctx(family, Path(tmp))
        cells = {}
        for name, _, call in ANALYSES:
            cells[name] = generic(outcome(lambda call=call: call(ctx), ctx.subject.model), family, Path(tmp))
            if log:
                print(f"{family:16s} {name:26s} {cells[name]}", file=sys.stderr, flush=True)
    return cells


def cli_column(family: str, log: bool = True) -> dict[str, str]:
    """Every CLI row's cell for one family."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_tiny(family, root / "model")
        image = root / "image.png"
        tiny_images("llava" if family in DUAL_FAMILIES else family)[0].save(image)
        from mmlens.adapters.base import video_families

        (root / "frames").mkdir()
        for k, frame in enumerate(tiny_video(family if family in video_families() else "qwen2_vl", 3).frames):
            frame.save(root / "frames" / f"{k}.png")
        prompt = "a red cat" if family in DUAL_FAMILIES else "what color is the cat ?"
        cells = {}
        for name, line in COMMANDS:
            if family in DUAL_FAMILIES:  # a dual encoder's answer is the match, its hook points are the towers'
                line = line.replace(" --answer red", "").replace(HOOK, DUAL_HOOK)
            args = [a.format(m=root / "model", i=image, v=root / "frames", o=root, p="PROMPT") for a in line.split()]
            cells[name] = generic(cli_outcome([prompt if a == "PROMPT" else a for a in args]), family, root)
            if log:
                print(f"{family:16s} {name:34s} {cells[name]}", file=sys.stderr, flush=True)
    return cells


def table(rows: list[str], cells: dict[tuple[str, str], str], label: str) -> str:
    """Markdown: one row per analysis, one column per family, notes numbered under the table."""
    notes = sorted({c for c in cells.values() if c != "yes"})
    out = [f"| {label} | " + " | ".join(f"`{f}`" for f in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        marks = ["yes" if cells[row, f] == "yes" else f"no ({notes.index(cells[row, f]) + 1})" for f in COLUMNS]
        out.append(f"| `{row}` | " + " | ".join(marks) + " |")
    return "\n".join(out + ([""] + [f"({i}) {n}" for i, n in enumerate(notes, 1)] if notes else []))


def document() -> str:
    api, cli = {}, {}
    for family in COLUMNS:
        api.update({(row, family): c for row, c in api_column(family).items()})
        cli.update({(row, family): c for row, c in cli_column(family).items()})
    calls = "\n".join(f"- `{name}`: {what}" for name, what, _ in ANALYSES)
    commands = "\n".join(f"- `{name}`: `mmlens {line.format(m='MODEL', i='IMAGE', v='FRAMES', o='OUT', p='PROMPT')}`"
                         for name, line in COMMANDS)
    return f"""# Analyses x families

Generated by `PYTHONPATH=src python docs/analysis_support.py` (do not edit by hand): every public analysis entry point
and every CLI command, run with small settings on every family's tiny random model (`mmlens.testing`). "yes": it
ran and left no hook behind; "no (k)": it refused in one line, note k (the attribution methods have their own
table in the README). A crash (an exception other than the one-line `InputError`, or a CLI exit code other than
0 / 2) is a bug: the script names it, and the table ships without any. In the notes, FAMILY stands for the
column's family, MODEL for the model (its id or folder) and OUT for the scratch folder.

Not in the tables: `tracin` and `probe_checkpoints` / `mmlens probe --checkpoints` read the training checkpoints
that `mmlens.demo.train` writes (the demo's), `run_planted` / `mmlens benchmark --suite planted` the planted demo
variants, `mmlens serve` is the web page (tests/test_web.py drives its panels); `pointing_game`, `topk_iou`,
`sparseness` and `energy_in_mask` score arrays, with no model.

## Python API

{table([a[0] for a in ANALYSES], api, "analysis")}

What each row calls:

{calls}

## Command line

{table([c[0] for c in COMMANDS], cli, "command")}

The commands, with `MODEL` a saved tiny model folder (on a dual encoder without `--answer red`, and with
`--hook` / `--point` {DUAL_HOOK}):

{commands}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare with docs/ANALYSES.md")
    ap.add_argument("--api", action="store_true", help="only run the API sweep and print it")
    ap.add_argument("--cli", action="store_true", help="only run the CLI sweep and print it")
    ap.add_argument("--families", default=",".join(COLUMNS), help="with --api / --cli: these families only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.api or args.cli:
        column = api_column if args.api else cli_column
        cells = {f: column(f, log=False) for f in args.families.split(",")}
        crashes = [(f, r, c) for f, col in cells.items() for r, c in col.items() if c.startswith("CRASH")]
        for f, r, c in crashes:
            print(f"{f:16s} {r:34s} {c}")
        return 1 if crashes else 0
    text = document()
    if args.check:
        return 0 if DOC.exists() and DOC.read_text(encoding="utf-8") == text else 1
    DOC.write_text(text, encoding="utf-8")
    return 1 if "CRASH" in text else 0


if __name__ == "__main__":
    sys.exit(main())

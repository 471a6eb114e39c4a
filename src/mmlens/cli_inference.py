"""CLI commands of the inference methods: ``mmlens generate`` (the answer coloured by a grounding signal, with
optional mitigations) and ``mmlens tuned-lens`` (train translators for ``mmlens lens --tuned``)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mmlens.cli import _image, _layers, app, console
from mmlens.cli_options import ImageArg, ModelOpt, PromptArg


@app.command("generate")
def generate_cmd(
    image: str = ImageArg,
    prompt: str = PromptArg,
    model: str = ModelOpt,
    signal: str = typer.Option("visual_reliance", "--signal", help="colour the answer by this grounding signal"),
    distortion: str = typer.Option("noise", "--distortion", help="noise | blur | remove (for visual reliance, VCD)"),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens"),
    vcd_alpha: float | None = typer.Option(None, "--vcd-alpha", help="visual contrastive decoding strength (>= 0)"),
    vcd_beta: float = typer.Option(0.1, "--vcd-beta", help="VCD plausibility cut-off, in (0, 1]"),
    pai_alpha: float | None = typer.Option(None, "--pai-alpha", help="attention to image tokens x (1 + alpha)"),
    pai_layers: str | None = typer.Option(None, "--pai-layers", help="comma-separated layers for --pai-alpha"),
    out: Path | None = typer.Option(None, "--out", "-o", help="report: .html (coloured answer) or .json"),
) -> None:
    """Generate an answer and colour each token by a grounding signal (green = grounded end)."""
    import mmlens
    from mmlens.inference.decoding import PAI, VCD, generate_with
    from mmlens.inference.result import SIGNALS
    from mmlens.util.io import check_output
    from mmlens.util.options import check_choice

    check_choice("--signal", signal, list(SIGNALS))
    vcd = VCD(vcd_alpha, vcd_beta, distortion) if vcd_alpha is not None else None
    pai = PAI(pai_alpha, _layers(pai_layers)) if pai_alpha is not None else None
    if out is not None:
        check_output(out, (".html", ".json"), "--out")
    _image(image)
    subject = mmlens.load(model)
    answer = None
    if vcd is not None or pai is not None:
        answer = generate_with(subject, image, prompt, max_new_tokens, vcd=vcd, pai=pai).token_ids.tolist()
        if not answer:
            console.print("the model stopped at once: the answer is empty", highlight=False)
            return
    result = mmlens.generate_explained(subject, image, prompt, max_new_tokens, answer=answer, distortion=distortion)
    typer.echo(f"{signal}: green = grounded end, red = the other", err=True)
    from rich.console import Console

    Console(force_terminal=sys.stdout.isatty() or None).print(result.rich_text(signal))
    for name, values in result.signals.items():
        console.print(f"{name}: " + " ".join(f"{v:.3g}" for v in values), highlight=False, markup=False)
    if out is not None:
        print(result.save(out, signal=signal))


@app.command("tuned-lens")
def tuned_lens_cmd(
    out: Path = typer.Argument(..., help=".safetensors file to write"),
    model: str = ModelOpt,
    n: int = typer.Option(300, "--n", help="ShapesVQA training samples (streamed)"),
    seed: int = typer.Option(1000, "--seed", help="ShapesVQA seed of the training samples (held-out: 0..9)"),
    image_size: int = typer.Option(64, "--image-size"),
    lr: float = typer.Option(3e-3, "--lr"),
) -> None:
    """Train a tuned lens (per-layer affine translators) on ShapesVQA; use it with `mmlens lens --tuned`."""
    import mmlens
    from mmlens.data import ShapesVQA
    from mmlens.util.io import check_output
    from mmlens.util.limits import MAX_SAMPLES
    from mmlens.util.options import check_int

    check_int("--n", n, 1, MAX_SAMPLES)
    check_output(out, (".safetensors",), "out")
    data = ShapesVQA(image_size=image_size, seed=check_int("--seed", seed, 0, 2**63 - 1))
    subject = mmlens.load(model)
    lens = mmlens.train_tuned_lens(subject, list(data.samples(n)), lr=lr, show=sys.stderr.isatty())
    print(lens.save(out))

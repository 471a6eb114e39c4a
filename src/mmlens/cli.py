"""The ``mmlens`` command line (typer + rich). Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer >= 0.20 carries its own copy of click; its exceptions are the ones raised
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as click_errors

from mmlens.cli_options import AnswerOpt, ImageArg, LayersOpt, ModelOpt, PromptArg, png_out
from mmlens.errors import MMLensError

_STATE = {"debug": False}


class _Boundary(TyperGroup):
    """The CLI's one error boundary: every failure leaves as one ``error:`` line on stderr.

    Anticipated failures (bad input, usage errors, file-system errors, running out of memory) exit with code 2;
    anything else exits with 1 and names the file under the system temp folder that holds the full traceback
    (``mmlens --debug ...`` prints it too).
    """

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        _STATE["debug"] = os.environ.get("MMLENS_DEBUG", "") not in ("", "0")
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except click_errors.NoArgsIsHelpError as err:
            err.show()
            code = err.exit_code
        except BaseException as err:  # noqa: BLE001 - this is the boundary
            code = _report(err)
        else:
            code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _say(message: str) -> None:
    """One ``error:`` line on stderr (newlines in the message are folded; no rich markup is interpreted)."""
    typer.echo(typer.style("error:", fg="red", bold=True) + " " + " ".join(str(message).split()), err=True)


def _report(err: BaseException) -> int:
    """Print ``err`` as one line and return the exit code."""
    if isinstance(err, SystemExit):
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    if isinstance(err, MMLensError):
        _say(str(err))
        return 2
    if isinstance(err, click_errors.UsageError):
        names = []  # the subcommand's whole path (``dataset-stats neurons``), not only its last word
        ctx = err.ctx
        while ctx is not None and ctx.parent is not None:
            names.insert(0, ctx.info_name)
            ctx = ctx.parent
        command = " ".join(["mmlens", *names, "--help"])
        _say(f"{err.format_message()} — run `{command}` for the arguments and options")
        return 2
    if isinstance(err, click_errors.ClickException):
        _say(err.format_message())
        return err.exit_code
    if isinstance(err, (KeyboardInterrupt, typer.Abort)):
        _say("interrupted — no output was written")
        return 130
    if isinstance(err, MemoryError):
        _say("out of memory — use a smaller image, fewer steps / samples, or a machine with more memory")
        return 2
    if isinstance(err, OSError) and (err.filename is not None or err.errno in (errno.ENOSPC, errno.EDQUOT)):
        where = f" {str(err.filename)!r}" if err.filename is not None else ""
        fix = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else \
            "check the path and its permissions"
        _say(f"cannot use{where} ({err.strerror or type(err).__name__}) — {fix}")
        return 2
    return _unexpected(err)


def _unexpected(err: BaseException) -> int:
    """A bug: one line naming the file with the full traceback (also printed with ``--debug``)."""
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        fd, path = tempfile.mkstemp(prefix="mmlens-error-", suffix=".txt", dir=tempfile.gettempdir())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"mmlens {' '.join(sys.argv[1:])}\n\n{trace}")
        saved = f"full traceback in {path}"
    except OSError:
        saved = "the traceback could not be saved"
    if _STATE["debug"]:
        typer.echo(trace.rstrip(), err=True)
    first = " ".join(str(err).split())[:200]
    _say(f"unexpected {type(err).__name__}{': ' + first if first else ''} — this is a bug in mmlens; {saved} "
         "(rerun with `mmlens --debug ...` to print it); please report it")
    return 1


app = typer.Typer(cls=_Boundary, add_completion=False, no_args_is_help=True,
                  help="Explain and interpret multimodal LLMs.", pretty_exceptions_enable=False)
console = Console(stderr=True)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="print the full traceback of an unexpected error")) -> None:
    """Explain and interpret multimodal LLMs."""
    _STATE["debug"] = _STATE["debug"] or debug


def _note(note: str | None) -> None:
    if note:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


def _layers(text: str | None) -> list[int] | None:
    from mmlens.errors import InputError

    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--layers {text!r}: pass comma-separated integers, e.g. 0,1,2") from None


def _outputs(out: Path, default_stem: str) -> tuple[Path, Path]:
    """(png, json) paths for ``--out`` (a .png path, or an existing folder); both checked before any work."""
    from mmlens.errors import InputError
    from mmlens.util.io import check_output

    if out.suffix.lower() == ".png":
        png = out
    elif out.is_dir():
        png = out / f"{default_stem}.png"
    else:
        raise InputError(f"--out {str(out)!r}: pass a .png path (a .json is written beside it) or a folder")
    return check_output(png, (".png",), "--out"), check_output(png.with_suffix(".json"), (".json",), "--out")


def _image(image: str) -> None:
    """Read the image once before the model is loaded: a bad image fails fast; conversions become notes."""
    from mmlens.model.images import to_rgb

    _note(to_rgb(image)[1])


def _batch(model: str, image: str, prompt: str, answer: str | None):
    import mmlens

    _image(image)
    subject = mmlens.load(model)
    batch = subject.prepare(image, prompt, answer=answer) if answer is not None else subject.generate(image, prompt).batch
    console.print(f"answer: [bold]{escape(batch.answer)}[/]", highlight=False, soft_wrap=True)
    return subject, batch


def _write(result: Any, png: Path, js: Path) -> None:
    """Both files or neither: the .json is removed again if the .png cannot be written."""
    existed = js.exists()
    result.save(js)
    try:
        result.save(png)
    except BaseException:
        if not existed:
            js.unlink(missing_ok=True)
        raise
    print(png)
    print(js)


@app.command("methods")
def methods_cmd() -> None:
    """List every method as the survey's tree, with its access tier."""
    from rich.tree import Tree

    from mmlens.catalog import methods

    tree = Tree("mmlens methods (survey leaf / method \\[access tier])")
    nodes: dict[str, Any] = {}
    for m in methods():
        node = tree
        path = ""
        for part in m.leaf.split("/"):
            path = f"{path}/{part}"
            if path not in nodes:
                nodes[path] = node.add(part)
            node = nodes[path]
        node.add(f"[bold]{m.name}[/] [dim]\\[{m.tier}][/] {m.summary}")
    Console().print(tree)


@app.command("explain")
def explain_cmd(
    image: str = ImageArg,
    prompt: str = PromptArg,
    model: str = ModelOpt,
    method: str = typer.Option("relevancy", "--method", help="attribution method (see `mmlens methods`)"),
    target: str | None = typer.Option(None, "--target", help="answer word/phrase, 'answer', or 'red - blue' (default: every token)"),
    answer: str | None = AnswerOpt,
    option: list[str] = typer.Option([], "--option", "-O", help="method option as key=value (repeatable), e.g. -O steps=32"),
    out: Path = typer.Option(Path("explanation.png"), "--out", "-o", help=".png, .html, .json or .safetensors"),
    video: bool = typer.Option(False, "--video", help="IMAGE is a video: an animated GIF or a folder of frames "
                               "(a .png --out is then the frame strip)"),
    fps: float | None = typer.Option(None, "--fps", help="frames per second of --video (default: the GIF's, else 1)"),
) -> None:
    """Explain which pixels (of an image or of each video frame) and prompt words made each answer token."""
    import mmlens
    from mmlens.catalog import get_method
    from mmlens.errors import InputError
    from mmlens.explain import _check_options
    from mmlens.results.explanation import SUFFIXES
    from mmlens.util.io import check_output
    from mmlens.util.limits import check_option_ranges

    check_output(out, SUFFIXES, "--out")
    info = get_method(method)  # unknown methods and options fail before the model loads
    if info.kind != "attribution":
        article = "an" if info.kind[:1].lower() in "aeiou" else "a"
        raise InputError(f"--method {method!r} is {article} {info.kind} method, not an attribution: see "
                         "`mmlens methods`")
    options = dict(_option(o) for o in option)
    _check_options(info, options)
    check_option_ranges(options)
    if not video:
        _image(image)
    visual = mmlens.Video.load(image, fps) if video else image
    subject = mmlens.load(model)
    ex = mmlens.explain(subject, visual, prompt, method=method, target=target, answer=answer, **options)
    console.print(f"answer: [bold]{escape(ex.answer)}[/]  targets: {escape(', '.join(ex.targets))}", highlight=False,
                  soft_wrap=True)
    print(ex.save_strip(out) if video and out.suffix.lower() == ".png" else ex.save(out))


def _option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as int, float, bool or string."""
    from mmlens.errors import InputError

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--option {text!r}: pass key=value, e.g. --option steps=32")
    for cast in (int, float):
        try:
            return key.strip(), cast(raw)
        except ValueError:
            pass
    return key.strip(), {"true": True, "false": False}.get(raw.lower(), raw)


@app.command("lens")
def lens_cmd(
    image: str = ImageArg,
    prompt: str = PromptArg,
    model: str = ModelOpt,
    answer: str | None = AnswerOpt,
    target: str | None = typer.Option(None, "--target", help="word whose probability to track (default: first answer token)"),
    layers: str | None = LayersOpt,
    tuned: Path | None = typer.Option(None, "--tuned", help="tuned-lens .safetensors for this model (mmlens tuned-lens)"),
    out: Path = png_out("lens.png"),
) -> None:
    """Logit lens (or, with --tuned, the tuned lens) over layers x positions (image tokens included)."""
    from mmlens.inference.tuned_lens import TunedLens
    from mmlens.layer.logit_lens import logit_lens

    png, js = _outputs(out, "lens")
    chosen = _layers(layers)
    lens = TunedLens.load(tuned) if tuned is not None else None  # a bad file fails before the model loads
    subject, batch = _batch(model, image, prompt, answer)
    if lens is not None:
        lens.check(subject, f"--tuned {str(tuned)!r}")
    _write(logit_lens(subject, batch, target=target, layers=chosen, tuned=lens), png, js)


@app.command("trace")
def trace_cmd(
    image: str = ImageArg,
    prompt: str = PromptArg,
    model: str = ModelOpt,
    answer: str | None = AnswerOpt,
    component: str = typer.Option("resid", "--component", help="resid | attn | mlp"),
    corrupt_image: str | None = typer.Option(None, "--corrupt-image", help="corrupt with this image instead of noise"),
    noise_scale: float = typer.Option(3.0, "--noise-scale"),
    batch_size: int = typer.Option(32, "--batch-size"),
    out: Path = png_out("trace.png"),
) -> None:
    """Causal tracing: restore clean activations per (layer, position) in a corrupted run."""
    from mmlens.layer.causal_trace import causal_trace
    from mmlens.util.limits import check_option_ranges

    png, js = _outputs(out, "trace")
    check_option_ranges({"batch_size": batch_size})
    if corrupt_image is not None:
        _image(str(corrupt_image))
    subject, batch = _batch(model, image, prompt, answer)
    kwargs = {"corrupt": "image", "corrupt_with": corrupt_image} if corrupt_image else {"noise_scale": noise_scale}
    grid = causal_trace(subject, batch, component=component, batch_size=batch_size,
                        show_progress=sys.stderr.isatty(), **kwargs)
    _write(grid, png, js)


@app.command("knockout")
def knockout_cmd(
    image: str = ImageArg,
    prompt: str = PromptArg,
    model: str = ModelOpt,
    answer: str | None = AnswerOpt,
    window: int | None = typer.Option(None, "--window", help="layers per window (default: all layers at once)"),
    out: Path = png_out("knockout.png"),
) -> None:
    """Attention knockout between image, question and last positions."""
    from mmlens.layer.attention_knockout import attention_knockout
    from mmlens.util.options import check_int

    png, js = _outputs(out, "knockout")
    if window is not None:
        check_int("--window", window, 1, 10_000)
    subject, batch = _batch(model, image, prompt, answer)
    _write(attention_knockout(subject, batch, window=window), png, js)


@app.command("serve")
def serve_cmd(
    model: str = ModelOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (default loopback; others print a warning)"),
    port: int = typer.Option(7860, "--port", help="TCP port, 1-65535"),
) -> None:
    """A local web page to explore the model's answers (Gradio; Ctrl-C stops it)."""
    from mmlens.web.server import serve

    serve(model, host=host, port=port)  # checks host and port before it loads the model


from mmlens.cli_embed import embed_app  # noqa: E402  (the `embed` sub-commands)

app.add_typer(embed_app, name="embed")
from mmlens import cli_inference  # noqa: E402,F401  (generate / tuned-lens commands register on `app`)
from mmlens.cli_pope import pope_cmd  # noqa: E402  (its own module: cli.py stays small)

app.command("pope")(pope_cmd)
from mmlens.cli_probe import probe_cmd  # noqa: E402  (linear / MLP probes with control tasks)

app.command("probe")(probe_cmd)
from mmlens.cli_runs import register  # noqa: E402  (benchmark / explain-dataset)

register(app)
from mmlens.cli_sae import sae_app  # noqa: E402  (the `sae` sub-commands)

app.add_typer(sae_app, name="sae")
from mmlens.cli_dataset_stats import stats_app  # noqa: E402  (neurons / heads / pruning as dataset runs)

app.add_typer(stats_app, name="dataset-stats")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover - `python -m mmlens.cli`: the commands live on the imported module's app
    from mmlens.cli import app as _app

    _app()

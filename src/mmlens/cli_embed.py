"""``mmlens embed``: the embedding methods from the command line, each writing a PNG and a JSON beside it.

Images are files, or ``--shapes N`` held-out ShapesVQA samples (seed 0); the model is a CLIP / SigLIP (HF id,
folder, ``demo:clip``) or, for ``decompose``, any supported MLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

embed_app = typer.Typer(no_args_is_help=True, help="Embedding level: TextSpan, SpLiCE, modality gap, concept bottleneck")

ModelOpt = typer.Option("demo:clip", "--model", "-m", help="image-text dual encoder (HF id or folder), 'demo:clip', or an MLLM")
ImagesArg = typer.Argument(None, help="image files (or use --shapes N)")
ShapesOpt = typer.Option(0, "--shapes", help="use N held-out ShapesVQA samples instead of image files")


def _outputs(out: Path, stem: str) -> tuple[Path, Path]:
    from mmlens.errors import InputError
    from mmlens.util.io import check_output

    png = out / f"{stem}.png" if out.is_dir() else out
    if png.suffix.lower() != ".png":
        raise InputError(f"--out {str(out)!r}: pass a .png path (a .json is written beside it) or a folder")
    return check_output(png, (".png",), "--out"), check_output(png.with_suffix(".json"), (".json",), "--out")


def _write(png: Path, js: Path, data: dict, plot: Any) -> None:
    from mmlens.util.io import save_plot_or_json

    save_plot_or_json(js, lambda: data, plot)
    try:
        save_plot_or_json(png, lambda: data, plot)
    except BaseException:
        js.unlink(missing_ok=True)
        raise
    print(png)
    print(js)


def _tower(model: str) -> Any:
    import mmlens
    from mmlens.embedding import tower

    return tower(mmlens.load(model))


def _samples(t: Any, n: int, seed: int = 0, single: bool = False) -> list:
    from mmlens.cli_options import shapes_side
    from mmlens.data.shapes_vqa import ShapesVQA

    kw = {"min_objects": 1, "max_objects": 1} if single else {"min_objects": 1, "max_objects": 4}
    return list(ShapesVQA(image_size=shapes_side(t.vision_config), seed=seed, **kw).samples(n))


def _images(t: Any, files: list[str] | None, shapes: int) -> list:
    from mmlens.errors import InputError
    from mmlens.model.images import to_rgb

    if shapes:
        return [s.image for s in _samples(t, shapes)]
    if not files:
        raise InputError("no images: pass image files or --shapes N")
    return [to_rgb(f)[0] for f in files]


def _words(spec: str) -> list[str]:
    """A vocabulary: 'shapes', 'generic', or a text file with one word / phrase a line."""
    from mmlens.embedding import GENERIC_VOCABULARY, check_vocabulary, shapes_vocabulary
    from mmlens.errors import InputError

    if spec == "shapes":
        return shapes_vocabulary()
    if spec == "generic":
        return list(GENERIC_VOCABULARY)
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--vocab {spec!r} is not 'shapes', 'generic' or a text file: pass one of those")
    return check_vocabulary([line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()])


@embed_app.command("decompose")
def decompose_cmd(images: list[str] = ImagesArg, model: str = ModelOpt, shapes: int = ShapesOpt,
                  out: Path = typer.Option(Path("decompose.png"), "--out", "-o")) -> None:
    """TextSpan decomposition of the image embedding (heads, MLPs, input, biases; exact)."""
    from mmlens.embedding import decompose
    from mmlens.embedding.plots import decomposition_figure

    png, js = _outputs(out, "decompose")
    t = _tower(model)
    dec = decompose(t, _images(t, images, shapes))
    _write(png, js, dec.summary(), lambda: decomposition_figure(dec))


@embed_app.command("textspan")
def textspan_cmd(images: list[str] = ImagesArg, model: str = ModelOpt, shapes: int = ShapesOpt,
                 texts: str = typer.Option("generic", "--texts", help="text bank: 'shapes', 'generic' or a file"),
                 n_texts: int = typer.Option(3, "--n-texts", help="texts per head"),
                 out: Path = typer.Option(Path("textspan.png"), "--out", "-o")) -> None:
    """Each head's text span (iterative removal over a text bank) and its colour / shape / other category."""
    from mmlens.data.shapes_vqa import COLORS, SHAPES
    from mmlens.embedding import categorize, decompose, text_bank, text_spans
    from mmlens.embedding.plots import spans_figure

    png, js = _outputs(out, "textspan")
    t = _tower(model)
    t.require_text("TextSpan's text spans")
    words = list(dict.fromkeys([*_words(texts), *(_words("shapes") if texts != "shapes" else [])]))
    dec = decompose(t, _images(t, images, shapes))
    spans = text_spans(dec, text_bank(t, words), n_texts=n_texts)
    cats = categorize(spans, {"color": list(COLORS), "shape": list(SHAPES)})
    data = {"spans": [dict(s.to_dict(), category=cats[(s.layer, s.head)]) for s in spans], "n_images": len(dec.embedding)}
    _write(png, js, data, lambda: spans_figure(data["spans"], dec.n_layers, dec.n_heads))


@embed_app.command("splice")
def splice_cmd(images: list[str] = ImagesArg, model: str = ModelOpt, shapes: int = ShapesOpt,
               vocab: str = typer.Option("shapes", "--vocab", help="'shapes', 'generic' or a file (one a line)"),
               l1: float | None = typer.Option(None, "--l1", help="L1 weight (> 0; larger = sparser; default: "
                                                "the paper's 0.25 / (2 d))"),
               out: Path = typer.Option(Path("splice.png"), "--out", "-o")) -> None:
    """SpLiCE: each image as a sparse non-negative mix of concepts (image mean: the given images)."""
    from mmlens.embedding import splice
    from mmlens.embedding.plots import bars_figure
    from mmlens.util.options import check_float

    if l1 is not None:
        check_float("l1", l1, 0.0, open_low=True)
    words = _words(vocab)
    png, js = _outputs(out, "splice")
    t = _tower(model)
    res = splice(t, _images(t, images, shapes), words, l1=l1)
    data = {"l1": l1, "vocabulary": words, "images": [r.to_dict() for r in res]}
    first = res[0].concepts or [("(none)", 0.0)]
    _write(png, js, data, lambda: bars_figure([c for c, _ in first], [w for _, w in first],
                                              f"SpLiCE, image 0 (cosine {res[0].cosine:.2f})", "weight"))


@embed_app.command("gap")
def gap_cmd(model: str = ModelOpt, shapes: int = typer.Option(200, "--shapes", help="ShapesVQA samples (held out)"),
            out: Path = typer.Option(Path("gap.png"), "--out", "-o")) -> None:
    """Modality gap between ShapesVQA images and their captions; colour zero-shot accuracy vs the shift."""
    from mmlens.data.shapes_vqa import COLORS
    from mmlens.embedding import class_embeddings, modality_gap
    from mmlens.embedding.gap import SHIFTS, gap_vector
    from mmlens.embedding.plots import curves_figure
    from mmlens.embedding.zeroshot import accuracy, normalize

    png, js = _outputs(out, "gap")
    t = _tower(model)
    t.require_text("the modality gap")
    multi, single = _samples(t, shapes), _samples(t, shapes, single=True)
    img = t.encode_images([s.image for s in multi])
    caps = t.encode_texts([" and ".join(f"a {o['color']} {o['shape']}" for o in s.objects) for s in multi])
    data = {k: v for k, v in modality_gap(img, caps).items() if k != "gap"}
    g, emb = gap_vector(img, caps), t.encode_images([s.image for s in single])
    cls = class_embeddings(t, [[f"a photo of a {c} object", c] for c in COLORS])
    y = [list(COLORS).index(s.objects[0]["color"]) for s in single]
    data["shifts"], data["color_accuracy"] = list(SHIFTS), [accuracy(normalize(normalize(emb) - s * g), cls, y) for s in SHIFTS]
    _write(png, js, data, lambda: curves_figure(SHIFTS, {"colour": data["color_accuracy"]}, "shift (x gap vector)",
                                                f"modality gap |g| = {data['gap_norm']:.3f}"))


@embed_app.command("cbm")
def cbm_cmd(model: str = ModelOpt, task: str = typer.Option("color", "--task", help="color | shape"),
            n: int = typer.Option(200, "--n", help="held-out test samples (training: 2n from other seeds)"),
            vocab: str = typer.Option("generic", "--vocab", help="concepts: 'shapes', 'generic' or a file"),
            l1: float = typer.Option(0.01, "--l1", help="L1 weight of the sparse layer (> 0)"),
            out: Path = typer.Option(Path("cbm.png"), "--out", "-o")) -> None:
    """Label-free concept bottleneck on ShapesVQA colour / shape, next to a linear probe; top concepts."""
    from mmlens.data.shapes_vqa import COLORS, SHAPES
    from mmlens.embedding import linear_probe, train_cbm
    from mmlens.embedding.plots import bars_figure
    from mmlens.util.options import check_choice, check_float

    check_choice("--task", task, ("color", "shape"))
    check_float("l1", l1, 0.0, open_low=True)
    words = list(dict.fromkeys([*_words(vocab), *_words("shapes")]))
    png, js = _outputs(out, "cbm")
    t = _tower(model)
    t.require_text("the concept bottleneck")
    names = list(COLORS) if task == "color" else list(SHAPES)
    test, train = _samples(t, n, seed=0, single=True), _samples(t, 2 * n, seed=10, single=True)
    emb_tr, emb_te = t.encode_images([s.image for s in train]), t.encode_images([s.image for s in test])
    ytr = [names.index(s.objects[0][task]) for s in train]
    yte = [names.index(s.objects[0][task]) for s in test]
    cbm = train_cbm(emb_tr, ytr, names, words, t.encode_texts(words), l1=l1,
                    class_emb=t.encode_texts(names))  # Label-free CBM: concepts too close to a class name go
    probe = linear_probe(emb_tr, ytr, len(names))
    acc = lambda p: float(sum(int(a == b) for a, b in zip(p.tolist(), yte, strict=True)) / len(yte))  # noqa: E731
    data = {"task": task, "cbm_accuracy": acc(cbm.predict(emb_te)), "probe_accuracy": acc(probe(emb_te)),
            **cbm.sparsity(), "explanations": cbm.explain(emb_te[:10])}
    top = data["explanations"][0]["concepts"]
    _write(png, js, data, lambda: bars_figure([c["concept"] for c in top], [c["contribution"] for c in top],
                                              f"CBM {data['cbm_accuracy']:.2f} vs probe {data['probe_accuracy']:.2f}; "
                                              f"image 0 -> {data['explanations'][0]['prediction']}", "weight x activation"))


__all__ = ["embed_app"]

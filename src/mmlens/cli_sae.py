"""``mmlens sae train|inspect``: sparse autoencoders from the command line (SAELens-format folders, PNG + JSON).

Data: ShapesVQA samples (``--n``; training seed ``--seed``, held-out evaluation seed ``--seed + 1``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from mmlens.cli_options import ModelOpt, png_out

sae_app = typer.Typer(no_args_is_help=True, help="Sparse autoencoders: train on a hook point, inspect features")


def _show() -> bool:
    return sys.stderr.isatty()


def _shapes(subject, n: int, seed: int) -> list:
    from mmlens.cli_options import shapes_side
    from mmlens.data.shapes_vqa import ShapesVQA

    vision = getattr(subject.model.config, "vision_config", None)
    return list(ShapesVQA(image_size=shapes_side(vision), seed=seed).samples(n))


@sae_app.command("train")
def train_cmd(
    model: str = ModelOpt,
    hook: str = typer.Option("lm.blocks.0.resid_post", "--hook", help="hook point (Subject.hook_points() lists all)"),
    n: int = typer.Option(500, "--n", help="ShapesVQA training samples"),
    eval_n: int = typer.Option(100, "--eval-n", help="held-out samples for the metrics (0: skip)"),
    architecture: str = typer.Option("topk", "--arch", help="topk (TopK + AuxK) or standard (ReLU + L1)"),
    d_sae: int = typer.Option(256, "--d-sae", help="number of features"),
    k: int = typer.Option(16, "--k", help="TopK: active features per token"),
    l1: float = typer.Option(1e-3, "--l1", help="standard: L1 weight"),
    epochs: int = typer.Option(10, "--epochs", help="passes over the collected activations"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate"),
    positions: str = typer.Option("all", "--positions", help="all, image or text tokens"),
    seed: int = typer.Option(0, "--seed", help="seed of the samples and of the SAE"),
    out: Path = typer.Option(Path("sae"), "--out", "-o", help="folder: cfg.json, sae_weights.safetensors, "
                             "metrics.json, training.png"),
) -> None:
    """Train an SAE on one hook point; write it in SAELens' format with its metrics and training curve."""
    import tempfile

    import mmlens
    from mmlens.hooks.points import check_point
    from mmlens.neuron.sae import ce_recovered, reconstruction_metrics, save_sae, train_sae
    from mmlens.neuron.sae.plots import training_figure
    from mmlens.runs.sae_run import activation_tensors, collect_sae_activations
    from mmlens.util.io import check_output_folder, save_plot_or_json
    from mmlens.util.limits import MAX_SAMPLES
    from mmlens.util.options import check_choice, check_float, check_int

    check_int("--n", n, 1, MAX_SAMPLES)
    check_int("--eval-n", eval_n, 0, MAX_SAMPLES)
    check_choice("--arch", architecture, ("topk", "standard"))
    check_int("--d-sae", d_sae, 1, 1 << 20)
    if architecture == "topk":
        check_int("--k", k, 1, d_sae, why=f" (at most --d-sae {d_sae})")
    check_float("--l1", l1, 0.0)
    check_int("--epochs", epochs, 1, 10_000)
    check_choice("--positions", positions, ("all", "image", "text"))
    check_int("--seed", seed, 0, 2**62)
    check_output_folder(out, "--out")
    subject = mmlens.load(model)
    check_point(subject, hook)
    with tempfile.TemporaryDirectory(prefix="mmlens-sae-") as tmp:
        reader = collect_sae_activations(subject, _shapes(subject, n, seed), hook, Path(tmp) / "train", positions,
                                         show_progress=_show())
        run = train_sae(activation_tensors(reader, hook), d_sae=d_sae, architecture=architecture, k=k, l1=l1, lr=lr,
                        epochs=epochs, seed=seed, hook_name=hook, total=reader.n_rows, show_progress=_show(),
                        meta={"model": model, "samples": n, "positions": positions})
        if eval_n:
            held = _shapes(subject, eval_n, seed + 1)
            reader = collect_sae_activations(subject, held, hook, Path(tmp) / "held", positions)
            rec = reconstruction_metrics(run.sae, activation_tensors(reader, hook))
    folder = save_sae(run.sae, out)
    metrics = {"hook": hook, "train_activations": run.activations, "train_seconds": round(run.seconds, 2),
               "activations_per_s": round(run.throughput, 1)}
    if eval_n:
        metrics.update(rec)
        metrics.update(ce_recovered(subject, run.sae, held, hook, positions=positions, show_progress=_show()))
    save_plot_or_json(folder / "metrics.json", lambda: {**metrics, "history": run.history}, lambda: None)
    save_plot_or_json(folder / "training.png", dict, lambda: training_figure(run.history, f"SAE on {hook}"))
    for name in ("cfg.json", "sae_weights.safetensors", "metrics.json", "training.png"):
        print(folder / name)
    if eval_n:
        print(f"explained variance {metrics['explained_variance']:.3f}  L0 {metrics['l0']:.1f}  dead "
              f"{metrics['dead_fraction']:.3f}  CE recovered {metrics['ce_recovered']:.3f}", file=sys.stderr)


def _features(text: str | None, d_sae: int) -> list[int] | None:
    from mmlens.errors import InputError

    if text is None:
        return None
    try:
        items = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"--features {text!r}: pass comma-separated feature indices, e.g. 0,5,17") from None
    bad = [i for i in items if not 0 <= i < d_sae]
    if bad or not items:
        raise InputError(f"--features {text!r}: indices must be 0..{d_sae - 1}")
    return items


@sae_app.command("inspect")
def inspect_cmd(
    sae_dir: Path = typer.Argument(..., help="SAE folder (cfg.json + sae_weights.safetensors, SAELens format)"),
    model: str = ModelOpt,
    features: str | None = typer.Option(None, "--features", help="comma-separated features (default: the best "
                                        "feature for each ShapesVQA colour and shape)"),
    n: int = typer.Option(100, "--n", help="ShapesVQA samples to read the features on"),
    seed: int = typer.Option(1, "--seed", help="seed of the samples"),
    top: int = typer.Option(6, "--top", help="top patches / texts per feature"),
    out: Path = png_out("sae_features.png"),
) -> None:
    """Top-activating image patches and texts, logit effect and concept AUROC of SAE features."""
    import mmlens
    from mmlens.cli_embed import _outputs, _write
    from mmlens.neuron.sae import load_sae
    from mmlens.neuron.sae.features import feature_acts, logit_effect, match_concepts, patch_crops, top_tokens
    from mmlens.neuron.sae.plots import features_figure
    from mmlens.runs.sae_run import collect_tokens
    from mmlens.util.limits import MAX_SAMPLES
    from mmlens.util.options import check_int

    png, js = _outputs(out, "sae_features")
    check_int("--n", n, 2, MAX_SAMPLES)
    check_int("--top", top, 1, 50)
    sae = load_sae(sae_dir)
    chosen = _features(features, sae.d_sae)
    subject = mmlens.load(model)
    samples = _shapes(subject, n, seed)
    table = collect_tokens(subject, samples, sae.hook_name, show_progress=_show())
    sae.check_fits(sae.hook_name, int(table.acts.shape[-1]))
    matches = match_concepts(sae, table) if table.labels and table.image_token.any() else []
    by_feature = {m.feature: m for m in matches}
    chosen = chosen or list(dict.fromkeys(m.feature for m in matches)) or list(range(min(8, sae.d_sae)))
    feats = feature_acts(sae, table)
    rows, crops = [], []
    for f in chosen:
        patches = top_tokens(sae, table, f, top, image=True, feats=feats)
        texts = top_tokens(sae, table, f, top, image=False, feats=feats)
        row = {"feature": f, "patches": [p.to_dict() for p in patches], "texts": [t.to_dict() for t in texts],
               "frequency": float((feats[:, f] > 0).float().mean())}
        if sae.d_in == int(subject.model.config.get_text_config().hidden_size):
            row["logit_effect"] = logit_effect(subject, sae, f)
        if f in by_feature:
            row.update(concept=by_feature[f].concept, auroc=by_feature[f].auroc)
        rows.append(row)
        crops.append(patch_crops([s.image for s in samples], patches))
    data = {"sae": str(sae_dir), "hook": sae.hook_name, "samples": n, "seed": seed,
            "concepts": [m.to_dict() for m in matches], "features": rows}
    _write(png, js, data, lambda: features_figure(rows, crops))

"""``mmlens.explain``: one call from (model, images, prompt) to an :class:`~mmlens.results.explanation.Explanation`.

>>> import mmlens
>>> from mmlens.testing import tiny_subject
>>> from mmlens.testing.tiny_models import tiny_images
>>> lm = tiny_subject("llava")
>>> ex = mmlens.explain(lm, tiny_images("llava"), "what color is the cat?", method="attention", answer="red")
>>> ex.targets, ex.image_map("red").shape
(['red'], (32, 48))
"""

from __future__ import annotations

import inspect
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mmlens.attribution.output import MethodOutput
from mmlens.catalog import MethodInfo, get_method
from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.images import ImageLike
from mmlens.model.subject import Subject
from mmlens.model.targets import Target, resolve_targets
from mmlens.model.video import Video
from mmlens.results.explanation import Explanation, jsonable
from mmlens.util.limits import check_option_ranges


def explain(
    subject: Subject,
    images: ImageLike | Sequence[ImageLike] | Video,
    prompt: str,
    method: str = "relevancy",
    target: str | tuple[str, str] | None = None,
    answer: str | Sequence[int] | None = None,
    *,
    max_new_tokens: int = 16,
    seed: int = 0,
    candidates: Sequence[str] | None = None,
    **options: Any,
) -> Explanation:
    """Explain ``subject``'s answer to ``prompt`` about ``images`` with ``method``.

    ``answer=None`` explains the model's own greedy answer (up to ``max_new_tokens``); otherwise the given
    answer is teacher-forced. ``target``: None (each answer token), ``"answer"``, a word/phrase of the answer,
    or a contrast ``("red", "blue")`` (see :func:`mmlens.model.targets.resolve_targets`). ``options`` go to the
    method (``mmlens.methods()`` lists methods; each documents its options). Random methods are seeded with
    ``seed`` (the global RNG state is restored afterwards).

    Dual encoders (CLIP, SigLIP): ``prompt`` is a caption and the answer its similarity with the image; with
    ``candidates`` (other captions) the answer is the caption's zero-shot class among them, so the default
    ``log_prob`` objective explains why it won (its softmax log-probability over all the captions' similarities;
    :func:`mmlens.zero_shot` gives the classes' probabilities).

    Video (:class:`mmlens.Video`, families with video input): the explanation's images are the frames, with
    one map per frame, ``ex.frame_curve()`` (per-frame importance) and ``ex.save_strip("strip.png")``.

    >>> ex = mmlens.explain(lm, "cat.png", "what is on the mat?", method="integrated_gradients",
    ...                     steps=16)                                                # doctest: +SKIP
    >>> ex.plot(); ex.save("cat.safetensors")                                        # doctest: +SKIP
    """
    info = get_method(method)
    if info.kind != "attribution":
        article = "an" if info.kind[:1].lower() in "aeiou" else "a"
        raise InputError(f"method {method!r} is {article} {info.kind} method, not an attribution: use its own "
                         "entry point")
    _check_options(info, options)
    check_option_ranges({**options, "max_new_tokens": max_new_tokens})
    subject.require(info.tier)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed={seed!r}: pass an integer")
    if answer is None:
        generated = subject.generate(images, prompt, max_new_tokens=max_new_tokens, candidates=candidates)
        if not generated.token_ids.numel():
            raise InputError("the model's generated answer is empty (it stopped at once), so there is nothing to "
                             "explain: pass answer=... to explain a given answer")
        batch = generated.batch
    else:
        batch = subject.prepare(images, prompt, answer=answer, candidates=candidates)
    targets = resolve_targets(subject.tokenizer, batch, target)
    devices = [subject.device] if subject.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = info.fn(subject, batch, targets, **options)
    spec = {"target": target, "answer": answer, "max_new_tokens": max_new_tokens if answer is None else None,
            **({"candidates": list(candidates)} if candidates is not None else {})}
    return build_explanation(subject, batch, targets, out, method, options, seed, spec)


def video_metadata(batch: Batch) -> dict[str, Any]:
    """What an explanation of a video records: its rate, each frame's time, the frames each frame's tokens read,
    and each frame's token positions without separators (what :meth:`Explanation.frame_curve` sums)."""
    return {"fps": batch.video_fps, "frame_times": [g.time for g in batch.geometry],
            "token_frames": [list(g.grids[0].frames) if g.grids else [g.frame] for g in batch.geometry],
            "frame_positions": [g.grid_positions().tolist() for g in batch.geometry]}


def _check_options(info: MethodInfo, options: dict[str, Any]) -> None:
    """Unknown option names -> one-line InputError listing the method's options."""
    params = list(inspect.signature(info.fn).parameters.values())[3:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    known = [p.name for p in params if p.kind in named]
    unknown = sorted(set(options) - set(known))
    if unknown:
        offered = ", ".join(known) if known else "none"
        raise InputError(f"method {info.name!r} has no option {unknown[0]!r}; its options: {offered}")


def versions() -> dict[str, str]:
    """Versions that matter for reproducing a result."""
    import transformers

    from mmlens._version import __version__

    out = {"mmlens": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}
    try:
        import captum

        out["captum"] = captum.__version__
    except ImportError:  # pragma: no cover - captum is a dependency
        pass
    return out


def build_explanation(
    subject: Subject,
    batch: Batch,
    targets: list[Target],
    out: MethodOutput,
    method: str,
    options: dict[str, Any],
    seed: int,
    spec: dict[str, Any] | None = None,
) -> Explanation:
    """Turn a method's per-position scores (and optional pixel maps) into an :class:`Explanation`."""
    scores = torch.as_tensor(out.position_scores).detach().float().cpu()
    if scores.shape != (len(targets), batch.seq_len):
        raise RuntimeError(f"method {method!r} returned scores of shape {tuple(scores.shape)}, "
                           f"expected (n_targets, seq_len) = {(len(targets), batch.seq_len)}")
    geoms = batch.geometry
    keys = key_scores(batch, out, method, len(targets))
    image_scores = scores if keys is None else keys  # what geometry positions index (sequence or keys)
    if out.pixel_maps is not None:
        pixel = [[np.asarray(m, dtype=np.float32) for m in per_image] for per_image in out.pixel_maps]
    else:
        pixel = [[g.heatmap(image_scores[t]).astype(np.float32) for g in geoms] for t in range(len(targets))]
    grids = [[[m.numpy().astype(np.float32) for m in g.grid_maps(image_scores[t])] for g in geoms]
             for t in range(len(targets))]
    ids = batch.input_ids[0].tolist()
    tok = subject.tokenizer
    metadata = {
        "model_id": subject.model_id,
        "family": subject.family,
        "method": method,
        "options": jsonable(options),
        "seed": seed,
        **jsonable(spec or {}),
        "dtype": str(next(subject.model.parameters()).dtype).replace("torch.", ""),
        "versions": versions(),
        **({"image_notes": list(batch.conversions)} if batch.conversions else {}),
        **({"video": video_metadata(batch)} if batch.is_video else {}),
    }
    return Explanation(
        method=method,
        labels=[t.label for t in targets],
        target_indices=[list(t.indices) for t in targets],
        position_scores=scores.numpy().astype(np.float32),
        pixel_maps=pixel,
        grid_maps=grids,
        grid_kinds=[[grid.kind for grid in g.grids] for g in geoms],
        tokens=[str(t) for t in tok.convert_ids_to_tokens(ids)],
        text_positions=batch.text_positions().tolist(),
        image_positions=[g.positions.tolist() for g in geoms],
        images=list(batch.images),
        prompt=batch.prompt,
        answer=batch.answer or "",
        answer_tokens=[str(t) for t in tok.convert_ids_to_tokens(batch.answer_ids.tolist())],
        metadata=metadata,
        extras=jsonable(out.extras if keys is None else {**out.extras, "key_scores": keys.tolist()}),
    )


def key_scores(batch: Batch, out: MethodOutput, method: str, n_targets: int) -> torch.Tensor | None:
    """Per-key scores ``(T, n_keys)`` for images that enter through cross-attention keys (None otherwise): the
    method's own, or its pixel maps pooled onto each key's pixel box; a method with neither refuses in one line."""
    if not batch.in_key_space:
        return None
    n_keys = int(batch.key_positions().max()) + 1
    if out.key_scores is not None:
        keys = torch.as_tensor(out.key_scores).detach().float().cpu()
        if keys.shape != (n_targets, n_keys):
            raise RuntimeError(f"method {method!r} returned key scores of shape {tuple(keys.shape)}, expected "
                               f"{(n_targets, n_keys)}")
        return keys
    if out.pixel_maps is None:
        raise InputError(f"method {method!r} scores the language model's sequence positions, and this model's images "
                         "enter only through cross-attention keys, so it has no image map: use attention, relevancy, "
                         "attention_x_gradient, saliency, input_x_gradient, gradcam, integrated_gradients or a "
                         "perturbation method")
    from mmlens.attribution.perturbation_masks import pool_to_positions

    keys = torch.zeros(n_targets, n_keys)
    for t in range(n_targets):
        for g in batch.geometry:
            pool_to_positions(g, np.asarray(out.pixel_maps[t][g.image_index]), keys[t])
    return keys

"""Ask panel: pick a ShapesVQA sample or upload an image, type a prompt, generate; the answer as token chips."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import gradio as gr

import mmlens
from mmlens.data import ShapesVQA
from mmlens.web import _api, video
from mmlens.web.render import message
from mmlens.web.session import Context, Session

SAMPLE_SEED = 0
N_SAMPLES = 8
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"]


def samples() -> list[Any]:
    data = ShapesVQA(seed=SAMPLE_SEED)
    return [data.sample(i) for i in range(N_SAMPLES)]


def load_sample(ctx: Context, s: Session, index: int) -> tuple[Session, Any, str]:
    """Session with ShapesVQA sample ``index`` as the input (its question as the prompt)."""
    sample = ShapesVQA(seed=SAMPLE_SEED).sample(int(index))
    new = Session(image=sample.image, image_name=f"ShapesVQA sample {index}", prompt=sample.question,
                  image_code=f"ShapesVQA(seed={SAMPLE_SEED}).sample({int(index)}).image")
    return new, sample.image, sample.question


def load_upload(ctx: Context, s: Session, paths: str | Sequence[str] | None, fps: float | None = None) -> Session:
    """Session with the uploaded file(s) as the input, after the size / type / pixel checks of the API: one still
    image; an animated GIF / PNG / WebP, or several files (frames in name order), as a video at ``fps`` (default:
    the file's own, 1 for frame files; so is 0, the fps box's default) when the family takes video; else an animated
    file's first frame, as the API reads it, and several files get the API's one-line refusal."""
    fps = fps or None
    paths = [paths] if isinstance(paths, str) else [p for p in (paths or []) if p]
    if not paths:
        raise mmlens.InputError("the upload is empty: pick an image file (PNG, JPEG, WebP, GIF, BMP or TIFF)")
    for path in paths:
        if os.path.getsize(path) == 0:
            raise mmlens.InputError(f"the file {os.path.basename(path)!r} is empty: pick an image file")
    if len(paths) > 1:
        return video.from_frames(ctx, paths, fps)
    name = os.path.basename(paths[0])
    image, _note = _api.to_rgb(paths[0], name=f"the file {name!r}")  # byte, pixel and type limits of the API
    n_frames = video.frame_count(paths[0])
    if n_frames > 1 and ctx.subject.adapter.supports_video:
        return video.from_file(ctx, paths[0], name, n_frames, fps)
    if n_frames > 1:  # as the API reads an animated image for a model without video: its first frame
        name = f"{name}, its first frame of {n_frames} (the {ctx.subject.family} model takes no video)"
    return Session(image=image, image_name=name, image_code="Image.open('your_image.png')")


def loaded_note(s: Session) -> str:
    """What the page says after a sample or an upload was loaded."""
    what = f"a video of {video.describe(s.video)}" if s.video is not None else "an image"
    return message(f"loaded {s.image_name} ({what}): type a prompt and press Generate", "info")


def preview_label(s: Session) -> str:
    return f"video: {video.describe(s.video)} (first frame shown)" if s.video is not None else "image"


def generate(ctx: Context, s: Session, prompt: str, forced: str) -> Session:
    """The model's answer (or the teacher-forced one) to ``prompt``; the session keeps its batch."""
    if s.image is None:
        raise mmlens.InputError("no image yet: pick a sample or upload an image (or a video) first")
    if not prompt or not prompt.strip():
        raise mmlens.InputError("the prompt is empty: type a question about the image")
    lm = ctx.subject
    forced = (forced or "").strip() or None
    if forced is None:
        gen = lm.generate(s.visual, prompt, max_new_tokens=16)
        if not gen.token_ids.numel():
            raise mmlens.InputError("the model's answer is empty (it stopped at once): type an answer to "
                                    "teacher-force")
        batch = gen.batch
    else:
        batch = lm.prepare(s.visual, prompt, answer=forced)
    tokens = [lm.tokenizer.decode([t]).strip() for t in batch.answer_ids.tolist()]
    return dataclasses.replace(s, prompt=prompt, answer=forced, batch=batch, answer_tokens=tokens, explanation=None,
                               call={})


def chip_choices(s: Session) -> list[tuple[str, int]]:
    return [(tok or f"#{i}", i) for i, tok in enumerate(s.answer_tokens)]


def span_target(s: Session, picked: list[int] | None) -> str:
    """The target text for the chips picked (adjacent tokens form a span; none = the whole answer)."""
    idx = sorted(int(i) for i in (picked or []))
    if not idx:
        return "answer"
    if idx != list(range(idx[0], idx[-1] + 1)):
        raise mmlens.InputError("pick adjacent answer tokens to form a span (or one token)")
    words, n = s.answer_tokens[idx[0]: idx[-1] + 1], len(idx)
    first = next(i for i in range(len(s.answer_tokens)) if s.answer_tokens[i:i + n] == words)
    if first == idx[0] and all(words):  # the text names this span: readable in the target box
        return " ".join(words)
    return f"#{idx[0]}" if n == 1 else f"#{idx[0]}-{idx[-1]}"  # a repeated or empty token: by index


def answer_note(s: Session) -> str:
    how = "teacher-forced" if s.answer is not None else "generated"
    text = s.answer if s.answer is not None else " ".join(s.answer_tokens)
    return message(f"prompt: {s.prompt} · {how} answer: {text} ({len(s.answer_tokens)} tokens): click tokens to "
                   "choose what to explain", "ok")


def gallery_items() -> list[tuple[Any, str]]:
    return [(x.image.resize((128, 128), 0), f"#{i} {x.question}") for i, x in enumerate(samples())]


def fps_box(ctx: Context) -> gr.Number:
    """The frame rate of an uploaded video (shown for families with video only)."""
    return gr.Number(0, label="video fps (0: the file's own; frame files: 1)", elem_id="fps",
                     visible=bool(ctx.subject.adapter.supports_video))


def upload_box(ctx: Context) -> gr.File:
    label = "…or upload an image"
    if ctx.subject.adapter.supports_video:
        label += ", or a video: an animated GIF / PNG / WebP, or several frames at once (name order, 1 fps)"
    return gr.File(label=label, file_types=IMAGE_TYPES, file_count="multiple", elem_id="upload", height=120)

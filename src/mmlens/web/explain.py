"""Explain panel: method picker (survey leaf, access tier, faithfulness), option widgets, heatmap and token scores."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import gradio as gr

import mmlens
from mmlens.web.faithfulness import figures_html
from mmlens.web.render import esc, heatmap_html, token_scores_html
from mmlens.web.session import Context, Session
from mmlens.web.video import strip_html

DEFAULT_METHOD = "attention"


@dataclass(frozen=True)
class Option:
    method: str
    name: str
    default: Any
    kind: str  # "int" | "float" | "bool" | "text"


def attribution_methods() -> list[Any]:
    return mmlens.methods("attribution")


def method_options(info: Any) -> list[Option]:
    """The method's keyword options with a widget kind guessed from the annotation and default."""
    out = []
    for p in list(inspect.signature(info.fn).parameters.values())[3:]:
        if p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) or p.name in ("progress", "show_progress"):
            continue
        ann = str(p.annotation)
        if isinstance(p.default, bool):
            kind = "bool"
        elif ann == "int" and isinstance(p.default, int):
            kind = "int"
        elif ann == "float" and isinstance(p.default, (int, float)):
            kind = "float"
        else:
            kind = "text"
        out.append(Option(info.name, p.name, p.default, kind))
    return out


def widget(opt: Option) -> Any:
    label = opt.name.replace("_", " ")
    if opt.kind == "bool":
        return gr.Checkbox(value=opt.default, label=label)
    if opt.kind == "int":
        return gr.Number(value=opt.default, label=label, precision=0, minimum=None)
    if opt.kind == "float":
        return gr.Number(value=opt.default, label=label)
    default = "" if opt.default is None else str(opt.default)
    return gr.Textbox(value=default, label=label, placeholder="default" if opt.default is None else None,
                      elem_classes=["mm-opt"], elem_id=f"opt-{opt.method}-{opt.name}")


def parse_value(opt: Option, raw: Any) -> Any:
    """Widget value -> option value (text: empty = default, ints, comma-separated ints, floats, or the text)."""
    if opt.kind in ("int", "float"):
        if raw is None:
            raise mmlens.InputError(f"option {opt.name!r} of {opt.method!r} is empty: type a number")
        return int(raw) if opt.kind == "int" else float(raw)
    if opt.kind == "bool":
        return bool(raw)
    text = str(raw or "").strip()
    if not text:
        return opt.default
    parts = [x.strip() for x in text.split(",")]
    try:
        nums = [int(x) for x in parts]
        return nums if len(nums) > 1 or "," in text else nums[0]
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def chosen_options(method: str, options: list[Option], values: list[Any]) -> dict[str, Any]:
    """Options of ``method`` that differ from their defaults (what the copy-as-code snippet shows)."""
    out = {}
    for opt, raw in zip(options, values):
        if opt.method != method:
            continue
        value = parse_value(opt, raw)
        if value != opt.default:
            out[opt.name] = value
    return out


def method_label(info: Any) -> str:
    return f"{info.name}  ·  {info.leaf}  ·  {info.tier}"


def method_html(ctx: Context, name: str) -> str:
    info = next((m for m in attribution_methods() if m.name == name), None)
    if info is None:
        return ""
    return (f'<div class="mm-method"><span class="mm-badge">leaf: {esc(info.leaf)}</span>'
            f'<span class="mm-badge">access: {esc(info.tier)}</span> {esc(info.summary)}</div>'
            + figures_html(info.name, ctx.is_demo))


def run(ctx: Context, s: Session, method: str, target: str, opts: dict[str, Any], opacity: float,
        progress: Any = None) -> tuple[Session, str, str]:
    """Explain the session's answer with ``method`` for ``target``; returns (session, heatmap or a video's strip,
    token scores)."""
    ctx.need_answer(s)
    if method not in {m.name for m in attribution_methods()}:
        raise mmlens.InputError(f"unknown method {method!r}: pick one from the list")
    target = (target or "").strip() or "answer"
    if progress is not None:
        progress(0.1, desc=f"{method}: explaining {target!r}")
    # the session's answer: teacher-forced text, or the ids Generate produced (no second generation)
    answer = s.answer if s.answer is not None else s.batch.answer_ids.tolist()
    ex = mmlens.explain(ctx.subject, s.visual, s.prompt, method=method, target=target, answer=answer,
                        max_new_tokens=16, **opts)
    s.explanation = ex
    s.call = {"method": method, "target": target, "options": opts}
    label = ex.labels[0]
    if ex.is_video:  # every frame's map on one scale, and the frame-importance curve
        heat = strip_html(ex, 0, f"{method}: {label!r}", opacity)
    else:
        heat = heatmap_html(s.image, ex.image_map(0), f"{method}: {label!r}", opacity)
    toks = token_scores_html(ex.text_scores(0), f"prompt tokens coloured by {method} score for {label!r}")
    return s, heat, toks

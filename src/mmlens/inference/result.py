"""GroundingResult: a generated answer with per-token grounding signals; saves / loads (.json), renders HTML
(the answer coloured by a chosen signal, everything escaped) and rich text for the terminal.

>>> r = GroundingResult(model="m", prompt="is there a <b>?", answer="yes", tokens=["yes"], token_ids=[5],
...                     signals={"visual_reliance": [0.4]}, layers={}, meta={})
>>> "&lt;b&gt;" in r.html("visual_reliance")
True
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmlens.errors import InputError
from mmlens.util.io import atomic_write, read_json
from mmlens.util.options import check_choice

FORMAT = "mmlens.grounding/1"
#: What each signal means and its direction: +1 where a high value means the token is grounded in the image.
SIGNALS: dict[str, tuple[str, int]] = {
    "visual_reliance": ("log-prob with the image minus with the distorted image", 1),
    "log_prob": ("log-prob of the token with the image", 1),
    "image_attention": ("share of attention on image tokens (mean over layers and heads)", 1),
    "lens_first_top1": ("first layer at which the logit lens ranks the token first", -1),
    "lens_entropy": ("entropy of the logit-lens distribution (mean over layers)", -1),
    "map_contrast": ("attention map on image content minus on background, over its mean", 1),
}


@dataclass
class GroundingResult:
    """``signals[name][j]`` = signal ``name`` of answer token ``j``; ``layers[name][j][l]`` per-layer values."""

    model: str
    prompt: str
    answer: str
    tokens: list[str]
    token_ids: list[int]
    signals: dict[str, list[float]]
    layers: dict[str, list[list[float]]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    def signal(self, name: str) -> list[float]:
        check_choice("signal", name, list(self.signals))
        return self.signals[name]

    def hallucination_scores(self, name: str) -> list[float]:
        """Signal ``name`` oriented so that a higher value means "less grounded" (for ROC analysis)."""
        sign = SIGNALS.get(name, ("", 1))[1]
        return [-sign * v for v in self.signal(name)]

    # -- files ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroundingResult:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"not a grounding result (format {FORMAT!r}): pass a file saved by GroundingResult.save")
        fields = {k: data[k] for k in ("model", "prompt", "answer", "tokens", "token_ids", "signals", "layers", "meta")
                  if k in data}
        try:
            return cls(**fields)
        except TypeError as err:
            raise InputError(f"grounding result is incomplete ({err}): save it again") from None

    def save(self, path: str | os.PathLike, signal: str = "visual_reliance") -> Path:
        """``.json`` (everything) or ``.html`` (the report, coloured by ``signal``), written atomically."""
        suffix = Path(path).suffix.lower()
        if suffix == ".html":
            page = self.html(signal)
            return atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"), (".html",))
        text = json.dumps(self.to_dict(), indent=1)
        return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), (".json", ".html"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> GroundingResult:
        return cls.from_dict(read_json(path, "grounding result", "pass a .json saved by GroundingResult.save"))

    # -- rendering --------------------------------------------------------------------------------------
    def colors(self, name: str) -> list[tuple[int, int, int]]:
        """One RGB colour per token: green = grounded end of the signal, red = the other end."""
        values = self.signal(name)
        sign = SIGNALS.get(name, ("", 1))[1]
        finite = [v for v in values if math.isfinite(v)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        out = []
        for v in values:
            t = 0.5 if not math.isfinite(v) or hi <= lo else (v - lo) / (hi - lo)
            t = t if sign > 0 else 1.0 - t
            out.append((int(230 - 130 * t), int(100 + 130 * t), 110))
        return out

    def html(self, signal: str = "visual_reliance") -> str:
        """A self-contained page: the answer coloured by ``signal`` and a table of every signal (escaped)."""
        colors = self.colors(signal)
        spans = "".join(
            f'<span style="background:rgb{c};padding:1px 3px;margin:1px;border-radius:3px" '
            f'title="{html.escape(signal)} = {v:.4g}">{html.escape(t)}</span>'
            for t, c, v in zip(self.tokens, colors, self.signal(signal)))
        head = "".join(f"<th title=\"{html.escape(SIGNALS.get(n, ('', 1))[0])}\">{html.escape(n)}</th>"
                       for n in self.signals)
        rows = "".join("<tr><td>" + html.escape(t) + "</td>" + "".join(
            f"<td>{self.signals[n][j]:.4g}</td>" for n in self.signals) + "</tr>" for j, t in enumerate(self.tokens))
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>mmlens grounding</title></head><body>"
                f"<h3>{html.escape(self.model)}</h3><p><b>prompt:</b> {html.escape(self.prompt)}</p>"
                f"<p><b>answer</b> (coloured by {html.escape(signal)}: green = grounded end): {spans}</p>"
                f"<table border='1' cellpadding='3'><tr><th>token</th>{head}</tr>{rows}</table></body></html>")

    def rich_text(self, signal: str = "visual_reliance") -> Any:
        """The answer as :class:`rich.text.Text`, each token on a background coloured by ``signal``."""
        from rich.text import Text

        text = Text()
        for token, (r, g, b) in zip(self.tokens, self.colors(signal)):
            text.append(token, style=f"black on rgb({r},{g},{b})")
            text.append(" ")
        return text

    def __repr__(self) -> str:
        return f"GroundingResult({self.answer!r}, tokens={len(self)}, signals={list(self.signals)})"

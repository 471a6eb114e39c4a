"""Export panel: the current explanation as HTML report / JSON / safetensors, and a copy-as-code snippet."""

from __future__ import annotations

import os
import re
import tempfile

import mmlens
from mmlens.web.session import Context, Session

FORMATS = {"HTML report": ".html", "JSON": ".json", "safetensors": ".safetensors"}


def save(ctx: Context, s: Session, fmt: str) -> str:
    """Write the current explanation into a fresh folder under the server's temp folder; returns the path."""
    if s.explanation is None:
        raise mmlens.InputError("nothing to export yet: press Explain first")
    if fmt not in FORMATS:
        raise mmlens.InputError(f"unknown format {fmt!r}: pick one of {', '.join(FORMATS)}")
    folder = tempfile.mkdtemp(prefix="export-", dir=ctx.tmp)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", f"mmlens_{s.call.get('method', 'explanation')}")
    return str(s.explanation.save(os.path.join(folder, stem + FORMATS[fmt])))


def code(ctx: Context, s: Session) -> str:
    """Python that reproduces the current view with the public API."""
    if s.explanation is None:
        return "# press Explain to get the code for the current view"
    call = s.call
    opts = "".join(f", {k}={v!r}" for k, v in call["options"].items())
    answer = f", answer={s.answer!r}" if s.answer is not None else ""
    imports = "from mmlens.data import ShapesVQA\n" if s.image_code.startswith("ShapesVQA") else \
        "" if s.video is not None else "from PIL import Image\n"
    name = "video" if s.video is not None else "image"
    strip = f"ex.save_strip('strip.png', {s.explanation.labels[0]!r})\n" if s.video is not None else ""
    return (
        "import mmlens\n" + imports + "\n"
        f"lm = mmlens.load({ctx.model_spec!r})\n"
        f"{name} = {s.image_code}\n"
        f"ex = mmlens.explain(lm, {name}, {s.prompt!r}, method={call['method']!r}, target={call['target']!r}"
        f"{answer}{opts})\n"
        f"fig = ex.plot({s.explanation.labels[0]!r})\n"
        + strip + "ex.save('explanation.html')\n"
    )

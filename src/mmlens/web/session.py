"""Per-browser-session state and the error boundary every panel's handler goes through."""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

import mmlens
from mmlens.web.render import message

log = logging.getLogger("mmlens.web")


@dataclass
class Session:
    """What one browser tab is looking at: the input, the answer and the last explanation."""

    image: Image.Image | None = None  # the image, or a video's first frame (the preview)
    video: Any = None             # mmlens.Video when the input is a video (its frames, checked, and fps)
    video_fps: float = 1.0        # the upload's own frame rate (the fps box, when emptied, goes back to it)
    video_code: str = ""          # the call that loads the video, up to its fps argument (for "copy as code")
    image_code: str = ""          # Python expression that rebuilds the image or video (for "copy as code")
    image_name: str = ""
    prompt: str = ""
    answer: str | None = None     # teacher-forced answer (None: the model's own)
    batch: Any = None             # the teacher-forced batch of the current answer
    answer_tokens: list[str] = field(default_factory=list)
    explanation: Any = None       # mmlens.Explanation of the current view
    call: dict[str, Any] = field(default_factory=dict)  # the explain() arguments of the current view

    @property
    def visual(self) -> Any:
        """What the model sees: the video if there is one, else the image."""
        return self.video if self.video is not None else self.image


class Context:
    """What every panel shares: the one loaded model, its id and the server's temp folder."""

    def __init__(self, subject: Any, model_spec: str, tmp: str) -> None:
        self.subject = subject
        self.model_spec = model_spec
        self.tmp = tmp
        self.is_demo = getattr(subject, "model_id", "") == "demo"

    def need_answer(self, s: Session) -> None:
        if s.image is None:
            raise mmlens.InputError("no image yet: pick a sample or upload an image, then press Generate")
        if s.batch is None:
            raise mmlens.InputError("no answer yet: type a prompt and press Generate first")


def guard(msg_out: Any, model: Any = None) -> Callable:
    """Decorator: an InputError becomes one readable line in ``msg_out``; anything else one line too (the traceback
    goes to the server log only). Hooks are removed by the API's own context managers; here we check that."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except mmlens.InputError as err:
                text = str(err)
            except MemoryError:
                text = "out of memory: use a smaller image or fewer steps / samples"
            except Exception as err:  # noqa: BLE001 - the page's error boundary
                log.error("unexpected error in %s:\n%s", fn.__name__, traceback.format_exc())
                first = " ".join(str(err).split())[:200]
                text = f"unexpected {type(err).__name__}: {first} (the server log has the details)"
            left = mmlens.count_hooks(model) if model is not None else 0
            if left:  # pragma: no cover - the API removes its hooks; this is a safety net
                log.error("%d hooks left after an error", left)
            return {msg_out: message(text)}

        return wrapped

    return deco

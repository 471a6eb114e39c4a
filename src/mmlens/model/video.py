"""Video input: a list of frames (and their rate) passed wherever images are.

mmlens samples no frames: the frames given are the frames the model sees, in order, frame ``k`` at
``k / fps`` seconds. Families whose transformers class takes video build their inputs from these frames with
their own PIL image processor (no torchvision; see :mod:`mmlens.adapters.video`).

>>> from PIL import Image
>>> v = Video([Image.new("RGB", (32, 24))] * 3, fps=2.0)
>>> v.n_frames, v.times()
(3, [0.0, 0.5, 1.0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mmlens.errors import InputError
from mmlens.model.images import ImageLike, to_rgb
from mmlens.util import limits


@dataclass(frozen=True)
class Video:
    """``frames`` (paths, PIL images or arrays; all of one size) shown at ``fps`` frames per second."""

    frames: Sequence[ImageLike]
    fps: float = 1.0

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    def times(self) -> list[float]:
        """Time of each frame in seconds (frame ``k`` at ``k / fps``)."""
        return [k / float(self.fps) for k in range(self.n_frames)]

    @classmethod
    def load(cls, path: str | Path, fps: float | None = None) -> Video:
        """Frames of an animated GIF / PNG / WebP (its frame duration gives ``fps`` unless passed), or the
        image files of a folder in name order (``fps`` default 1).

        >>> Video.load("clip.gif").n_frames                                     # doctest: +SKIP
        """
        p = Path(path).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))
            if not files:
                raise InputError(f"video folder {str(path)!r} holds no .png/.jpg/.bmp/.webp frames: put the frames "
                                 "there as image files")
            _check_count(len(files))
            return cls(list(files), 1.0 if fps is None else fps)
        if not p.is_file():
            raise InputError(f"video {str(path)!r} not found: pass a folder of frames or an animated GIF")
        frames, ms = [], []
        try:
            with Image.open(p) as im:
                n = int(getattr(im, "n_frames", 1) or 1)
                _check_count(n)
                if n * im.width * im.height > limits.MAX_VIDEO_PIXELS:
                    raise InputError(f"video {str(path)!r} declares {n} frames of {im.width}x{im.height} "
                                     f"({n * im.width * im.height:,} pixels), over the {limits.MAX_VIDEO_PIXELS:,}-"
                                     "pixel limit: pass fewer or smaller frames")
                for k in range(n):
                    im.seek(k)
                    frames.append(im.convert("RGB"))
                    ms.append(float(im.info.get("duration", 0) or 0))
        except InputError:
            raise
        except Image.DecompressionBombError:
            raise InputError(f"video {str(path)!r} declares frames over {2 * (Image.MAX_IMAGE_PIXELS or 0):,} "
                             f"pixels (a decompression bomb?): pass frames of at most {limits.MAX_IMAGE_PIXELS:,} "
                             "pixels") from None
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise InputError(f"video {str(path)!r} is not a readable animated image ({err.__class__.__name__}): "
                             "pass a GIF or a folder of frames") from None
        if fps is None:
            mean = sum(ms) / len(ms)
            fps = 1000.0 / mean if mean > 0 else 1.0
        return cls(frames, fps)


def _check_count(n: int) -> None:
    if n == 0:
        raise InputError("the video has no frames: pass at least one frame")
    if n > limits.MAX_VIDEO_FRAMES:
        raise InputError(f"the video has {n:,} frames, over the {limits.MAX_VIDEO_FRAMES}-frame limit: pass "
                         f"at most {limits.MAX_VIDEO_FRAMES} frames (sample every k-th frame)")


def video_frames(video: Video) -> tuple[list[Image.Image], list[str]]:
    """The video's frames as RGB PIL images of one size, and their conversion notes; one-line InputError for
    no frames, too many, too many pixels in all (decided from frame 0, before the others are read), a bad fps, or
    frames of different sizes.

    >>> frames, notes = video_frames(Video([Image.new("L", (8, 6))] * 2))
    >>> [f.mode for f in frames], notes
    (['RGB', 'RGB'], ['frame 0: converted L -> RGB', 'frame 1: converted L -> RGB'])
    """
    if isinstance(video.frames, (str, Path, Image.Image)) or not isinstance(video.frames, Sequence):
        raise InputError(f"Video frames has type {type(video.frames).__name__}: pass a list of frames "
                         "(paths, PIL images or arrays), or use Video.load(path)")
    _check_count(len(video.frames))
    fps = video.fps
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or not 0 < fps <= 1000:
        raise InputError(f"fps={fps!r}: pass the frame rate as a number in (0, 1000]")
    frames, notes = [], []
    for k, frame in enumerate(video.frames):
        rgb, note = to_rgb(frame, name=f"frame {k}")
        if not frames and len(video.frames) * rgb.width * rgb.height > limits.MAX_VIDEO_PIXELS:  # before the rest
            raise InputError(f"the video has {len(video.frames)} frames of {rgb.width}x{rgb.height} "
                             f"({len(video.frames) * rgb.width * rgb.height:,} pixels), over the "
                             f"{limits.MAX_VIDEO_PIXELS:,}-pixel limit: pass fewer or smaller frames")
        if frames and rgb.size != frames[0].size:
            raise InputError(f"frame {k} is {rgb.width}x{rgb.height} but frame 0 is {frames[0].width}x"
                             f"{frames[0].height}: pass frames of one size (resize them first)")
        frames.append(rgb)
        if note:
            notes.append(f"frame {k}: {note}")
    return frames, notes

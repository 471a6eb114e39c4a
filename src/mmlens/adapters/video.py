"""Video inputs without torchvision: the family's PIL image processor per frame, then the family's own layout.

Every transformers video processor needs torchvision, which mmlens does not use. :class:`FrameVideoProcessor`
stands in for it: it preprocesses each frame with the family's (PIL) image processor, then lays the frames out
as the family's model expects, and is handed to the family's own processor as its ``video_processor`` for one
call, so the placeholder expansion, timestamps and ``mm_token_type_ids`` are transformers' own code.

Layouts (``layout``):

- ``"qwen"`` (Qwen2-VL, Qwen2.5-VL) / ``"qwen3"`` (Qwen3-VL): each frame resized like an image (multiples of
  ``patch * merge``; Qwen3-VL: one pixel budget for all frames together, :func:`qwen3_frame_size`), then ``temporal_patch_size`` (2) consecutive frames per token: ``video_grid_thw = (ceil(T / 2), h,
  w)``, an odd last frame repeated (as HF does). So one video token reads a cell of *two* frames.
- ``"pooled"`` (LLaVA-OneVision, LLaVA-NeXT-Video): each frame is the family's base image (OneVision: squashed to
  the tile size; NeXT-Video: shortest edge + centre crop), one token per 2x2 pooled patch cell per frame.

Differences from the torchvision video processors, said plainly: no frame sampling (the frames passed are the
frames used); PIL resampling instead of torchvision's (pixel values may differ by interpolation rounding); Qwen
frames are sized by the video processor's per-frame pixel bounds (a loaded video processor's, or the saved
``video_preprocessor_config.json``'s, else the image processor's), with no total-video pixel budget; the LLaVA
layouts use the image processor's tile / crop size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.video_utils import VideoMetadata, make_batched_videos

from mmlens.errors import InputError
from mmlens.model.geometry import Box, ImageGeometry, ImageGrid


class FrameVideoProcessor:
    """Torchvision-free stand-in for a family's video processor (see the module docstring).

    >>> # FrameVideoProcessor(processor.image_processor, "qwen", fps=2.0)([frames_array])
    """

    def __init__(self, image_processor: Any, layout: str, fps: float, size: dict | None = None) -> None:
        self.image_processor = image_processor
        self.layout = layout
        self.fps = float(fps)
        self.size = size  # Qwen: the video processor's {"shortest_edge", "longest_edge"} pixel bounds per frame
        self.merge_size = int(getattr(image_processor, "merge_size", 2) or 2)
        self.temporal_patch_size = int(getattr(image_processor, "temporal_patch_size", 1) or 1)
        self.patch_size = getattr(image_processor, "patch_size", None)

    def __call__(self, videos: Any, **kwargs: Any) -> BatchFeature:
        clips = [[Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in v] for v in make_batched_videos(videos)]
        if self.layout in ("qwen", "qwen3"):
            parts = [self._qwen(frames) for frames in clips]
            data = {"pixel_values_videos": torch.cat([p for p, _ in parts]),
                    "video_grid_thw": torch.tensor([g for _, g in parts], dtype=torch.long)}
        else:
            data = {"pixel_values_videos": torch.stack([self._pooled(frames) for frames in clips])}
        data["video_metadata"] = [VideoMetadata(total_num_frames=len(f), fps=self.fps, width=f[0].width,
                                                height=f[0].height, frames_indices=list(range(len(f))))
                                  for f in clips]
        return BatchFeature(data)

    def _qwen(self, frames: list[Image.Image]) -> tuple[torch.Tensor, list[int]]:
        size = self.size
        if self.layout == "qwen3":  # one pixel budget for the whole video: resize first, then keep that size
            bounds = size or dict(self.image_processor.size)
            h, w = qwen3_frame_size(len(frames), frames[0].height, frames[0].width, self.temporal_patch_size,
                                    int(self.patch_size) * self.merge_size, int(bounds["shortest_edge"]),
                                    int(bounds["longest_edge"]))
            frames = [f.resize((w, h), Image.Resampling.BICUBIC) for f in frames]
            size = {"shortest_edge": h * w, "longest_edge": h * w}
        out = self.image_processor(images=frames, return_tensors="pt", **({"size": size} if size else {}))
        flat, thw = out["pixel_values"], out["image_grid_thw"]
        n = int(thw[0].prod())  # patches per frame
        tps, p = self.temporal_patch_size, int(self.patch_size)
        # each frame's patches hold the frame tps times over (an image is a still video): keep one copy
        per_frame = flat.reshape(len(frames), n, 3, tps, p, p)[:, :, :, 0]
        pad = -len(frames) % tps
        if pad:
            per_frame = torch.cat([per_frame, per_frame[-1:].expand(pad, -1, -1, -1, -1)])
        groups = per_frame.reshape(-1, tps, n, 3, p, p).permute(0, 2, 3, 1, 4, 5)  # (t, n, C, tps, p, p)
        _, h, w = (int(v) for v in thw[0])
        return groups.reshape(-1, 3 * tps * p * p), [groups.shape[0], h, w]

    def _pooled(self, frames: list[Image.Image]) -> torch.Tensor:
        out = self.image_processor(images=frames, return_tensors="pt")
        pv = out["pixel_values"]
        return pv[:, 0] if pv.ndim == 5 else pv  # anyres processors: tile 0 is the base image


def qwen3_frame_size(n_frames: int, height: int, width: int, temporal: int, factor: int, min_pixels: int,
                     max_pixels: int) -> tuple[int, int]:
    """Qwen3-VL's video frame size ``(h, w)``: multiples of ``factor`` near the frame's, with the pixels of all the
    (temporally padded) frames together inside ``[min_pixels, max_pixels]`` (as Qwen3-VL's video processor).

    >>> qwen3_frame_size(4, 64, 96, 2, 32, 4096, 16384)
    (32, 64)
    """
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    h, w = round(height / factor) * factor, round(width / factor) * factor
    t = max(temporal, round(n_frames / temporal) * temporal)
    if t * h * w > max_pixels:
        beta = math.sqrt(n_frames * height * width / max_pixels)
        h, w = max(factor, math.floor(height / beta / factor) * factor), max(factor, math.floor(width / beta / factor) * factor)
    elif t * h * w < min_pixels:
        beta = math.sqrt(min_pixels / (n_frames * height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def call_with_frames(processor: Any, layout: str, frames: list[Image.Image], fps: float, text: str,
                     image_processor: Any = None) -> dict[str, torch.Tensor]:
    """``processor(text=text, videos=[frames])`` with :class:`FrameVideoProcessor` (around ``image_processor``,
    default the processor's own) as its video processor for this call (the processor's own video processor, if
    any, is put back afterwards)."""
    stand_in = FrameVideoProcessor(image_processor or processor.image_processor, layout, fps,
                                   video_size(processor) if layout.startswith("qwen") else None)
    missing = object()
    previous = processor.__dict__.get("video_processor", missing)
    processor.video_processor = stand_in
    try:
        out = processor(text=text, videos=[np.stack([np.asarray(f) for f in frames])], return_tensors="pt")
    except ValueError as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise InputError(f"the processor rejected this video/prompt ({first}): pass frames of a usual size and a "
                         "prompt without placeholders") from None
    finally:
        if previous is missing:
            del processor.video_processor
        else:
            processor.video_processor = previous
    return {k: v for k, v in dict(out).items() if k != "video_metadata"}


def video_size(processor: Any) -> dict | None:
    """Per-frame pixel bounds ``{"shortest_edge", "longest_edge"}`` of the family's video processor: the loaded
    one's (torchvision installed), else the saved ``video_preprocessor_config.json``'s (read by
    :func:`saved_video_settings` at load time), else None (the image processor's bounds)."""
    real = processor.__dict__.get("video_processor")
    settings = dict(getattr(real, "size", None) or {}) if real is not None else \
        getattr(processor, "_mmlens_video_settings", {}).get("size") or {}
    if settings.get("min_pixels") or settings.get("max_pixels"):  # older configs
        settings = {"shortest_edge": settings.get("min_pixels"), "longest_edge": settings.get("max_pixels")}
    if settings.get("shortest_edge") and settings.get("longest_edge"):
        return {"shortest_edge": int(settings["shortest_edge"]), "longest_edge": int(settings["longest_edge"])}
    return None


def saved_video_settings(path: str, **kwargs: Any) -> dict:
    """The settings saved in ``path``'s video processor config (``{}`` when it has none), read without
    torchvision; Qwen's ``min_pixels`` / ``max_pixels`` become ``size``."""
    from transformers.video_processing_utils import BaseVideoProcessor

    hub = {k: v for k, v in kwargs.items() if k in ("cache_dir", "revision", "local_files_only", "token", "subfolder")}
    try:
        config, _ = BaseVideoProcessor.get_video_processor_dict(path, **hub)
    except (OSError, ValueError, TypeError):
        return {}
    size = dict(config.get("size") or {})
    for old, new in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        if config.get(old):
            size[new] = config[old]
    return {"size": size} if size else {}


def video_positions(input_ids: torch.Tensor, video_token_id: int, expected: int) -> torch.Tensor:
    """Positions of the video placeholder tokens in row 0 (checked against the count the frames need)."""
    pos = torch.nonzero(input_ids[0] == video_token_id).flatten()
    if pos.numel() != expected:
        raise InputError(f"the prompt holds {pos.numel()} video tokens but the frames need {expected}: leave "
                         "video placeholders out of the prompt (mmlens adds them)")
    return pos


def frame_geometries(frames: list[Image.Image], fps: float, groups: list[tuple[torch.Tensor, tuple[int, ...]]],
                     box: Box, separators: torch.Tensor | None = None) -> list[ImageGeometry]:
    """One geometry per frame from token ``groups``: ``(positions (rows, cols), frames read)`` each; the
    ``separators`` (e.g. a closing newline token) go to the last frame."""
    out = []
    for k, frame in enumerate(frames):
        grids = [ImageGrid(pos, box, kind="frames", frames=covered) for pos, covered in groups if k in covered]
        positions = torch.cat([g.positions.flatten() for g in grids])
        seps = separators if separators is not None and k == len(frames) - 1 else torch.zeros(0, dtype=torch.long)
        positions = torch.cat([positions, seps]).sort().values
        out.append(ImageGeometry(k, frame.size, positions, grids, separators=seps, frame=k, time=k / fps,
                                 notes={"frames_per_token": len(grids[0].frames)}))
    return out


def qwen_video_geometry(inputs: dict[str, torch.Tensor], frames: list[Image.Image], fps: float,
                        video_token_id: int, merge: int) -> list[ImageGeometry]:
    """Qwen2/2.5/3-VL: ``video_grid_thw = (t, h, w)``; temporal group ``g`` = frames ``tps*g ..`` (row-major
    merged grid per group, groups in time order)."""
    t, h, w = (int(v) for v in inputs["video_grid_thw"][0])
    rows, cols = h // merge, w // merge
    pos = video_positions(inputs["input_ids"], video_token_id, t * rows * cols).reshape(t, rows, cols)
    per = math.ceil(len(frames) / t)
    groups = [(pos[g], tuple(range(g * per, min((g + 1) * per, len(frames))))) for g in range(t)]
    width, height = frames[0].size
    return frame_geometries(frames, fps, groups, (0.0, 0.0, float(width), float(height)))


def pooled_video_geometry(inputs: dict[str, torch.Tensor], frames: list[Image.Image], fps: float,
                          video_token_id: int, side: int, box: Box, newline: bool) -> list[ImageGeometry]:
    """LLaVA-OneVision / LLaVA-NeXT-Video: ``side x side`` tokens per frame, frames in order (+ one newline
    token after the last frame when ``newline``)."""
    n = len(frames) * side * side
    pos = video_positions(inputs["input_ids"], video_token_id, n + int(newline))
    groups = [(pos[k * side * side:(k + 1) * side * side].reshape(side, side), (k,)) for k in range(len(frames))]
    return frame_geometries(frames, fps, groups, box, pos[n:] if newline else None)

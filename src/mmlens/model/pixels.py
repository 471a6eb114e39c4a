"""A differentiable copy of the image processor: original pixels -> exactly the ``pixel_values`` it produces.

Generic: the steps and their settings are read from the image processor itself (``do_resize`` / ``size`` /
``resample``, ``do_center_crop`` / ``crop_size``, ``do_rescale`` / ``rescale_factor``, ``do_normalize`` /
``image_mean`` / ``image_std``, ``do_pad``, pan & scan, ``image_grid_pinpoints``, ``min_patches`` /
``max_patches``, and for patch rows ``patch_size`` / ``temporal_patch_size`` / ``merge_size`` /
``max_num_patches``). The adapter says only what is family-specific: its
:attr:`~mmlens.adapters.base.Adapter.pixel_layout`, and where needed its own resize rule
(:meth:`~mmlens.adapters.base.Adapter.pixel_resize`) or views (:meth:`~mmlens.adapters.base.Adapter.pixel_views`):

- ``"stack"``: one ``(3, H, W)`` array per image (resize, centre crop, normalise; pan & scan crops follow it);
- ``"patches"``: rows of merged patches; ``"padded_patches"``: patch rows padded to ``max_num_patches``;
- ``"tiles"``: a base view, then any-resolution tiles from ``image_grid_pinpoints``;
- ``"grid_tiles"``: the image resized onto the best grid of ``size`` tiles, plus a thumbnail;
- ``"views"``: the adapter's views (tiles, a global image) padded into one row; ``"image_tiles"``: the
  adapter's tiles of each image, padded to ``max_image_tiles``;
- None: not re-implemented, so pixel-level methods refuse.

Resizing is Pillow's, bit-exact in the forward (:mod:`mmlens.model.pil_resize`); :func:`check_pixels` measures
``max |ours - processor|`` on a batch and refuses above :data:`TOLERANCE`.

>>> from mmlens.testing import tiny_subject                                     # doctest: +SKIP
>>> lm = tiny_subject("llava"); batch = lm.prepare(image, "what is this?")      # doctest: +SKIP
>>> pipe = PixelPipeline(lm)                                                    # doctest: +SKIP
>>> pv = pipe([image_tensor(image)])    # differentiable in the image tensor    # doctest: +SKIP
>>> check_pixels(pipe, batch)           # max |pv - batch.inputs["pixel_values"]| # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmlens.errors import InputError
from mmlens.model.batch import Batch
from mmlens.model.pil_resize import resize, round_uint8

#: largest ``max |ours - processor|`` on the normalised pixel values a pixel-level method accepts
TOLERANCE = 1e-4
PAN_AND_SCAN = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
                "pan_and_scan_min_ratio_to_activate")
LAYOUTS = ("stack", "patches", "padded_patches", "tiles", "grid_tiles", "views", "image_tiles")


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as an ``(H, W, 3)`` float64 tensor on the 0..255 scale (what :class:`PixelPipeline` takes)."""
    return torch.tensor(np.array(image.convert("RGB")), dtype=torch.float64)


def _get(ip: Any, name: str, default: Any = None) -> Any:
    value = getattr(ip, name, default)
    return default if value is None else value


def generic_resize_size(ip: Any, height: int, width: int) -> tuple[int, int]:
    """The ``(height, width)`` a transformers image processor resizes an image to, from its ``size`` (the rule
    of transformers' PIL backend: shortest edge (+ longest edge), max height / width, or a fixed size)."""
    from transformers.image_processing_utils import get_size_dict  # noqa: F401  (transformers is loaded)
    from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
    from transformers.image_utils import ChannelDimension, get_image_size_for_max_height_width

    size = ip.size
    shortest, longest = _get(size, "shortest_edge"), _get(size, "longest_edge")
    if shortest and longest:
        return tuple(get_size_with_aspect_ratio((height, width), shortest, longest))  # type: ignore[return-value]
    if shortest:
        probe = np.zeros((3, height, width), dtype=np.uint8)
        return tuple(get_resize_output_image_size(probe, size=shortest, default_to_square=False,  # type: ignore
                                                  input_data_format=ChannelDimension.FIRST))
    if _get(size, "max_height") and _get(size, "max_width"):
        return tuple(get_image_size_for_max_height_width((height, width), size.max_height, size.max_width))  # type: ignore
    if _get(size, "height") and _get(size, "width"):
        return int(size.height), int(size.width)
    raise InputError(f"the image processor's size {size!r} has no rule the pixel pipeline knows: use a token-level "
                     "method")


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """transformers' ``center_crop`` of ``(..., H, W)``: offsets ``(H - h) // 2``, zero padding where the image
    is smaller than the crop (before rescaling, so padding is black)."""
    h, w = x.shape[-2:]
    if h < height or w < width:  # pad symmetrically (ceil on the top / left) to at least the crop size
        nh, nw = max(height, h), max(width, w)
        top, left = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
        x = F.pad(x, (left, nw - w - left, top, nh - h - top))
        h, w = nh, nw
    top, left = (h - height) // 2, (w - width) // 2
    return x[..., top:top + height, left:left + width]


class PixelPipeline:
    """``subject``'s image processor as a differentiable function of the original pixels.

    ``pipe(images)`` takes ``(H, W, 3)`` tensors (0..255; ``scale=1.0`` for 0..1) and returns the
    ``pixel_values`` tensor the processor returns for those images (float64). ``exact=True``: 8-bit rounding
    as Pillow does it in the forward, straight-through in the backward; ``exact=False``: the smooth float copy.
    """

    def __init__(self, subject: Any):
        self.layout = subject.adapter.pixel_layout
        self.adapter = subject.adapter
        self.family = subject.family
        if self.layout not in LAYOUTS:
            raise InputError(f"pixel-level methods need a differentiable copy of the {self.family} image processor, "
                             "whose tiles / crops are not re-implemented: use the token-level method (saliency, "
                             "integrated_gradients, smoothgrad)")
        ip = getattr(subject.processor, "image_processor", None)
        if ip is None:
            raise InputError(f"the {self.family} processor has no image_processor to copy: use a token-level method")
        self.ip = ip

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """Size after the resize step (the original size when the processor does not resize)."""
        if not _get(self.ip, "do_resize", False):
            return height, width
        own = self.adapter.pixel_resize(height, width)
        return own if own is not None else generic_resize_size(self.ip, height, width)

    def front(self, image: torch.Tensor, exact: bool = True, scale: float = 255.0) -> torch.Tensor:
        """``(H, W, 3)`` -> ``(3, H, W)`` on the 0..255 scale (rounded to 8 bits, straight-through, if ``exact``)."""
        if image.ndim != 3 or image.shape[-1] != 3:
            raise InputError(f"image tensor of shape {tuple(image.shape)}: pass (H, W, 3)")
        x = image.double().permute(2, 0, 1) * (255.0 / scale)
        return round_uint8(x) if exact else x

    def finish(self, x: torch.Tensor, exact: bool = True, resize_view: bool = True) -> torch.Tensor:
        """The processor's per-view steps on ``(3, H, W)``: resize, centre crop, rescale, normalise."""
        if resize_view and _get(self.ip, "do_resize", False):
            x = resize(x, self.resized(*x.shape[-2:]), _get(self.ip, "resample", 2), exact)
        if _get(self.ip, "do_center_crop", False):
            crop = self.ip.crop_size
            x = center_crop(x, int(crop.height), int(crop.width))
        if _get(self.ip, "do_rescale", False):
            x = x * float(self.ip.rescale_factor)
        if _get(self.ip, "do_normalize", False):
            mean = torch.as_tensor(self.ip.image_mean, dtype=x.dtype).view(-1, 1, 1)
            std = torch.as_tensor(self.ip.image_std, dtype=x.dtype).view(-1, 1, 1)
            x = (x - mean) / std
        return x

    def one(self, image: torch.Tensor, exact: bool = True, scale: float = 255.0) -> torch.Tensor:
        """One image ``(H, W, 3)`` -> ``(3, h, w)`` normalised, before patching / padding."""
        return self.finish(self.front(image, exact, scale), exact)

    def tiles(self, image: torch.Tensor, exact: bool = True, scale: float = 255.0) -> torch.Tensor:
        """Any-resolution tiles ``(1 + n, 3, h, w)``: the whole image resized to the base size, then the image
        resized into the best ``image_grid_pinpoints`` resolution (aspect kept, centred, zero padding) cut into
        square tiles row-major; each view then goes through :meth:`finish`."""
        from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
        from transformers.image_utils import ChannelDimension

        x = self.front(image, exact, scale)
        resample = _get(self.ip, "resample", 2)
        size, crop = self.ip.size, _get(self.ip, "crop_size")
        base = (size.height, size.width) if _get(size, "height") else (size.shortest_edge, size.shortest_edge)
        tile = int(crop.height if crop is not None and _get(crop, "height") else base[0])
        h, w = x.shape[-2:]
        best = select_best_resolution((h, w), self.ip.image_grid_pinpoints)
        inner = get_patch_output_size(np.zeros((3, h, w), np.uint8), best, input_data_format=ChannelDimension.FIRST)
        canvas = resize(x, inner, resample, exact)
        top, r_y = divmod(best[0] - inner[0], 2)
        left, r_x = divmod(best[1] - inner[1], 2)
        canvas = F.pad(canvas, (left, left + r_x, top, top + r_y))
        views = [resize(x, base, resample, exact)]
        views += [canvas[:, i:i + tile, j:j + tile] for i in range(0, best[0], tile) for j in range(0, best[1], tile)]
        return torch.stack([self.finish(v, exact) for v in views])

    def pan_and_scan(self, image: torch.Tensor, exact: bool = True, scale: float = 255.0) -> list[torch.Tensor]:
        """The image, then the crops of the image processor's own ``pan_and_scan`` (run on the tensor) when its
        ``do_pan_and_scan`` is on (settings from the adapter's processor keywords, else the image processor)."""
        x = self.front(image, exact, scale)
        given = self.adapter.processor_kwargs()
        opts = {k: given.get(k, getattr(self.ip, k, None)) for k in PAN_AND_SCAN}
        crops = []
        if opts.pop("do_pan_and_scan") and hasattr(self.ip, "pan_and_scan"):
            crops = self.ip.pan_and_scan(image=x, **opts)
        return [self.finish(v, exact) for v in [x, *crops]]

    def grid_tiles(self, image: torch.Tensor, exact: bool = True, scale: float = 255.0) -> torch.Tensor:
        """Tiles on the best ``cols x rows`` canvas of ``size`` tiles (``min_patches`` .. ``max_patches``): the
        image resized onto the canvas and cut row-major, then a thumbnail of the whole image when there are
        several tiles; each tile rescaled and normalised ``(n, 3, h, w)``."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        x = self.front(image, exact, scale)
        resample = _get(self.ip, "resample", 2)
        th, tw = int(self.ip.size.height), int(self.ip.size.width)
        cols, rows = get_optimal_tiled_canvas(tuple(x.shape[-2:]), (th, tw), self.ip.min_patches, self.ip.max_patches)
        canvas = resize(x, (th * rows, tw * cols), resample, exact)
        views = [canvas[:, r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(rows) for c in range(cols)]
        if len(views) > 1:
            views.append(resize(x, (th, tw), resample, exact))
        return torch.stack([self.finish(v, exact, resize_view=False) for v in views])

    def __call__(self, images: Sequence[torch.Tensor], exact: bool = True, scale: float = 255.0) -> torch.Tensor:
        if self.layout == "tiles":  # (images, most tiles, 3, h, w): fewer tiles padded with zeros
            stacks = [self.tiles(img, exact, scale) for img in images]
            most = max(len(t) for t in stacks)
            return torch.stack([F.pad(t, (0, 0, 0, 0, 0, 0, 0, most - len(t))) for t in stacks])
        if self.layout == "views":  # (1, views, 3, h, w): the adapter's views, zero-padded bottom / right
            resample = _get(self.ip, "resample", 2)
            views = [self.finish(v, exact, resize_view=False) for img in images for v in
                     self.adapter.pixel_views(self.front(img, exact, scale), lambda t, s: resize(t, s, resample, exact))]
            h, w = max(v.shape[-2] for v in views), max(v.shape[-1] for v in views)
            return torch.stack([F.pad(v, (0, w - v.shape[-1], 0, h - v.shape[-2])) for v in views])[None]
        if self.layout == "image_tiles":  # (1, images, max_image_tiles, 3, h, w): zero tiles after each image's
            resample, most = _get(self.ip, "resample", 2), int(self.ip.max_image_tiles)
            stacks = [torch.stack([self.finish(v, exact, resize_view=False) for v in self.adapter.pixel_views(
                self.front(img, exact, scale), lambda t, s: resize(t, s, resample, exact))]) for img in images]
            return torch.stack([F.pad(t, (0, 0, 0, 0, 0, 0, 0, most - len(t))) for t in stacks])[None]
        if self.layout == "grid_tiles":
            return torch.cat([self.grid_tiles(img, exact, scale) for img in images])
        views = [v for img in images for v in self.pan_and_scan(img, exact, scale)]
        if self.layout == "patches":
            return torch.cat([self.patchify(v) for v in views])
        if self.layout == "padded_patches":  # (images, max_num_patches, patch * patch * C), zero rows after
            ps, most = int(self.ip.patch_size), int(self.ip.max_num_patches)
            rows = [v.reshape(v.shape[0], v.shape[1] // ps, ps, v.shape[2] // ps, ps).permute(1, 3, 2, 4, 0)
                    .reshape(-1, ps * ps * v.shape[0]) for v in views]
            return torch.stack([F.pad(r, (0, 0, 0, most - r.shape[0])) for r in rows])
        if _get(self.ip, "do_pad", False):  # transformers pads bottom / right with zeros to the largest image
            h = max(v.shape[-2] for v in views)
            w = max(v.shape[-1] for v in views)
            views = [F.pad(v, (0, w - v.shape[-1], 0, h - v.shape[-2])) for v in views]
        if len({tuple(v.shape) for v in views}) > 1:
            raise InputError("the images resize to different sizes and the processor does not pad them: pass "
                             "images of one size")
        return torch.stack(views)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(C, H, W)`` -> ``(grid_h * grid_w, C * temporal * patch * patch)``: patches in merge-block order,
        the frame repeated ``temporal_patch_size`` times (as the processor lays a still image out)."""
        ps, tp, m = int(self.ip.patch_size), int(self.ip.temporal_patch_size), int(self.ip.merge_size)
        c, h, w = x.shape
        gh, gw = h // ps, w // ps
        p = x.reshape(c, gh // m, m, ps, gw // m, m, ps).permute(1, 4, 2, 5, 0, 3, 6)
        p = p.unsqueeze(5).expand(*p.shape[:5], tp, *p.shape[5:])
        return p.reshape(gh * gw, c * tp * ps * ps)


def check_pixels(pipe: PixelPipeline, batch: Batch, exact: bool = True) -> float:
    """``max |pipe(batch.images) - batch.inputs["pixel_values"]|``; one-line InputError when the layouts differ
    or the difference passes :data:`TOLERANCE` (the pixel-level methods then refuse this family / image)."""
    want = batch.inputs.get("pixel_values")
    if want is None:
        raise InputError("this input has no image pixel_values (a video?): pixel-level methods take still images; "
                         "use a token-level method (saliency, integrated_gradients, smoothgrad) for videos")
    with torch.no_grad():
        ours = pipe([image_tensor(img) for img in batch.images], exact)
    if tuple(ours.shape) != tuple(want.shape):
        raise InputError(f"the differentiable {pipe.family} image pipeline gives pixel_values of shape "
                         f"{tuple(ours.shape)}, the processor {tuple(want.shape)} (tiles or crops it does not re-implement): "
                         "use a token-level method")
    diff = float((ours - want.double().cpu()).abs().max())
    if not diff <= TOLERANCE:
        raise InputError(f"the differentiable {pipe.family} image pipeline differs from the processor by {diff:.3g} "
                         f"(over {TOLERANCE:g}) on this image: use a token-level method")
    return diff

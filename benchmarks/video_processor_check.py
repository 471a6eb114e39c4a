"""mmlens's torchvision-free video inputs against the real transformers video processors (a check, not a timing).

mmlens builds video inputs from the family's PIL image processor (:mod:`mmlens.adapters.video`). Where torchvision
is importable, this script builds each video family's *real* processor (its torchvision video processor with the
tiny model's image settings) and compares, on the tiny models, for 4 frames at the tiny size and at a size the
processors must resize: the input ids, the video grid, the pixel tensors (max |difference|, in normalised units)
and the model's answer log-prob.

    PYTHONPATH=/path/to/torchvision:src python -m benchmarks.video_processor_check

torchvision is not an mmlens dependency; install it elsewhere (``pip install --target DIR torchvision``) and put
that folder on PYTHONPATH for this script only. ``--stub-meta`` skips torchvision's operator registrations, which
fail when its wheel was built for another torch (only the image transforms are used here).
"""

from __future__ import annotations

import argparse
import sys
import types

import numpy as np
import torch


def real_processor(family: str, processor):
    """The family's full transformers processor, with a torchvision video processor made from the tiny
    processor's image settings (what a saved checkpoint with both configs would load)."""
    from transformers import (
        LlavaNextVideoProcessor,
        LlavaNextVideoVideoProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2_5_VLProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    ip, tok, template = processor.image_processor, processor.tokenizer, processor.chat_template
    norm = {"image_mean": list(ip.image_mean), "image_std": list(ip.image_std)}
    if family.startswith("qwen"):
        bounds = getattr(processor, "_mmlens_video_settings", {}).get("size") or dict(ip.size)
        settings = {"size": bounds, "patch_size": ip.patch_size, "temporal_patch_size": ip.temporal_patch_size,
                    "merge_size": ip.merge_size, "do_sample_frames": False, **norm}
        if family == "qwen3_vl":
            return Qwen3VLProcessor(image_processor=ip, tokenizer=tok, chat_template=template,
                                    video_processor=Qwen3VLVideoProcessor(**settings))
        cls = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
        return cls(image_processor=ip, tokenizer=tok, chat_template=template,
                   video_processor=Qwen2VLVideoProcessor(**settings))
    if family == "llava_onevision":
        vp = LlavaOnevisionVideoProcessor(size={"height": ip.size["height"], "width": ip.size["width"]}, **norm)
        return LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=template,
                                       num_image_tokens=processor.num_image_tokens,
                                       vision_feature_select_strategy=processor.vision_feature_select_strategy)
    vp = LlavaNextVideoVideoProcessor(size=dict(ip.size), crop_size=dict(ip.crop_size), **norm)
    return LlavaNextVideoProcessor(video_processor=vp, image_processor=ip, tokenizer=tok, chat_template=template,
                                   patch_size=processor.patch_size,
                                   vision_feature_select_strategy=processor.vision_feature_select_strategy,
                                   num_additional_image_tokens=processor.num_additional_image_tokens)


def compare(family: str, size: tuple[int, int]) -> dict:
    from mmlens.adapters.base import video_families  # noqa: F401  (registers the adapters)
    from mmlens.model.video import Video
    from mmlens.testing import tiny_subject
    from mmlens.testing.tiny_models import tiny_video

    subject = tiny_subject(family)
    frames = [f.resize(size) for f in tiny_video(family, 4).frames]
    ours = subject.prepare(Video(frames, fps=2.0), "what is this?", answer="red")
    real = real_processor(family, subject.processor)
    kwargs = {"do_sample_frames": False} if family.startswith("qwen") else {}
    from transformers.video_utils import VideoMetadata

    meta = VideoMetadata(total_num_frames=4, fps=2.0, width=size[0], height=size[1], frames_indices=[0, 1, 2, 3])
    theirs = dict(real(text=ours.text, videos=[np.stack([np.asarray(f) for f in frames])], video_metadata=[meta],
                       return_tensors="pt", **kwargs))
    theirs.pop("video_metadata", None)
    theirs = subject.adapter.extend_inputs(theirs, ours.answer_ids.tolist())
    same_ids = torch.equal(theirs["input_ids"], ours.inputs["input_ids"])
    a, b = ours.inputs["pixel_values_videos"], theirs["pixel_values_videos"]
    row = {"family": family, "frame": f"{size[0]}x{size[1]}", "ids equal": same_ids,
           "pixels shape equal": tuple(a.shape) == tuple(b.shape)}
    if "video_grid_thw" in theirs:
        row["grid (ours / HF)"] = f"{ours.inputs['video_grid_thw'].tolist()} / {theirs['video_grid_thw'].tolist()}"
    if row["pixels shape equal"]:
        row["max |pixel diff|"] = float((a - b).abs().max())
        row["mean |pixel diff|"] = float((a - b).abs().mean())
    if same_ids and row["pixels shape equal"]:
        theirs_batch = type(ours)(**{**ours.__dict__, "inputs": theirs})
        row["answer log-prob (ours / HF)"] = (f"{subject.score(ours).total:.5f} / "
                                              f"{subject.score(theirs_batch).total:.5f}")
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stub-meta", action="store_true", help="skip torchvision's operator registrations")
    args = parser.parse_args(argv)
    if args.stub_meta:
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        raise SystemExit("torchvision is not importable: put a torchvision install on PYTHONPATH for this check")
    torch.set_num_threads(1)
    rows = []
    for family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision", "llava_next_video"):
        from mmlens.testing.tiny_models import tiny_video

        native = tiny_video(family, 1).frames[0].size
        for size in (native, (150, 100)):
            rows.append(compare(family, size))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()

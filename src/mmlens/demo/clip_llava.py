"""``demo:clip-llava``: a LLaVA built the way real ones are, on the demo CLIP (no mask supervision).

Recipe (all through ``python -m mmlens.demo.train --vision-tower demo:clip``):

1. vision tower: the vision half of a CLIP (``demo:clip``, trained contrastively on captions only),
   copied unchanged and **frozen** for the whole run; the LLaVA ``vision_config`` is the CLIP's own,
   so a retrained CLIP of another shape rebuilds with the same command;
2. projector alignment (``--vision-steps``, ``--vision-lr``): a new two-layer projector, the only
   trained part, on the ShapesVQA question/answer loss (language model frozen);
3. instruction tuning (``--steps``, ``--lr``): projector + language model on the questions, no
   per-patch mask loss (pass ``--aux-weight 0``).

The language model starts from ``--init`` (default the demo LLaVA's): it stands in for the
pretrained LLM of a real LLaVA. Features are read as in LLaVA-1.5: the penultimate layer (the CLIP
loss only trains the last layer's CLS output) with the ``"default"`` strategy (CLS dropped, one token
per patch). The tower's last layer is never read, so it is left out (``vision_feature_layer=-1`` of a
tower one layer shorter: the same features, and the shipped model stays under 5 MB).

>>> model, processor = build_clip_llava("demo:clip", "demo")
>>> model.config.vision_feature_layer, processor.num_additional_image_tokens
(-1, 1)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoProcessor,
    CLIPModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from mmlens.errors import InputError

#: LLaVA-1.5's feature layer: the penultimate hidden state of the CLIP vision tower (the last layer of the
#: tower as shipped, which leaves out the CLIP's final layer: nothing reads it).
FEATURE_LAYER = -1


def _folder(name: str) -> Path:
    from mmlens.demo import demo_dir

    path = demo_dir(name) if name.startswith("demo") else Path(name)
    if not (path / "config.json").is_file():
        raise InputError(f"no saved model in {str(path)!r}: pass a demo name (e.g. 'demo:clip') or a model folder")
    return path


def build_clip_llava(vision_tower: str, language_model: str = "demo") -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A LLaVA with ``vision_tower``'s CLIP vision model (frozen), a new projector, ``language_model``'s LM.

    ``vision_tower``: a CLIPModel folder or demo name; ``language_model``: a demo LLaVA folder or name
    (its language model, ``lm_head`` and tokenizer are reused). The image processor is the CLIP's.
    """
    clip = CLIPModel.from_pretrained(_folder(vision_tower))
    lm_path = _folder(language_model)
    donor = LlavaForConditionalGeneration.from_pretrained(lm_path)
    donor_processor = AutoProcessor.from_pretrained(lm_path)
    clip_processor = AutoProcessor.from_pretrained(_folder(vision_tower))
    vision = clip.config.vision_config
    tokenizer = donor_processor.tokenizer
    config = LlavaConfig(
        vision_config={**vision.to_dict(), "num_hidden_layers": vision.num_hidden_layers - 1},
        text_config=donor.config.text_config.to_dict(),
        image_token_id=donor.config.image_token_id,
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        vision_feature_layer=FEATURE_LAYER,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = donor.generation_config
    kept = model.model.vision_tower.state_dict().keys()
    model.model.vision_tower.load_state_dict({k: v for k, v in clip.vision_model.state_dict().items() if k in kept})
    model.model.language_model.load_state_dict(donor.model.language_model.state_dict())
    model.lm_head.load_state_dict(donor.lm_head.state_dict())
    model.model.vision_tower.requires_grad_(False)
    processor = LlavaProcessor(
        image_processor=clip_processor.image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=donor_processor.chat_template,
    )
    return model, processor


def align_projector(model: LlavaForConditionalGeneration, processor: LlavaProcessor, data, cfg) -> None:
    """Stage 1: train only the projector (``cfg.vision_steps`` steps at ``cfg.vision_lr``) on the answers."""
    from mmlens.demo.train import _batches, _optimizer, _step, make_batch

    projector = model.model.multi_modal_projector
    named = list(projector.named_parameters())
    params = [p for _, p in named]
    frozen = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in params)]
    for p in frozen:
        p.requires_grad_(False)
    optimizer, schedule = _optimizer(named, cfg.vision_lr, cfg.vision_steps, cfg)
    start, losses = time.time(), []
    try:
        for step, samples in enumerate(_batches(data, cfg.batch_size, 0, cfg.vision_steps)):
            loss = model(**make_batch(processor, samples)).loss
            _step(loss, params, optimizer, schedule, cfg.grad_clip)
            losses.append(loss.item())
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.vision_steps:
                print(f"align  {step + 1:5d}/{cfg.vision_steps}  loss {np.mean(losses[-cfg.log_every:]):.4f}  "
                      f"{time.time() - start:6.0f}s", flush=True)
    finally:
        for p in frozen:
            p.requires_grad_(True)

"""Gradient methods on dual encoders (CLIP, SigLIP, SigLIP 2): they differentiate the image-caption similarity
w.r.t. the joint input embeddings (``joint.embed``: patch embeddings, caption token embeddings); checked against
torch.autograd through the model's own forward. Methods that need a language model's attention refuse."""

from __future__ import annotations

import pytest
import torch

import mmlens
from mmlens.errors import InputError
from mmlens.testing.tiny_dual import DUAL_FAMILIES, tiny_dual_subject
from mmlens.testing.tiny_models import tiny_images

torch.set_num_threads(1)
CAPTION = "a red cat and a blue dog"


@pytest.fixture(scope="module", params=DUAL_FAMILIES)
def subject(request):
    return tiny_dual_subject(request.param)


def _image():
    return tiny_images("llava")[0]


def _by_hand(subject, image=None, zero: bool = False):
    """The model's own similarity logit (``logits_per_image``) and its gradients w.r.t. both towers' embedding
    outputs, with hooks on the embedding modules and torch.autograd (no mmlens machinery)."""
    m = subject.model
    real = subject.processor(images=[image or _image()], text=[CAPTION], return_tensors="pt",
                             **{"padding": True, **subject.adapter.processor_kwargs()})
    leaves = {}

    def leaf(name):
        def hook(module, args, out):
            leaves[name] = (torch.zeros_like(out) if zero else out.detach()).requires_grad_(True)
            return leaves[name]
        return hook

    handles = [m.vision_model.embeddings.register_forward_hook(leaf("v")),
               m.text_model.embeddings.register_forward_hook(leaf("t"))]
    try:
        s = m(**real).logits_per_image[0, 0]
    finally:
        for h in handles:
            h.remove()
    gv, gt = torch.autograd.grad(s, [leaves["v"], leaves["t"]])
    return s.detach(), leaves["v"].detach()[0], leaves["t"].detach()[0], gv[0], gt[0]


def _split(ex, n_vision: int, n_text: int):
    scores = torch.as_tensor(ex.position_scores[0])
    return scores[:n_vision], scores[n_vision : n_vision + n_text]


def test_saliency_and_input_x_gradient_are_the_similaritys_gradient(subject):
    _, v, t, gv, gt = _by_hand(subject)
    sal = mmlens.explain(subject, _image(), CAPTION, method="saliency", objective="logit")
    ixg = mmlens.explain(subject, _image(), CAPTION, method="input_x_gradient", objective="logit")
    sv, st = _split(sal, len(v), len(t))
    assert torch.allclose(sv, gv.norm(dim=-1), atol=1e-5, rtol=1e-4) and torch.allclose(st, gt.norm(dim=-1), atol=1e-5, rtol=1e-4)
    assert sv.max() > 0 and st.max() > 0
    iv, it = _split(ixg, len(v), len(t))
    assert torch.allclose(iv, (gv * v).sum(-1), atol=1e-5, rtol=1e-4) and torch.allclose(it, (gt * t).sum(-1), atol=1e-5, rtol=1e-4)
    assert sal.position_scores[0, len(v) + len(t) :].max() == 0  # the answer slot is no input
    assert mmlens.count_hooks(subject.model) == 0


def test_integrated_gradients_is_complete(subject):
    """Sum of the image attributions = similarity(image) - similarity(black image), both from the model itself."""
    from PIL import Image

    s, *_ = _by_hand(subject)
    s0, *_ = _by_hand(subject, image=Image.new("RGB", _image().size))
    ex = mmlens.explain(subject, _image(), CAPTION, method="integrated_gradients", objective="logit", steps=24)
    assert abs(float(ex.position_scores[0].sum()) - float(s - s0)) <= 1e-3 * abs(float(s - s0)) + 1e-5
    assert abs(float(s - s0)) > 0.05
    both = mmlens.explain(subject, _image(), CAPTION, method="integrated_gradients", objective="logit",
                          modality="both", steps=24)  # caption tokens from the unk / pad token's embedding
    assert abs(both.extras["convergence_delta"][0]) < 0.01 and abs(both.position_scores[0][both.text_positions]).max() > 0


def test_smoothgrad_without_noise_is_saliency_and_gradcam_maps_patches(subject):
    sal = mmlens.explain(subject, _image(), CAPTION, method="saliency", objective="logit")
    sg = mmlens.explain(subject, _image(), CAPTION, method="smoothgrad", objective="logit", modality="both",
                        nt_samples=2, stdevs=1e-7)
    assert torch.allclose(torch.as_tensor(sg.position_scores), torch.as_tensor(sal.position_scores), rtol=1e-3, atol=1e-5)
    cam = mmlens.explain(subject, _image(), CAPTION, method="gradcam")
    n_image = len(cam.image_positions[0])
    assert (cam.position_scores >= 0).all() and cam.position_scores[0, n_image:].max() == 0
    assert cam.pixel_maps[0][0].shape == (32, 48)


@pytest.mark.parametrize("method", ["attention", "rollout", "attention_x_gradient", "relevancy"])
def test_methods_that_read_a_language_models_attention_refuse_in_one_line(method):
    with pytest.raises(InputError, match="dual encoder has none") as err:
        mmlens.explain(tiny_dual_subject("clip"), _image(), CAPTION, method=method)
    assert "\n" not in str(err.value)

"""Targets are the quantity their definition names: contrasts under their own prefixes, gradient objectives
(relevancy = Chefer et al.'s recursion on the logit), and an empty generated answer refused."""

import pytest
import torch
from conftest import subject_for

import mmlens
from mmlens import InputError
from mmlens.attribution.gradient import INPUT, input_x_gradient
from mmlens.attribution.perturbation import occlusion
from mmlens.model.targets import resolve_targets
from mmlens.perturb.scoring import Evaluator
from mmlens.testing import tiny_subject
from mmlens.testing.tiny_models import FAMILIES, tiny_images

PROMPT = "what color is the cat ?"


@pytest.fixture(scope="module")
def lm64():
    """A tiny LLaVA in float64, so finite differences are exact to ~1e-8."""
    lm = tiny_subject("llava")
    lm.model.double()
    return lm


def direct(lm, images, answer, scale: float = 1.0) -> float:
    """log p(answer) under its own teacher-forced batch (``Subject.score``), the LM-input image embeddings
    scaled by ``scale``."""
    batch = lm.prepare(images, PROMPT, answer=answer)
    with lm.trace() as tr:
        tr.edit(INPUT, scaled(batch, scale))
        return lm.score(batch).total


def scaled(batch, scale):
    pos = batch.image_positions()

    def edit(t):
        t = t.clone()
        t[:, pos] = t[:, pos] * scale
        return t

    return edit


def direct_slope(lm, images, fact, foil) -> float:
    """d/ds [log p(fact) - log p(foil)] at s = 1 when the LM-input image embeddings are scaled by s: two
    separate teacher-forced forwards, each differentiated by autograd through its own answer's log-probs."""
    s = torch.ones((), dtype=torch.float64, requires_grad=True)
    total = 0.0
    for answer, sign in ((fact, 1.0), (foil, -1.0)):
        batch = lm.prepare(images, PROMPT, answer=answer)
        with torch.enable_grad():
            with lm.trace() as tr:
                tr.edit(INPUT, scaled(batch, s))
                logits = lm.forward(batch)[0].double()
            rows = logits[batch.answer_positions - 1].log_softmax(-1)
            lp = rows.gather(-1, batch.answer_ids[:, None])[:, 0].sum()
            (g,) = torch.autograd.grad(lp, s)
        total += sign * float(g)
    return total


@pytest.mark.parametrize("contrast, fact, foil", [("red cat - blue dog", "red cat", "blue dog"),
                                                  ("red cat - blue", "red cat", "blue"),
                                                  ("cat - dog", "red cat", "red dog")])
def test_contrast_perturbation_scores_foil_under_its_own_prefix(lm64, contrast, fact, foil):
    """occlusion's reference value and a perturbed row's value equal the direct difference of two scores."""
    images = tiny_images("llava")
    batch = lm64.prepare(images, PROMPT, answer="red cat")
    targets = resolve_targets(lm64.tokenizer, batch, contrast)
    want = direct(lm64, images, fact) - direct(lm64, images, foil)
    out = occlusion(lm64, batch, targets, patch=16, words=False)
    assert out.extras["reference"][0] == pytest.approx(want, abs=2e-6)
    black = [img.point(lambda v: 0) for img in images]
    got = Evaluator(lm64, batch, targets).values([black, images])  # two rows, each on both sequences
    assert got[0, 0].item() == pytest.approx(direct(lm64, black, fact) - direct(lm64, black, foil), abs=2e-6)
    assert got[1, 0].item() == pytest.approx(want, abs=2e-6)


@pytest.mark.parametrize("contrast, fact, foil", [("red cat - blue dog", "red cat", "blue dog"),
                                                  ("cat - dog", "red cat", "red dog")])
def test_contrast_gradient_is_gradient_of_direct_difference(lm64, contrast, fact, foil):
    """input x gradient summed over image positions is the derivative of the direct difference along the
    image embeddings (d/ds F(s * x_img) at s = 1)."""
    images = tiny_images("llava")
    batch = lm64.prepare(images, PROMPT, answer="red cat")
    targets = resolve_targets(lm64.tokenizer, batch, contrast)
    scores = input_x_gradient(lm64, batch, targets).position_scores[0]
    want = direct_slope(lm64, images, fact, foil)
    assert abs(want) > 1e-3
    assert float(scores[batch.image_positions()].sum()) == pytest.approx(want, rel=1e-5, abs=1e-8)


def test_contrast_integrated_gradients_completeness(lm64):
    """IG of a multi-token contrast: attributions sum to F(input) - F(baseline) with F the direct difference."""
    images = tiny_images("llava")
    ex = mmlens.explain(lm64, images, PROMPT, method="integrated_gradients", answer="red cat",
                        target="red cat - blue dog", steps=64, baseline="zero")
    want = direct(lm64, images, "red cat") - direct(lm64, images, "blue dog")
    want -= direct(lm64, images, "red cat", 0.0) - direct(lm64, images, "blue dog", 0.0)
    assert float(ex.position_scores[0].sum()) == pytest.approx(want, abs=1e-4)
    assert abs(ex.extras["convergence_delta"][0]) < 1e-4


def test_contrast_multi_token_foil_refused_by_attention_gradients():
    lm = tiny_subject("llava")
    with pytest.raises(InputError, match="foil of 2 tokens") as err:
        mmlens.explain(lm, tiny_images("llava"), PROMPT, method="relevancy", answer="red cat",
                       target="red cat - blue dog")
    assert "\n" not in str(err.value)


# -- objectives ---------------------------------------------------------------------------------------------


def chefer_reference(lm, batch, q: int, token: int, objective: str) -> torch.Tensor:
    """Full-matrix Chefer et al. recursion, straight from the definition: every layer's eager attention from
    ``output_attentions`` with ``retain_grad``; R = I; per layer R += mean_heads(clamp(grad * attn, min=0)) @ R;
    returns (R - I)[q]."""
    model = lm.model
    saved = model.config.get_text_config()._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = model(**lm.model_inputs(batch), output_attentions=True, use_cache=False)
        attns = out.attentions
        for a in attns:
            a.retain_grad()
        logits = out.logits[0, q].double()
        value = {"logit": logits[token], "log_prob": logits.log_softmax(-1)[token],
                 "prob": logits.softmax(-1)[token]}[objective]
        value.backward()
    finally:
        model.set_attn_implementation(saved)
    n = batch.seq_len
    r = torch.eye(n, dtype=torch.float64)
    for a in attns:
        cam = (a.grad[0].double() * a[0].detach().double()).clamp(min=0).mean(0)
        r = r + cam @ r
    return (r - torch.eye(n, dtype=torch.float64))[q]


@pytest.mark.parametrize("objective", [None, "logit", "log_prob", "prob"])
def test_relevancy_equals_full_matrix_chefer(objective):
    """relevancy (default: the logit, as the reference) == the direct full-matrix recursion, within 1e-5."""
    lm = tiny_subject("llava")
    images = tiny_images("llava")
    batch = lm.prepare(images, PROMPT, answer="red cat")
    options = {} if objective is None else {"objective": objective}
    ex = mmlens.explain(lm, images, PROMPT, method="relevancy", answer="red cat", target="cat", **options)
    q = int(batch.prompt_len)  # "cat" is answer token 1, predicted at prompt_len
    ref = chefer_reference(lm, batch, q, int(batch.answer_ids[1]), objective or "logit")
    scale = float(ref.abs().max())
    assert scale > 1e-6  # not trivially zero
    err = float((torch.from_numpy(ex.position_scores[0]).double() - ref).abs().max())
    assert err <= 1e-5 * scale  # within 1e-5 relative to the map's largest score (tighter than 1e-5 absolute)


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "gradcam", "integrated_gradients",
                                    "smoothgrad", "attention_x_gradient", "relevancy"])
def test_objective_option_of_every_gradient_method(method):
    lm = tiny_subject("llava")
    with pytest.raises(InputError, match="objective='softmax' is not an option") as err:
        mmlens.explain(lm, tiny_images("llava"), PROMPT, method=method, answer="red", objective="softmax")
    assert "\n" not in str(err.value)


def test_objective_changes_saliency_by_the_chain_rule():
    """d logit/dx and d log p/dx differ; d p/dx = p * d log p/dx exactly."""
    lm = tiny_subject("llava")
    images = tiny_images("llava")
    run = {o: mmlens.explain(lm, images, PROMPT, method="input_x_gradient", answer="red", objective=o).position_scores[0]
           for o in ("logit", "log_prob", "prob")}
    p = float(torch.tensor(lm.score(lm.prepare(images, PROMPT, answer="red")).total).exp())
    torch.testing.assert_close(torch.from_numpy(run["prob"]), p * torch.from_numpy(run["log_prob"]),
                               atol=1e-6, rtol=1e-4)
    assert abs(run["logit"] - run["log_prob"]).max() > 1e-4


# -- empty generated answer ------------------------------------------------------------------------------------


def eos_first_subject():
    """A tiny LLaVA whose generation config biases EOS up by 1e4 (transformers' SequenceBiasLogitsProcessor)."""
    lm = tiny_subject("llava")
    lm.model.generation_config.sequence_bias = {(lm.tokenizer.eos_token_id,): 1e4}
    return lm


def test_generate_empty_answer_is_clean():
    lm = eos_first_subject()
    images = tiny_images("llava")
    gen = lm.generate(images, PROMPT, max_new_tokens=4)
    assert gen.text == "" and gen.tokens == [] and gen.token_ids.numel() == 0
    prompt_only = lm.prepare(images, PROMPT)
    assert gen.batch.answer_ids.numel() == 0 and gen.batch.seq_len == prompt_only.seq_len
    assert lm.tokenizer.eos_token_id not in gen.batch.input_ids[0, prompt_only.prompt_len:].tolist()


def test_explain_empty_generated_answer_is_one_clear_error():
    lm = eos_first_subject()
    with pytest.raises(InputError, match="generated answer is empty") as err:
        mmlens.explain(lm, tiny_images("llava"), PROMPT, method="saliency")
    assert "\n" not in str(err.value) and "answer=" in str(err.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_contrast_in_every_family(family):
    """Perturbation rows and the input x gradient of "red cat - blue dog" match the two direct scores in
    every family (token types, Qwen's image grids and PaliGemma's prefix attention included)."""
    lm, images = subject_for(family), tiny_images(family)
    batch = lm.prepare(images, PROMPT, answer="red cat")
    targets = resolve_targets(lm.tokenizer, batch, "red cat - blue dog")
    black = [img.point(lambda v: 0) for img in images]
    got = Evaluator(lm, batch, targets).values([images, black])[:, 0]
    for row, imgs in enumerate((images, black)):
        assert got[row].item() == pytest.approx(direct(lm, imgs, "red cat") - direct(lm, imgs, "blue dog"), abs=2e-5)
    scores = input_x_gradient(lm, batch, targets).position_scores[0]
    want = direct_slope(lm, images, "red cat", "blue dog")
    assert float(scores[batch.image_positions()].sum()) == pytest.approx(want, rel=1e-3, abs=1e-6)


def test_dataset_runs_skip_samples_with_an_empty_generated_answer():
    """One sample the model answers with nothing must not end a dataset run (there is nothing to explain)."""
    from mmlens.model.samples import iter_batches

    lm = eos_first_subject()
    images = tiny_images("llava")
    samples = [(images, PROMPT), (images, PROMPT, "red cat")]
    assert [i for i, _ in iter_batches(lm, samples)] == []  # both generated answers are empty
    got = list(iter_batches(lm, samples, answer="given"))  # sample 0 has no given answer: generated, empty
    assert [i for i, _ in got] == [1] and got[0][1].answer_ids.numel() == 2


def test_index_targets_pick_a_repeated_token():
    """"#i" / "#i-j" name answer tokens by index: the second "red" of "red cat red" is not the first."""
    lm = subject_for("llava")
    batch = lm.prepare(tiny_images("llava"), PROMPT, answer="red cat red")
    assert resolve_targets(lm.tokenizer, batch, "red")[0].indices == (0,)
    second = resolve_targets(lm.tokenizer, batch, "#2")[0]
    assert second.indices == (2,) and second.label == "red"
    assert resolve_targets(lm.tokenizer, batch, "#1-2")[0].indices == (1, 2)
    with pytest.raises(InputError, match="not a span"):
        resolve_targets(lm.tokenizer, batch, "#3")

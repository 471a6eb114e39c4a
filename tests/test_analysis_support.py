"""Regression tests for what docs/analysis_support.py found (every analysis x every family runs or refuses in one
line), and the sync check of the table it writes (docs/ANALYSES.md)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import subject_for
from typer.testing import CliRunner

import mmlens
from mmlens import InputError
from mmlens.cli import app
from mmlens.data.shapes_vqa import ShapesVQA
from mmlens.model.positions import group_rows
from mmlens.testing.tiny_dual import DUAL_FAMILIES, tiny_dual_subject
from mmlens.testing.tiny_models import FAMILIES, tiny_images

ROOT = Path(__file__).resolve().parents[1]
IMAGE = tiny_images("llava", 1)[0]
PROMPT = "what color is the cat ?"


def _lm_calls(s, batch):
    """Every language-model analysis, called as a user would (the answer slot left out: a dual encoder's)."""
    from mmlens.layer.attention_knockout import attention_knockout
    from mmlens.layer.causal_trace import causal_trace
    from mmlens.layer.heads import head_ablation, head_image_share
    from mmlens.layer.logit_lens import logit_lens
    from mmlens.neuron.dataset import neuron_specificity, top_activating_patches
    from mmlens.neuron.scores import ablate_neurons, neuron_scores
    from mmlens.token.pruning import pruning_curve

    samples = [(IMAGE, "a red cat")]
    return {
        "the logit lens": lambda: logit_lens(s, batch),
        "causal tracing": lambda: causal_trace(s, batch),
        "attention knockout": lambda: attention_knockout(s, batch),
        "head_image_share": lambda: head_image_share(s, batch),
        "head_ablation": lambda: head_ablation(s, batch),
        "neuron_scores": lambda: neuron_scores(s, batch),
        "ablate_neurons": lambda: ablate_neurons(s, batch, [(0, 0)]),
        "top_activating_patches": lambda: top_activating_patches(s, samples, layer=0, neuron=0),
        "neuron_specificity": lambda: neuron_specificity(s, samples, layer=0),
        "token pruning": lambda: pruning_curve(s, batch),
        "generate_explained": lambda: mmlens.generate_explained(s, IMAGE, "a red cat", max_new_tokens=2),
        "generate_with": lambda: mmlens.generate_with(s, IMAGE, "a red cat", max_new_tokens=2, vcd=mmlens.VCD()),
        "steering_vector": lambda: mmlens.steering_vector(s, [batch], [batch], layer=0),
        "the tuned lens": lambda: mmlens.train_tuned_lens(s, samples, show=False),
        "lens_kl": lambda: mmlens.lens_kl(s, samples),
        "ce_recovered": lambda: mmlens.ce_recovered(s, lambda x: x, samples, "vision.blocks.0.resid_post"),
    }


@pytest.mark.parametrize("family", DUAL_FAMILIES)
def test_language_model_analyses_refuse_on_a_dual_encoder_in_one_line_naming_the_analysis(family):
    s = tiny_dual_subject(family)
    batch = s.prepare(IMAGE, "a red cat")
    assert s.n_layers == 0 and batch.seq_len > 0  # no language model: what used to crash or read "0..-1"
    calls = _lm_calls(s, batch)
    assert len(calls) == 16
    for what, call in calls.items():
        with pytest.raises(InputError) as err:
            call()
        message = str(err.value)
        assert len(message.splitlines()) == 1 and message.startswith(what), message
        assert f"this {family} model is an image-text dual encoder" in message and "0..-1" not in message
        assert mmlens.count_hooks(s.model) == 0
    # the dataset-level runs refuse the same way before loading any sample
    for run in (lambda out: mmlens.run_pruning_curve(s, out, n=1, after_layer=1),
                lambda out: mmlens.run_head_stats(s, out, n=1)):
        with pytest.raises(InputError, match=r"^the dataset statistic \w+ reads a language model"):
            run(ROOT / "never-written")
    assert not (ROOT / "never-written").exists()


def test_unknown_hook_point_on_a_dual_encoder_names_its_real_points():
    s = tiny_dual_subject("clip")
    with pytest.raises(InputError) as err, s.trace() as tr:
        tr.capture("lm.blocks.0.resid_post")
    message = str(err.value)
    names = re.findall(r"'([\w.]+)'", message)[1:]
    assert len(names) == 2 and all(n in s.hook_points() for n in names), message
    assert "no language model" in message and "{0..-1}" not in message
    assert mmlens.count_hooks(s.model) == 0


def test_cross_attention_images_have_no_image_rows_and_all_rows_stay_in_the_sequence():
    s = subject_for("mllama")
    sample = ShapesVQA(seed=0).sample(0)
    batch = s.prepare(sample.image, sample.question, answer=sample.answer)
    assert batch.in_key_space and int(batch.key_positions().max()) >= batch.seq_len  # keys index past the sequence
    for group in ("image", "object"):
        with pytest.raises(InputError, match=f"position group '{group}' needs image tokens"):
            group_rows(group, sample, batch, s.tokenizer)
    rows = group_rows("all", sample, batch, s.tokenizer)  # used to index the sequence with key positions
    assert [r["position"] for r in rows] == list(range(batch.seq_len))
    assert all(r["grid"] == -1 for r in rows)
    assert len(group_rows("text", sample, batch, s.tokenizer)) == batch.seq_len
    # the question's rows are its words (the image is one text token before it, no placeholder expansion)
    question = group_rows("question", sample, batch, s.tokenizer)
    assert [r["token"] for r in question] == sample.question.replace("?", " ?").split()
    assert [r["position"] for r in question] == list(range(question[0]["position"], question[-1]["position"] + 1))


def test_cross_attention_activations_collect_question_rows_equal_to_a_plain_forward(tmp_path):
    s = subject_for("mllama")
    mmlens.collect_activations(s, "lm.blocks.1.resid_post", "question", tmp_path / "q", n=2, batch_size=2,
                               show_progress=False)  # used to fail reading image positions of a key-space batch
    x, meta = mmlens.ActivationReader(tmp_path / "q").load("lm.blocks.1.resid_post")
    from mmlens.evaluation.benchmark import shapes_image_size

    sample = ShapesVQA(image_size=shapes_image_size(s), seed=0).sample(1)
    batch = s.prepare(sample.image, sample.question)
    with s.trace() as tr:
        tr.capture("lm.blocks.1.resid_post")
        s.forward(batch)
    keep = meta["index"] == 1
    rows = torch.as_tensor(np.asarray(meta["position"][keep]))
    want = tr["lm.blocks.1.resid_post"][0, rows].float()
    assert int(keep.sum()) == len(sample.question.replace("?", " ?").split())
    assert torch.allclose(torch.as_tensor(x[keep]), want, atol=1e-5)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_mllm_decomposition_counts_the_blocks_it_covers(family, tmp_path):
    from mmlens.embedding.plots import decomposition_figure

    s = subject_for(family)
    dec = mmlens.decompose_embedding(s, tiny_images(family, 1), show=False)
    layers = {int(m.group(1)) for n in dec.names if (m := re.match(r"L(\d+)\.", n))}
    assert layers == set(range(dec.n_layers)) and dec.n_layers >= 1  # llava reads block 0 of 2 (layer -2)
    assert len(dec.heads()) == dec.n_layers * dec.n_heads
    assert dec.error() < 1e-3 * float(dec.embedding.norm())
    decomposition_figure(dec).savefig(tmp_path / "d.png")  # used to fail: 'L1.H0' is not in list
    assert (tmp_path / "d.png").stat().st_size > 1000


def test_a_subcommand_usage_error_names_the_whole_command():
    result = CliRunner().invoke(app, ["dataset-stats", "neurons"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "mmlens dataset-stats neurons --help" in errors[0]


def _script():
    spec = importlib.util.spec_from_file_location("analysis_support", ROOT / "docs" / "analysis_support.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_analyses_table_names_every_family_analysis_and_command_and_holds_no_crash():
    script = _script()
    text = (ROOT / "docs" / "ANALYSES.md").read_text(encoding="utf-8")
    assert "CRASH" not in text, "a cell crashed: fix it, rerun `PYTHONPATH=src python docs/analysis_support.py`"
    tables = [[ln for ln in part.split("\n\n", 2)[1].splitlines()] for part in text.split("## ")[1:]]
    expected = ([a[0] for a in script.ANALYSES], [c[0] for c in script.COMMANDS])
    for lines, rows in zip(tables, expected, strict=True):
        assert re.findall(r"`(\w+)`", lines[0]) == [*FAMILIES, *DUAL_FAMILIES], "rerun docs/analysis_support.py"
        assert [re.match(r"\| `([^`]+)` \|", ln).group(1) for ln in lines[2:]] == rows, "rerun the script"
        assert all(len(ln.strip("|").split("|")) == len(FAMILIES) + len(DUAL_FAMILIES) + 1 for ln in lines)
    assert "docs/ANALYSES.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_cli_shapes_images_follow_a_vision_tower_whose_image_size_is_height_and_width(tmp_path):
    """InternVL's vision config names ``image_size`` as ``[H, W]``: `embed` and `sae train` used to crash on it."""
    import json

    from mmlens.cli_options import shapes_side
    from mmlens.testing.tiny_models import tiny_model_and_processor

    model, processor = tiny_model_and_processor("internvl")
    side = model.config.vision_config.image_size
    assert isinstance(side, (list, tuple)) and shapes_side(model.config.vision_config) == max(side)
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    runner = CliRunner()
    result = runner.invoke(app, ["embed", "decompose", "-m", str(tmp_path / "m"), "--shapes", "2",
                                 "-o", str(tmp_path / "dec.png")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "dec.json").read_text())
    assert summary["n_images"] == 2 and summary["reconstruction_error"] < 1e-3
    result = runner.invoke(app, ["sae", "train", "-m", str(tmp_path / "m"), "--hook", "lm.blocks.0.resid_post",
                                 "--n", "2", "--eval-n", "1", "--d-sae", "8", "--k", "2", "-o", str(tmp_path / "sae")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["d_sae"] == 8


def test_sequence_image_analyses_on_cross_attention_images_name_themselves_and_their_alternative_runs():
    from mmlens.layer.heads import head_ablation, head_image_share
    from mmlens.layer.logit_lens import logit_lens
    from mmlens.neuron.dataset import neuron_specificity, top_activating_patches
    from mmlens.token.pruning import pruning_curve

    s = subject_for("mllama")
    images = tiny_images("mllama", 1)
    batch = s.prepare(images, PROMPT, answer="red")
    samples = [(images[0], PROMPT, "red")]
    refusals = {
        "the logit lens' image map": lambda: logit_lens(s, batch).image_map(batch),
        "head_image_share": lambda: head_image_share(s, batch),
        "top_patches": lambda: top_activating_patches(s, samples, layer=0, neuron=0, show_progress=False),
        "neuron_specificity over image vs text tokens": lambda: neuron_specificity(s, samples, layer=0),
        "token pruning": lambda: pruning_curve(s, batch, after_layer=1),
        "grounding signals": lambda: mmlens.generate_explained(s, images, PROMPT, max_new_tokens=2),
    }
    for what, call in refusals.items():
        with pytest.raises(InputError) as err:
            call()
        assert str(err.value).startswith(what) and len(str(err.value).splitlines()) == 1, str(err.value)
        assert "cross-attention keys" in str(err.value) and mmlens.count_hooks(s.model) == 0
    # what the refusals suggest instead runs
    heads = head_ablation(s, batch, layers=[1])
    assert heads.values.shape[0] == 1 and torch.isfinite(heads.values).all()
    spec = neuron_specificity(s, {"a": samples, "b": samples}, layer=0, show_progress=False)
    assert spec.tokens["a"] == spec.tokens["b"] == batch.prompt_len
    out = mmlens.generate_with(s, images, PROMPT, max_new_tokens=2, vcd=mmlens.VCD())
    assert 1 <= out.token_ids.numel() <= 2


def test_grounding_signals_of_an_empty_generated_answer_are_empty():
    """The tiny LLaVA-OneVision stops at once on this video: the distorted run used to be read at a row it never
    had (IndexError)."""
    from mmlens.testing.tiny_models import tiny_video

    s = subject_for("llava_onevision")
    video = tiny_video("llava_onevision", 3)
    assert s.generate(video, "what is this ?", max_new_tokens=2).token_ids.numel() == 0
    result = mmlens.generate_explained(s, video, "what is this ?", max_new_tokens=2)
    assert result.tokens == [] and all(values == [] for values in result.to_dict()["signals"].values())
    assert "<html" in result.html() and mmlens.count_hooks(s.model) == 0


def test_a_generated_image_placeholder_ends_the_answer():
    """The tiny Qwen3-VL emits its image placeholder on ShapesVQA sample 0: teacher-forcing that answer refused
    ("leave it out of the answer"), which stopped every dataset run that explains the model's own answer."""
    from mmlens.evaluation.benchmark import shapes_image_size

    s = subject_for("qwen3_vl")
    sample = ShapesVQA(image_size=shapes_image_size(s), seed=0).sample(0)
    batch = s.prepare(sample.image, sample.question)
    raw = s.model.generate(**s.model_inputs(batch), max_new_tokens=8, do_sample=False)[0, batch.prompt_len:].tolist()
    placeholder = s.adapter.image_token_id
    assert placeholder in raw and not set(raw[: raw.index(placeholder)]) & s._stop_ids()
    gen = s.generate(sample.image, sample.question, max_new_tokens=8)
    assert gen.token_ids.tolist() == raw[: raw.index(placeholder)]
    assert gen.batch.answer_ids.tolist() == gen.token_ids.tolist()


def test_zero_shot_on_an_mllm_names_zero_shot_not_candidates():
    s = subject_for("paligemma")
    with pytest.raises(InputError) as err:
        mmlens.zero_shot(s, IMAGE, ["a red cat", "a blue dog"])
    message = str(err.value)
    assert message.startswith("zero_shot ") and "paligemma model has no text tower" in message
    assert "candidates" not in message and len(message.splitlines()) == 1
    probs = mmlens.zero_shot(tiny_dual_subject("siglip"), IMAGE, ["a red cat", "a blue dog"]).probs
    assert sum(probs) == pytest.approx(1.0)


def test_benchmark_on_a_dual_encoder_refuses_before_any_sample(tmp_path):
    from mmlens.evaluation.benchmark import run_benchmark

    with pytest.raises(InputError) as err:
        run_benchmark(tiny_dual_subject("clip"), methods="saliency", n=1, sanity_n=0, out=tmp_path / "bench")
    message = str(err.value)  # it used to fail at sample 0 suggesting answer='<match>', which the CLI cannot pass
    assert message.startswith("the benchmark explains") and "clip model is an image-text dual encoder" in message
    assert len(message.splitlines()) == 1 and not (tmp_path / "bench").exists()

"""Sparse autoencoders: constraints, TopK sparsity, training on a known dictionary, SAELens-format round trip,
CE recovered, feature interventions, feature views and bad input."""

import json

import pytest
import torch
from conftest import subject_for

from mmlens.errors import InputError
from mmlens.hooks.tracing import count_hooks
from mmlens.neuron.sae import (
    SparseAutoencoder,
    ce_recovered,
    load_sae,
    reconstruction_metrics,
    save_sae,
    train_sae,
)
from mmlens.neuron.sae.features import auroc, logit_effect, match_concepts, top_tokens
from mmlens.neuron.sae.intervene import feature_edit, generate_with_feature
from mmlens.runs.sae_run import activation_tensors, collect_sae_activations, collect_tokens
from mmlens.testing.tiny_models import tiny_images

HOOK = "lm.blocks.0.resid_post"


def _sparse_data(n=4096, d=12, atoms=24, active=2, seed=0):
    """Rows that are sums of ``active`` of ``atoms`` unit directions with positive weights: a known dictionary."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    idx = torch.rand(n, atoms, generator=g).argsort(1)[:, :active]
    coef = torch.zeros(n, atoms).scatter_(1, idx, 1 + torch.rand(n, active, generator=g))
    return coef @ dictionary, dictionary


def _samples(n=3):
    return [(im, "what color is the cat?", "red") for im in tiny_images("llava", n)]


def test_shapes_constraints_and_topk_exact_k():
    sae = SparseAutoencoder(d_in=8, d_sae=32, architecture="topk", k=5, seed=1)
    assert sae.W_enc.shape == (8, 32) and sae.W_dec.shape == (32, 8) and sae.b_enc.shape == (32,)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)
    with torch.no_grad():
        sae.b_enc.fill_(50.0)  # every pre-activation positive: exactly k survive
    f = sae.encode(torch.randn(40, 8))
    assert ((f != 0).sum(-1) == 5).all()
    pre = sae.pre_acts(torch.randn(40, 8))
    kept = sae.activate(pre)
    assert torch.equal(kept.topk(5, dim=-1).values, pre.topk(5, dim=-1).values)  # the largest ones
    values, index = sae.topk_parts(pre)
    assert torch.allclose(sae.decode_sparse(values, index), sae.decode(kept), atol=1e-5)
    relu = SparseAutoencoder(8, 32, architecture="standard", seed=1)
    x = torch.randn(6, 8)
    assert torch.equal(relu.encode(x), relu.pre_acts(x).relu())


def test_training_recovers_a_known_dictionary_and_keeps_unit_decoder_norms():
    data, dictionary = _sparse_data()
    run = train_sae([data[i:i + 512] for i in range(0, len(data), 512)], d_sae=48, k=2, epochs=15, batch_size=256,
                    lr=3e-3, seed=0, dead_after=2000, show_progress=False)
    sae = run.sae
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(48), atol=1e-5)
    m = reconstruction_metrics(sae, [data])
    assert m["explained_variance"] > 0.9 and m["l0"] <= 2.0
    # most true atoms have a decoder row pointing at them
    cos = (dictionary @ sae.W_dec.detach().t()).max(1).values
    assert float((cos > 0.9).float().mean()) >= 0.75
    assert run.throughput > 0 and run.history[-1]["nmse"] < run.history[0]["nmse"]
    # seeded: the same run again gives the same weights
    again = train_sae([data[i:i + 512] for i in range(0, len(data), 512)], d_sae=48, k=2, epochs=1, batch_size=256,
                      lr=3e-3, seed=0, show_progress=False)
    once = train_sae([data[i:i + 512] for i in range(0, len(data), 512)], d_sae=48, k=2, epochs=1, batch_size=256,
                     lr=3e-3, seed=0, show_progress=False)
    assert torch.equal(again.sae.W_dec, once.sae.W_dec)


def test_relu_l1_sparsity_grows_with_the_penalty():
    data, _ = _sparse_data(n=2048)
    chunks = [data[i:i + 512] for i in range(0, len(data), 512)]
    l0 = []
    for l1 in (0.01, 1.0):
        run = train_sae(chunks, d_sae=32, architecture="standard", l1=l1, epochs=6, batch_size=256, lr=3e-3,
                        resample_every=20, show_progress=False)
        l0.append(reconstruction_metrics(run.sae, [data])["l0"])
    assert l0[1] < l0[0]


def test_save_load_round_trip_in_saelens_format(tmp_path):
    sae = SparseAutoencoder(10, 20, "topk", k=3, hook_name=HOOK, seed=2, meta={"model": "tiny"})
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    folder = save_sae(sae, tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["d_in"] == 10 and cfg["d_sae"] == 20 and cfg["architecture"] == "topk" and cfg["k"] == 3
    assert cfg["metadata"]["hook_name"] == HOOK and cfg["hook_name"] == HOOK
    from safetensors.torch import load_file

    assert sorted(load_file(str(folder / "sae_weights.safetensors"))) == ["W_dec", "W_enc", "b_dec", "b_enc"]
    back = load_sae(folder)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert (getattr(back, name) - getattr(sae, name)).abs().max() <= 1e-7
    x = torch.randn(7, 10)
    assert (back(x) - sae(x)).abs().max() <= 1e-6 and back.hook_name == HOOK and back.k == 3


def test_saelens_own_loader_reads_our_file_and_we_read_theirs(tmp_path):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (it pulls TransformerLens, wandb, "
                                   "datasets): the format test above checks its keys and names")
    x = torch.randn(4, 6)
    for arch in ("topk", "standard"):
        sae = SparseAutoencoder(6, 12, arch, k=2, hook_name=HOOK, seed=0)
        theirs = sae_lens.SAE.load_from_disk(str(save_sae(sae, tmp_path / arch)))
        assert theirs.cfg.architecture() == arch and theirs.cfg.metadata.hook_name == HOOK
        assert torch.allclose(theirs.encode(x), sae.encode(x), atol=1e-6)
        assert torch.allclose(theirs.decode(sae.encode(x)), sae(x), atol=1e-6)
        theirs.save_model(str(tmp_path / f"{arch}_theirs"))
        ours = load_sae(tmp_path / f"{arch}_theirs")
        assert ours.architecture == arch and ours.hook_name == HOOK
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)


def test_ce_recovered_identity_is_one_and_hooks_are_removed():
    subject = subject_for("llava")
    out = ce_recovered(subject, lambda x: x, _samples(2), HOOK)
    assert out["ce_recovered"] == 1.0 and out["ce_zero"] != out["ce_clean"]  # a random model: either way
    assert count_hooks(subject.model) == 0
    wrong = SparseAutoencoder(7, 14, k=2, hook_name="lm.blocks.9.resid_post")
    with pytest.raises(InputError, match="train or load an SAE for lm.blocks.0.resid_post"):
        ce_recovered(subject, wrong, _samples(1), HOOK)
    assert count_hooks(subject.model) == 0


def test_zero_steer_is_bit_identical_and_clamp_sets_the_feature():
    subject = subject_for("llava")
    batches = [collect_tokens(subject, _samples(2), HOOK).acts]
    run = train_sae(batches, d_sae=16, k=4, epochs=2, batch_size=64, hook_name=HOOK, show_progress=False)
    sae = run.sae
    image, prompt, _ = _samples(1)[0]
    batch = subject.prepare(image, prompt)
    clean = subject.forward(batch)
    with subject.trace() as tr:
        tr.edit(HOOK, feature_edit(sae, 3, "steer", 0.0))
        steered = subject.forward(batch)
    assert torch.equal(clean, steered)
    assert generate_with_feature(subject, image, prompt, sae, 3, "steer", 0.0, positions="all").token_ids.tolist() == \
        subject.generate(image, prompt, max_new_tokens=8).token_ids.tolist()
    x = batches[0]
    for mode, value in (("clamp", 7.5), ("ablate", 0.0)):
        edited = feature_edit(sae, 3, mode, value)(x)
        # the edit moves x along w_dec[3] only; re-encoding reads the target back where the feature stays in the top-k
        assert torch.allclose((edited - x) @ sae.W_dec[3].detach(),
                              (value - sae.encode(x)[:, 3]), atol=1e-3)
    rnd = feature_edit(sae, 3, "random", 7.5, seed=1)(x)
    assert torch.allclose((rnd - x).norm(dim=-1), (feature_edit(sae, 3, "clamp", 7.5)(x) - x).norm(dim=-1), atol=1e-3)
    assert count_hooks(subject.model) == 0


def test_feature_views_and_auroc_equal_sklearn():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (60, 3), generator=g).float()  # many ties
    labels = torch.rand(60, generator=g) > 0.6
    ours = auroc(scores, labels)
    for j in range(3):
        assert abs(float(ours[j]) - roc_auc_score(labels.numpy(), scores[:, j].numpy())) < 1e-6
    subject = subject_for("llava")
    table = collect_tokens(subject, _samples(2), HOOK)
    run = train_sae([table.acts], d_sae=16, k=4, epochs=3, batch_size=64, hook_name=HOOK, show_progress=False)
    hits = top_tokens(run.sae, table, 0, k=3)
    assert all(h.box is not None for h in hits) and [h.activation for h in hits] == sorted(
        [h.activation for h in hits], reverse=True)
    effect = logit_effect(subject, run.sae, 0, k=3)
    assert len(effect["up"]) == 3 and effect["up"][0][1] >= effect["down"][0][1]
    table.labels["half"] = table.image_token & (table.position % 2 == 0)
    (m,) = match_concepts(run.sae, table, ["half"])
    assert 0.0 <= m.auroc <= 1.0 and 0.0 <= m.random_auroc <= 1.0


def test_bad_input_is_one_line(tmp_path):
    subject = subject_for("llava")
    with pytest.raises(InputError, match="'lm.blocks.99.resid_post' does not exist: use one of"):
        collect_tokens(subject, _samples(1), "lm.blocks.99.resid_post")
    with pytest.raises(InputError, match="pass one name"):
        collect_tokens(subject, _samples(1), "lm.blocks.*.resid_post")
    with pytest.raises(InputError, match="not an SAE folder"):
        load_sae(tmp_path)
    with pytest.raises(InputError, match="k=40 is out of range"):
        SparseAutoencoder(4, 8, k=40)
    with pytest.raises(InputError, match="read again"):
        train_sae(iter([torch.randn(8, 4)]), d_sae=8, k=2, epochs=2, show_progress=False)
    with pytest.raises(InputError, match="SAE reads 4"):
        train_sae([torch.randn(8, 4), torch.randn(8, 5)], d_sae=8, k=2, batch_size=4, show_progress=False)
    sae = SparseAutoencoder(4, 8, k=2, hook_name=HOOK)
    folder = save_sae(sae, tmp_path / "s")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_in": 5}))
    with pytest.raises(InputError, match="do not belong together"):
        load_sae(folder)
    with pytest.raises(InputError, match="mode="):
        feature_edit(sae, 0, "boost")


@pytest.fixture
def tiny_cli(monkeypatch):
    import mmlens

    monkeypatch.setattr(mmlens, "load", lambda model: subject_for("llava"))


def test_cli_train_and_inspect_write_files(tiny_cli, tmp_path):
    from typer.testing import CliRunner

    from mmlens.cli import app

    folder = tmp_path / "sae"
    res = CliRunner().invoke(app, ["sae", "train", "--n", "3", "--eval-n", "2", "--epochs", "1", "--d-sae", "16",
                                   "--k", "4", "--out", str(folder)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["l0"] <= 4 and "ce_recovered" in metrics and (folder / "training.png").stat().st_size > 1000
    assert load_sae(folder).hook_name == "lm.blocks.0.resid_post"
    out = tmp_path / "f.png"
    res = CliRunner().invoke(app, ["sae", "inspect", str(folder), "--n", "3", "--features", "0,1", "--top", "2",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.with_suffix(".json").read_text())
    assert [f["feature"] for f in data["features"]] == [0, 1] and out.stat().st_size > 1000
    assert count_hooks(subject_for("llava").model) == 0


@pytest.mark.parametrize("args,msg", [(["train", "--k", "0"], "--k=0"),
                                      (["train", "--hook", "lm.blocks.99.resid_post"], "does not exist"),
                                      (["inspect", "nowhere"], "not an SAE folder")])
def test_cli_bad_input_is_one_line_exit_2(tiny_cli, tmp_path, args, msg):
    from typer.testing import CliRunner

    from mmlens.cli import app

    res = CliRunner().invoke(app, ["sae", *args, "-o", str(tmp_path / ("out" if args[0] == "train" else "out.png"))])
    assert res.exit_code == 2 and msg in res.output and len(res.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_sae_activations_are_the_models_teacher_forced_rows_with_object_labels(tmp_path):
    from mmlens.data.shapes_vqa import ShapesVQA
    from mmlens.model.positions import object_cells

    subject = subject_for("llava")
    samples = list(ShapesVQA(image_size=subject.model.config.vision_config.image_size, seed=0).samples(3))
    reader = collect_sae_activations(subject, samples, HOOK, tmp_path / "acts", show_progress=False)
    table = collect_tokens(subject, samples, HOOK, "image", show_progress=False)
    rows = torch.cat(list(activation_tensors(reader, HOOK, batch_size=7)))
    start = 0
    for i, s in enumerate(samples):
        batch = subject.prepare(s.image, s.question, answer=s.answer)
        with subject.trace() as tr:
            tr.capture(HOOK)
            subject.forward(batch)
        want = tr[HOOK][0].float()
        assert torch.allclose(rows[start:start + batch.seq_len], want, atol=1e-4)  # every position, answer included
        start += batch.seq_len
        mine = table.sample == i
        assert table.position[mine].tolist() == sorted(batch.image_positions().tolist())
        cells = {c["position"]: c["shares"] for c in object_cells(batch, s.objects)}
        for colour, flags in table.labels.items():
            for p, flag in zip(table.position[mine].tolist(), flags[mine].tolist()):
                best = max(range(len(s.objects)), key=lambda k: cells[p][k])
                assert flag == (cells[p][best] >= 0.5 and colour in (s.objects[best]["color"], s.objects[best]["shape"]))
    assert start == len(rows) == reader.n_rows
    assert count_hooks(subject.model) == 0

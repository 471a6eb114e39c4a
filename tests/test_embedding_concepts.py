"""Concept vocabularies and Label-free CBM's concept filters (synthetic embeddings with a known geometry)."""

from __future__ import annotations

import pytest
import torch

from mmlens.data.shapes_vqa import COLORS, SHAPES
from mmlens.embedding import concept_objects, filter_concepts, shapes_vocabulary, train_cbm
from mmlens.errors import InputError


def test_shapes_vocabulary_holds_every_object_once():
    vocab = shapes_vocabulary()
    assert len(vocab) == len(set(vocab)) == len(COLORS) + len(SHAPES) + len(COLORS) * len(SHAPES)
    assert shapes_vocabulary(objects=False) == [*COLORS, *SHAPES]
    pairs = [concept_objects(w) for w in vocab if " " in w]
    assert sorted(pairs) == sorted((c, s) for c in COLORS for s in SHAPES)
    assert concept_objects("a dog") == (None, None) and concept_objects("blue") == ("blue", None)


def _geometry():
    """Classes along axes 0..2; 'near' is 0.95 along class 0; 'dup' copies 'far'; 'far' lies along axis 3."""
    g = torch.Generator().manual_seed(0)
    classes = torch.eye(3, 6)
    near = torch.tensor([0.95, 0.0, 0.0, 0.31, 0.0, 0.0])
    far = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    mixed = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.7, 0.0])
    emb = torch.stack([classes[0], near, far, far + 1e-3 * torch.randn(6, generator=g), mixed])
    return ["red", "crimson", "far", "dup", "red circle"], emb, classes


def test_filter_removes_class_names_synonyms_and_duplicates():
    words, emb, classes = _geometry()
    kept, kept_emb, why = filter_concepts(words, emb, classes, ["red", "green", "blue"], centre=False)
    assert kept == ["far", "red circle"]
    assert torch.equal(kept_emb, emb[[2, 4]])
    assert why["red"] == "is class red" and "to class red" in why["crimson"] and "to concept far" in why["dup"]
    strict, _, why = filter_concepts(words, emb, classes, ["red", "green", "blue"], centre=False, drop_mentions=True)
    assert strict == ["far"] and why["red circle"] == "names class red"
    loose, _, _ = filter_concepts(words, emb, classes, ["red", "green", "blue"], centre=False, class_sim=0.99)
    assert "crimson" in loose  # the threshold decides


def test_filter_refuses_when_nothing_is_left_and_cbm_reports_removed():
    words, emb, classes = _geometry()
    with pytest.raises(InputError, match="every one of the 2 concepts"):
        filter_concepts(["red", "green"], classes[:2], classes, ["red", "green", "blue"])
    with pytest.raises(InputError, match="one embedding each"):
        filter_concepts(words, emb[:2], classes)
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (60,), generator=g)
    images = classes[labels] + 0.1 * torch.randn(60, 6, generator=g)
    cbm = train_cbm(images, labels.tolist(), ["red", "green", "blue"], words, emb, l1=0.01, class_emb=classes)
    assert "red" not in cbm.concepts and cbm.removed["red"] == "is class red"
    assert len(cbm.concepts) + len(cbm.removed) == len(words)

"""The embedding level (survey: Model / Embedding, and Architecture / design): what a vision encoder's image
embedding holds and how it meets text. TextSpan (decomposition, mean ablation, text spans, head maps), SpLiCE,
the modality gap and a label-free concept bottleneck; on CLIP / SigLIP dual encoders and MLLM vision towers.

>>> from mmlens.embedding import decompose, splice, text_spans, train_cbm, modality_gap   # doctest: +SKIP
"""

from mmlens.embedding.ablation import ablation_curves, group_drop, mean_ablate
from mmlens.embedding.cbm import ConceptBottleneck, filter_concepts, linear_probe, train_cbm
from mmlens.embedding.decompose import Decomposition, decompose
from mmlens.embedding.gap import gap_vector, modality_gap
from mmlens.embedding.splice import SpliceResult, splice
from mmlens.embedding.textspan import HeadSpan, TextBank, categorize, head_maps, text_bank, text_spans
from mmlens.embedding.tower import Tower, tower
from mmlens.embedding.vocab import GENERIC_VOCABULARY, check_vocabulary, concept_objects, shapes_vocabulary
from mmlens.embedding.zeroshot import accuracy, class_embeddings

__all__ = ["GENERIC_VOCABULARY", "ConceptBottleneck", "Decomposition", "HeadSpan", "SpliceResult", "TextBank", "Tower",
           "ablation_curves", "accuracy", "categorize", "check_vocabulary", "class_embeddings", "concept_objects",
           "decompose", "filter_concepts", "gap_vector", "group_drop", "head_maps", "linear_probe", "mean_ablate",
           "modality_gap", "shapes_vocabulary", "splice", "text_bank", "text_spans", "tower", "train_cbm"]

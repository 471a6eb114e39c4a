"""The embedding level (survey: Model / Embedding, Architecture / design): what a vision encoder's image
embedding holds and how it meets text. TextSpan, SpLiCE, modality gap, concept bottlenecks."""

from mmlens.embedding.decompose import Decomposition, decompose
from mmlens.embedding.tower import Tower, tower

__all__ = ["Decomposition", "Tower", "decompose", "tower"]

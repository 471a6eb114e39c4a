"""Attribution methods behind :func:`mmlens.explain` (one contract: per-target scores per position).

They span several survey leaves (data / input-output, model / token, model / architecture analysis); each
is registered with its leaf and access tier, so ``mmlens.methods()`` prints them in the survey's tree.
"""

from mmlens.attribution import attention, gradient, relevancy  # noqa: F401  (attention and gradient methods)
from mmlens.attribution import lime, perturbation, perturbation_shap  # noqa: F401  (occlusion, rise, SHAP, LIME)

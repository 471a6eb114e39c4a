"""Attribution methods behind :func:`mmlens.explain` (one contract: per-target scores per position).

They span several survey leaves (data / input-output, model / token, model / architecture analysis); each
is registered with its leaf and access tier, so ``mmlens.methods()`` prints them in the survey's tree.
"""

from mmlens.attribution import (  # noqa: F401  (attention and gradient methods)  # noqa: F401  (occlusion, rise, SHAP, LIME)
    attention,
    gradient,
    lime,
    perturbation,
    perturbation_shap,
    relevancy,
)

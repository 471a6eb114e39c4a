"""Attribution methods behind :func:`mmlens.explain` (one contract: per-target scores per position).

They span several survey leaves (data / input-output, model / token, model / architecture analysis); each
is registered with its leaf and access tier, so ``mmlens.methods()`` prints them in the survey's tree.
"""

from mmlens.attribution import (  # noqa: F401  (each module registers its methods in the catalog)
    attention,
    captum_gradients,
    gradient,
    lime,
    pixel_gradients,
    perturbation,
    perturbation_shap,
    relevancy,
    vision_gradcam,
    vision_relevancy,
)

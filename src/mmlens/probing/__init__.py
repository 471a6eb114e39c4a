"""Probes (survey: Model / Embedding, textual and cross-modal): what a hook point's activations encode, read
with logistic / ridge / MLP probes over seeded splits by image, against Hewitt & Liang's control task.

Array in, result out: the activations come from :func:`mmlens.collect_activations` and the dataset-level run
(collection, labels, the randomised-model baseline) is :func:`mmlens.runs.probe_run.run_probes`.

>>> from mmlens.probing import fit_probe, probe_point, ProbeResult       # doctest: +SKIP
"""

from mmlens.catalog import register_method
from mmlens.probing.fit import KINDS, Probe, fit_fixed, fit_probe
from mmlens.probing.result import ProbeResult
from mmlens.probing.splits import check_classes, control_labels, split_by_image
from mmlens.probing.train import pool_by_sample, probe_point

register_method("probe", leaf="model/embedding/textual", tier="activations", kind="analysis",
                summary="logistic / ridge / MLP probes per layer x position group (object, image, question, answer "
                        "tokens) with splits by image and a control task (selectivity)")(probe_point)

__all__ = ["KINDS", "Probe", "ProbeResult", "check_classes", "control_labels", "fit_fixed", "fit_probe",
           "pool_by_sample", "probe_point", "split_by_image"]

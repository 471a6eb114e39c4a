"""What the benchmark's tables say about each metric: column labels, which samples a metric covers, and the
departures from each metric's reference paper (one line per metric, with the run's options).

>>> label("energy_in_mask"), label("energy_in_mask@model"), label("road:drop")
('energy in mask', 'energy in mask (model evidence)', 'ROAD drop (top-k)')
"""

from __future__ import annotations

from typing import Any

_SAMPLES = {"all": "every sample", "object": "samples whose evidence is one object",
            "sanity": "the first sanity_n samples"}
_LABELS = {"pointing_game": "pointing game", "energy_in_mask": "energy in mask", "topk_iou": "top-k IoU",
           "deletion": "deletion AUC", "insertion": "insertion AUC", "randomisation": "randomisation corr.",
           "max_sensitivity": "max-sensitivity", "sparseness": "sparseness", "road": "ROAD"}


def _curve_note(mode: str) -> Any:
    ref, ref_option = ("black", "black") if mode == "deletion" else ("blurred", "blur")

    def note(opts: dict[str, Any], meta: dict[str, Any]) -> str:
        unit, baseline = opts.get("order", "patch"), opts.get("baseline", "mean")
        if unit == "pixel" and baseline == ref_option:
            return f"as Petsiuk et al.: single pixels ranked by the map, {ref} baseline."
        what = f"{opts.get('cells', 8)} x {opts.get('cells', 8)} patches" if unit == "patch" else "single pixels"
        return (f"Petsiuk et al. rank single pixels and use a {ref} baseline; this run ranks {what} with the "
                f"{baseline} baseline (order=pixel, baseline={ref_option} for the reference).")

    return note


_REFERENCE_NOTES = {
    "pointing_game": lambda o, m: (
        "Zhang et al. count a peak within 15 px (Euclidean) of the object on ~500 px images; this run uses "
        + (f"tolerance_share={o['tolerance_share']}" if o.get("tolerance_share") is not None else
           f"a tolerance of {o.get('tolerance', 0)} px") + " (tolerance_share=0.03 for the reference)."),
    "deletion": _curve_note("deletion"),
    "insertion": _curve_note("insertion"),
    "max_sensitivity": lambda o, m: (
        f"as Yeh et al., the maximum over {o.get('n', 5)} draws uniform in the L-inf ball of radius "
        f"{o.get('radius', 4.0)} (0-255 units); unlike them, the change is divided by ||map||."),
    "randomisation": lambda o, m: (
        "Adebayo et al.'s cascade from the output down (unembedding, LM blocks, token embeddings, projector, "
        "vision blocks, vision embedding); vision blocks the LM never reads are skipped"
        + (f" ({', '.join(m['randomisation_skipped'])})" if m.get("randomisation_skipped") else "")
        + "; norms keep their gains."),
}


#: Column suffixes added to a metric's name: its score against the model's evidence, the gap to the object's
#: score on conflicting samples, and the parts of the ROAD score.
SUFFIX_LABELS = {"@model": "(model evidence)", "@gap": "gap (model - object)",
                 "@weakest": "(weakest part of the model evidence)", ":drop": "drop (top-k)",
                 ":random_drop": "drop (random k)"}


def label(name: str) -> str:
    """The column header of a metric (or of one of its suffixed scores)."""
    for suffix, text in SUFFIX_LABELS.items():
        if name.endswith(suffix):
            return f"{label(name[: -len(suffix)])} {text}"
    return _LABELS.get(name, name.replace("_", " "))


_label = label

"""SAEs on disk in SAELens' format: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

The weights are SAELens' ``W_enc (d_in, d_sae)``, ``b_enc``, ``W_dec (d_sae, d_in)``, ``b_dec``; ``cfg.json`` has
its 6.x keys (``d_in``, ``d_sae``, ``architecture``, ``k`` for TopK, ``apply_b_dec_to_input``,
``normalize_activations``, ``metadata.hook_name`` ...) so ``sae_lens.SAE.load_from_disk(folder)`` reads a
file saved here, and :func:`load_sae` reads SAELens' own files of these two architectures (older files with a
top-level ``hook_name`` / ``hook_point`` too). mmlens' own information (model, training metrics) sits in
``metadata``, which SAELens keeps as free-form fields.

>>> import tempfile
>>> sae = SparseAutoencoder(8, 16, k=2, hook_name="lm.blocks.0.resid_post")
>>> folder = save_sae(sae, tempfile.mkdtemp() + "/sae")
>>> load_sae(folder).hook_name
'lm.blocks.0.resid_post'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mmlens._version import __version__
from mmlens.errors import InputError
from mmlens.neuron.sae.model import ARCHITECTURES, SparseAutoencoder
from mmlens.util.io import atomic_write, check_output_folder, read_json

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
#: the SAELens config format written here (6.x: hook name and model name under ``metadata``)
SAE_LENS_FORMAT = "6.0.0"
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def sae_config(sae: SparseAutoencoder) -> dict[str, Any]:
    """The ``cfg.json`` dictionary of ``sae``."""
    cfg: dict[str, Any] = {
        "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": str(sae.W_enc.dtype).removeprefix("torch."), "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "architecture": sae.architecture, "hook_name": sae.hook_name,
        "metadata": {"sae_lens_version": SAE_LENS_FORMAT, "sae_lens_training_version": SAE_LENS_FORMAT,
                     "hook_name": sae.hook_name, "model_name": sae.meta.get("model", ""),
                     "mmlens_version": __version__, "mmlens": sae.meta},
    }
    if sae.architecture == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    return cfg


def save_sae(sae: SparseAutoencoder, folder: str | os.PathLike) -> Path:
    """Write ``folder/cfg.json`` and ``folder/sae_weights.safetensors`` (each atomically); returns ``folder``."""
    from safetensors.torch import save_file

    folder = check_output_folder(folder, "SAE folder")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: getattr(sae, name).detach().cpu().contiguous() for name in PARAMS}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)), (".safetensors",))
    atomic_write(folder / CFG_FILE, lambda tmp: tmp.write_text(json.dumps(sae_config(sae), indent=1)), (".json",))
    return folder


def _read_cfg(folder: Path) -> dict[str, Any]:
    return read_json(folder / CFG_FILE, "SAE config", "pass a folder written by save_sae or SAELens")


def load_sae(folder: str | os.PathLike) -> SparseAutoencoder:
    """An SAE from an SAELens folder (``topk`` or ``standard`` architecture, no activation normalisation)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CFG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise InputError(f"{str(folder)!r} is not an SAE folder: it needs {CFG_FILE} and {WEIGHTS_FILE} "
                         "(save one with save_sae or mmlens sae train)")
    cfg = _read_cfg(folder)
    meta = cfg.get("metadata") or {}
    arch = cfg.get("architecture", "topk" if cfg.get("activation_fn") == "topk" else "standard")
    if arch not in ARCHITECTURES:
        raise InputError(f"SAE architecture {arch!r} is not supported here: use one of {', '.join(ARCHITECTURES)}")
    if cfg.get("normalize_activations", "none") not in ("none", None, False) or not cfg.get("apply_b_dec_to_input", True):
        raise InputError("this SAE normalises its inputs or skips b_dec on input, which mmlens does not apply: "
                         "fold the normalisation into the weights first")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise InputError("this TopK SAE rescales by decoder norm: fold the norms into W_enc / W_dec first")
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    except Exception as err:  # noqa: BLE001 - any unreadable file is one line
        raise InputError(f"{str(folder)!r} holds an unreadable SAE ({type(err).__name__}): save it again") from None
    k = int(cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 1)
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or ""
    sae = SparseAutoencoder(d_in, d_sae, arch, k=k, hook_name=str(hook), seed=None, meta=meta.get("mmlens") or {})
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():
        if name not in state or tuple(state[name].shape) != shape:
            got = tuple(state[name].shape) if name in state else "missing"
            raise InputError(f"{WEIGHTS_FILE} has {name} {got}, but cfg.json says {shape}: the files do not belong "
                             "together")
    with torch.no_grad():
        for name in PARAMS:
            getattr(sae, name).copy_(state[name].float())
    return sae

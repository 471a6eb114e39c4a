"""``mmlens.load``: a Subject from a hub id, a local folder, ``"demo"``, or a loaded (model, processor)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from mmlens.adapters import adapter_for
from mmlens.errors import InputError, MMLensError
from mmlens.model.subject import Subject, access_tiers

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load(
    model: str | Path | nn.Module | tuple[nn.Module, Any] = "demo",
    processor: Any = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    access: str | list[str] = "all",
    **from_pretrained_kwargs: Any,
) -> Subject:
    """Load a multimodal model as a :class:`Subject`; the family is detected from its config.

    ``model``: ``"demo"`` (the bundled ShapesVQA LLaVA), a hub id or local folder (``from_pretrained``,
    safetensors only unless ``allow_pickle=True``, no remote code unless ``trust_remote_code=True``), or an
    already-loaded model (pass ``processor`` too, or a ``(model, processor)`` tuple). ``access`` limits which
    method tiers may run (e.g. ``"black-box"`` to study the model as if it sat behind an API).

    >>> import mmlens
    >>> lm = mmlens.load("demo")
    >>> lm.family
    'llava'
    """
    if isinstance(model, tuple):
        model, processor = model
    torch_dtype = _dtype(dtype)
    target_device = _device(device)  # checked before any weights are read
    if isinstance(model, nn.Module):
        if processor is None:
            raise InputError("a loaded model needs its processor: call load(model, processor) or load((model, processor))")
        subject = Subject(model, processor)
    else:
        subject = _from_pretrained(str(model), torch_dtype, trust_remote_code, allow_pickle, from_pretrained_kwargs)
    subject.access = access_tiers(access)
    if torch_dtype is not None:
        subject.model.to(torch_dtype)
    if target_device is not None:
        try:
            subject.model.to(target_device)
        except (RuntimeError, AssertionError, ValueError) as err:
            raise InputError(f"cannot move the model to device {str(target_device)!r} ({_first_line(err)}): pass "
                             "a device this machine has, e.g. 'cpu'") from None
    return subject


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _device(device: str | torch.device | None) -> torch.device | None:
    """``device`` parsed and checked to exist on this machine, else a one-line InputError."""
    if device is None or isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise InputError(f"device has type {type(device).__name__}: pass a string such as 'cpu' or 'cuda:0'")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}: pass 'cpu', 'cuda', 'cuda:0', 'mps', ...") from None
    available = {"cpu": True, "meta": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()}
    if not available.get(parsed.type, True):
        raise InputError(f"device {device!r} is not available on this machine: pass 'cpu' or a device it has")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r} does not exist (this machine has {torch.cuda.device_count()} CUDA "
                         "device(s)): pass an existing index")
    return parsed


def _resolve(name: str) -> tuple[str, str]:
    """(path or hub id to load, id to report)."""
    if name == "demo" or name.startswith("demo:"):
        from mmlens.demo import demo_dir

        folder = demo_dir(name)
        if not (folder / "config.json").is_file():
            raise InputError(f"the bundled demo model {name!r} is missing from {folder}: reinstall mmlens or run "
                             "`python -m mmlens.demo.train`")
        return str(folder), name
    path = Path(name).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise InputError(f"{name!r} is a path without config.json: pass a folder saved with save_pretrained")
    return (str(path) if path.exists() else name), name


@contextmanager
def loading_bar(show: bool) -> Iterator[None]:
    """transformers' weight-loading progress bar on or off inside (restored after); mmlens shows bars only on
    a terminal, so logs, pipes and CLI errors stay free of them."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if show else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


def _from_pretrained(name: str, dtype, trust_remote_code: bool, allow_pickle: bool, kwargs: dict) -> Subject:
    path, model_id = _resolve(name)
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise InputError(f"cannot load model {name!r} ({_first_line(err)}): pass a local folder saved with "
                         "save_pretrained, a reachable hub id, or 'demo'") from None
    adapter_cls = adapter_for(config)  # unsupported families fail here, before any weights are read
    model_cls = getattr(transformers, adapter_cls.model_class)
    try:
        with loading_bar(sys.stderr.isatty()):
            model = model_cls.from_pretrained(path, dtype=dtype, use_safetensors=None if allow_pickle else True,
                                              trust_remote_code=trust_remote_code, **kwargs)
    except OSError as err:
        hint = "" if allow_pickle else " (only safetensors weights are read: pass allow_pickle=True to accept .bin files)"
        raise InputError(f"cannot load weights of {name!r}{hint}: {_first_line(err)}") from None
    except MMLensError:
        raise
    except Exception as err:  # noqa: BLE001 - corrupt / truncated safetensors, malformed pickles, shape mismatches
        raise InputError(f"the weights of {name!r} are corrupt or do not match its config ({type(err).__name__}: "
                         f"{_first_line(err)}): re-download or re-save the model") from None
    try:
        processor = adapter_cls.load_processor(path, trust_remote_code=trust_remote_code)
    except MMLensError:
        raise
    except Exception as err:  # noqa: BLE001 - broken tokenizer / processor files
        raise InputError(f"cannot load the processor of {name!r} ({type(err).__name__}: {_first_line(err)}): "
                         "re-save the processor with save_pretrained") from None
    subject = Subject(model, processor, model_id=model_id)
    subject.load_notes.extend(getattr(processor, "_mmlens_notes", []))
    return subject

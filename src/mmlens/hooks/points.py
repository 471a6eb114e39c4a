"""Where a hook point is: the modules an adapter names (:class:`ModelParts`) and the canonical point names
derived from them (:class:`HookPoint`). The meaning of every name is documented in :mod:`mmlens.hooks.tracing`.

>>> from mmlens.testing import tiny_subject                     # doctest: +SKIP
>>> sorted(tiny_subject("llava").adapter.parts().hook_points())[:2]  # doctest: +SKIP
['lm.blocks.0.attn.heads', 'lm.blocks.0.attn.out']
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from mmlens.errors import InputError
from mmlens.hooks.views import RowOrder

__all__ = ["HookPoint", "ModelParts", "check_point", "compact_names", "resolve_points"]


@dataclass(frozen=True)
class HookPoint:
    """A module and which of its tensors the point names: ``output``, ``input``, ``attn_weights``, or
    ``image_features`` (the module's ``get_image_features`` result, flattened to one row per image token).

    ``chunked``: attention that may run in several calls per forward (gathered block-diagonally).
    ``rows``: the module holds its rows permuted; captures and edits see them in canonical order.
    ``flat_keys``: the module's output is ``(batch, ..., d)`` (Mllama's projector: images x tiles x patches);
    captures and edits see it as ``(batch, keys, d)``, one row per cross-attention key.
    """

    module: nn.Module
    kind: str
    chunked: bool = False
    rows: RowOrder | None = None
    flat_keys: bool = False


@dataclass
class ModelParts:
    """The modules an adapter names for its family; hook points are derived from these alone."""

    lm_blocks: nn.ModuleList  # empty for dual encoders (CLIP, SigLIP): no language model
    lm_norm: nn.Module | None
    unembed: nn.Module | None
    vision_blocks: nn.ModuleList | None = None
    vision_embed: nn.Module | None = None
    #: every module / parameter that makes the vision blocks' input, where ``vision_embed`` (the hook point) is
    #: only its last step (a norm after the patch and position embeddings): what model randomisation resets
    #: (:func:`weights_of` joins them; ``None`` entries are skipped)
    vision_stem: tuple[nn.Module | nn.Parameter | None, ...] = ()
    projector: nn.Module | None = None
    lm_attn: str = "self_attn"
    lm_mlp: str = "mlp"
    mlp_down_proj: str = "down_proj"
    attn_out_proj: str = "o_proj"
    vision_attn: str = "self_attn"
    #: the module whose ``get_image_features`` hands image features to the LM (``projector.out``)
    image_features: nn.Module | None = None
    #: vision attention runs in chunks (one call per image / window, as Qwen's towers do)
    vision_attn_chunked: bool = False
    #: the vision blocks hold their patch rows permuted (Qwen2.5-VL's window order)
    vision_rows: RowOrder | None = None
    #: dual encoders: the text tower's blocks (``text.blocks.*``) and both towers' per-head / MLP points
    text_blocks: nn.ModuleList | None = None
    text_embed: nn.Module | None = None
    tower_attn_out: str | None = None  # attention output projection in the towers' blocks (``*.attn.heads``)
    tower_mlp: str | None = None  # MLP of the towers' blocks (``*.mlp.out``)
    #: dual encoders: the joint sequence's input embeddings, both towers' in one tensor (``joint.embed``)
    joint_embed: nn.Module | None = None
    #: cross-attention families (Mllama): the LM blocks' cross-attention attribute (blocks that have it get
    #: ``lm.blocks.{i}.xattn.*`` points, blocks without ``lm_attn`` no ``attn.*`` points) and the module whose
    #: output is the cross-attention states every such block attends to (``xattn.states``)
    lm_cross_attn: str | None = None
    cross_states: nn.Module | None = None

    def mlp_down(self, layer: int) -> nn.Module:
        """LM block ``layer``'s MLP down projection (its input is ``lm.blocks.{layer}.mlp.act``: the neurons)."""
        return getattr(getattr(self.lm_blocks[layer], self.lm_mlp), self.mlp_down_proj)

    def hook_points(self) -> dict[str, HookPoint]:
        points: dict[str, HookPoint] = {}
        if self.joint_embed is not None:
            points["joint.embed"] = HookPoint(self.joint_embed, "output")
        if self.vision_embed is not None:
            points["vision.embed"] = HookPoint(self.vision_embed, "output")
        for i, block in enumerate(self.vision_blocks or []):
            attn, rows = getattr(block, self.vision_attn), self.vision_rows
            points[f"vision.blocks.{i}.resid_post"] = HookPoint(block, "output", rows=rows)
            points[f"vision.blocks.{i}.attn"] = HookPoint(attn, "output", rows=rows)
            points[f"vision.blocks.{i}.attn.weights"] = HookPoint(attn, "attn_weights", self.vision_attn_chunked, rows)
            self._tower_points(points, f"vision.blocks.{i}", block, rows)
        if self.text_embed is not None:
            points["text.embed"] = HookPoint(self.text_embed, "output")
        for i, block in enumerate(self.text_blocks or []):
            attn = getattr(block, self.vision_attn)
            points[f"text.blocks.{i}.resid_pre"] = HookPoint(block, "input")
            points[f"text.blocks.{i}.resid_post"] = HookPoint(block, "output")
            points[f"text.blocks.{i}.attn"] = HookPoint(attn, "output")
            points[f"text.blocks.{i}.attn.weights"] = HookPoint(attn, "attn_weights")
            self._tower_points(points, f"text.blocks.{i}", block, None)
        if self.image_features is not None:
            points["projector.out"] = HookPoint(self.image_features, "image_features")
        elif self.projector is not None:
            points["projector.out"] = HookPoint(self.projector, "output")
        if self.cross_states is not None:
            points["xattn.states"] = HookPoint(self.cross_states, "output", flat_keys=True)
        for i, block in enumerate(self.lm_blocks):
            mlp = getattr(block, self.lm_mlp)
            points[f"lm.blocks.{i}.resid_pre"] = HookPoint(block, "input")
            points[f"lm.blocks.{i}.resid_post"] = HookPoint(block, "output")
            for kind in ("attn", "xattn"):
                attn = getattr(block, self.lm_attn if kind == "attn" else self.lm_cross_attn or "", None)
                if attn is not None:
                    points[f"lm.blocks.{i}.{kind}.out"] = HookPoint(attn, "output")
                    points[f"lm.blocks.{i}.{kind}.weights"] = HookPoint(attn, "attn_weights")
                    points[f"lm.blocks.{i}.{kind}.heads"] = HookPoint(getattr(attn, self.attn_out_proj), "input")
            points[f"lm.blocks.{i}.mlp.act"] = HookPoint(getattr(mlp, self.mlp_down_proj), "input")
            points[f"lm.blocks.{i}.mlp.out"] = HookPoint(mlp, "output")
        if self.lm_norm is not None:
            points["lm.norm.out"] = HookPoint(self.lm_norm, "output")
        if self.unembed is not None:
            points["lm.logits"] = HookPoint(self.unembed, "output")
        return points

    def _tower_points(self, points: dict[str, HookPoint], prefix: str, block: nn.Module, rows: RowOrder | None) -> None:
        """``PREFIX.attn.heads`` (the per-head outputs entering the attention's output projection) and
        ``PREFIX.mlp.out`` of one tower block, where the adapter names those modules."""
        if self.tower_attn_out is not None:
            out_proj = getattr(getattr(block, self.vision_attn), self.tower_attn_out)
            points[f"{prefix}.attn.heads"] = HookPoint(out_proj, "input", rows=rows)
        if self.tower_mlp is not None:
            points[f"{prefix}.mlp.out"] = HookPoint(getattr(block, self.tower_mlp), "output", rows=rows)


#: hook points whose tensors have no per-position rows of the LM sequence
_UNSUPPORTED = re.compile(r"(^vision\.|^text\.|^xattn\.|\.x?attn\.weights$)")


def weights_of(*items: nn.Module | nn.Parameter | None) -> nn.Module:
    """One module whose parameters are those of ``items`` (modules and bare parameters of the model; ``None``
    skipped), for weights that lie in several places (:attr:`ModelParts.vision_stem`). It holds
    references only: the model's own modules and parameters stay where they are."""
    holder = nn.Module()
    holder.modules_ = nn.ModuleList([i for i in items if isinstance(i, nn.Module)])
    holder.params_ = nn.ParameterList([i for i in items if isinstance(i, nn.Parameter)])
    return holder


def compact_names(names: list[str]) -> str:
    """Hook-point names on one line, runs of block indices folded (``lm.blocks.{0..2}.resid_post``).

    >>> compact_names(["projector.out", "lm.blocks.0.mlp.out", "lm.blocks.1.mlp.out"])
    'projector.out, lm.blocks.{0..1}.mlp.out'
    """
    groups: dict[str, list[int]] = {}
    for name in names:
        m = re.search(r"\.(\d+)\.", name)
        key = name if m is None else name[: m.start(1)] + "{}" + name[m.end(1):]
        groups.setdefault(key, []).append(-1 if m is None else int(m.group(1)))
    out = []
    for key, idx in groups.items():
        out.append(key if idx == [-1] else key.replace("{}", f"{{{min(idx)}..{max(idx)}}}" if len(idx) > 1
                                                      else str(idx[0])))
    return ", ".join(out)


def check_point(subject: Any, name: str) -> str:
    """``name`` if it is one collectable hook point of ``subject`` (no glob, no list), else one line listing the
    valid ones: the hook-point validation of every activation reader (probes, SAEs)."""
    if not isinstance(name, str) or any(ch in name for ch in "*?[,"):
        raise InputError(f"hook point {name!r}: pass one name, e.g. 'lm.blocks.1.resid_post'")
    return resolve_points(subject, name)[0]


def resolve_points(subject: Any, pattern: str) -> list[str]:
    """The hook points ``pattern`` names (exact, glob, or comma-separated), in model order; an unknown one is one
    line listing every valid point."""
    every = subject.hook_points()
    usable = [n for n in every if not _UNSUPPORTED.search(n)]
    found: list[str] = []
    for part in [p.strip() for p in str(pattern).split(",") if p.strip()] or [""]:
        hits = [n for n in usable if n == part or fnmatch.fnmatchcase(n, part)]
        if not hits:
            why = "has no per-token rows of the language model's sequence" if part in every else "does not exist"
            raise InputError(f"hook point {part!r} {why}: use one of {compact_names(usable)}")
        found += [h for h in hits if h not in found]
    return [n for n in usable if n in found]

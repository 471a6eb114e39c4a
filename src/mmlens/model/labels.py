"""Human-readable labels for sequence positions: tokens, and image cells as ``img0[r,c]``."""

from __future__ import annotations

from mmlens.model.batch import Batch


def position_labels(tokenizer, batch: Batch) -> list[str]:
    """One label per sequence position: the token text, or ``img{i}[r,c]`` / ``img{i}:sep`` for image tokens.

    >>> position_labels(tok, batch)[:3]          # doctest: +SKIP
    ['user', ':', 'img0[0,0]']
    """
    labels = [t.replace("\n", "\\n") for t in tokenizer.convert_ids_to_tokens(batch.input_ids[0].tolist())]
    for geo in (g for g in batch.geometry if g.space == "sequence"):  # cross-attention keys hold no token
        for g_index, grid in enumerate(geo.grids):
            rows, cols = grid.shape
            prefix = f"img{geo.image_index}" + (f".{grid.kind}" if len(geo.grids) > 1 else "")
            for r in range(rows):
                for c in range(cols):
                    labels[int(grid.positions[r, c])] = f"{prefix}[{r},{c}]"
        for p in geo.separators.tolist():
            labels[p] = f"img{geo.image_index}:sep"
    return labels

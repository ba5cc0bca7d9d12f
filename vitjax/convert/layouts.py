"""Recognising a checkpoint's layout from its keys, and the key table for each layout."""

from __future__ import annotations

from collections.abc import Mapping

from vitjax.convert import timm_vit
from vitjax.convert.read import CheckpointError
from vitjax.convert.table import Rule

# layout -> (a test on the key set that recognises it, its key table)
LAYOUTS: dict[str, tuple] = {
    "timm": (lambda keys: any(k.startswith(("blocks.", "patch_embed.")) for k in keys), timm_vit.RULES),
}


def sniff(tensors: Mapping, spec) -> str:
    """The layout of a checkpoint's keys; refuses layouts that the model's family is not published in."""
    keys = set(tensors)
    found = [name for name, (recognise, _) in LAYOUTS.items() if recognise(keys)]
    if not found:
        sample = ", ".join(sorted(keys)[:8])
        raise CheckpointError(f"no known checkpoint layout has keys like: {sample}")
    layout = found[0]
    if layout not in spec.layouts:
        raise CheckpointError(
            f"this checkpoint is in the {layout!r} layout, but {spec.name} ({spec.family}) is read from "
            f"{', '.join(spec.layouts)} checkpoints: is it a checkpoint of another family?"
        )
    return layout


def rules(layout: str, config) -> list[Rule]:
    return LAYOUTS[layout][1]

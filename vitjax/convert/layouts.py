"""Recognising a checkpoint's layout from its keys, and the key table for each layout."""

from __future__ import annotations

from collections.abc import Mapping

from vitjax.convert import clip, hf_beit, hf_vit, timm_vit, torchvision_resnet
from vitjax.convert.read import CheckpointError
from vitjax.convert.table import Rule

# layout -> (a test on the key set that recognises it, its key table)
LAYOUTS: dict[str, tuple] = {
    # vitjax's own checkpoints (`vitjax convert`) keep the param paths: an identity table.
    "vitjax": (lambda keys: any("/" in k for k in keys), [Rule(r"(.*)", r"\1")]),
    "timm": (lambda keys: any(k.startswith(("blocks.", "patch_embed.")) for k in keys), timm_vit.RULES),
    "hf_beit": (hf_beit.recognise, hf_beit.RULES),
    "hf_vit": (hf_vit.is_hf_vit, hf_vit.HF_VIT),  # ViTModel / DeiTModel (and DINO, hosted as ViTModel)
    "hf_dinov2": (hf_vit.is_hf_dinov2, hf_vit.HF_DINOV2),  # Dinov2Model, Dinov2WithRegistersModel
    # A table may also be a function of the model config (the ResNet's depends on num_classes).
    "torchvision_resnet": (lambda keys: any(k.startswith("layer1.") for k in keys), torchvision_resnet.rules),
    "openai_clip": (clip.recognise_openai, clip.OPENAI_RULES),
    "openai_clip_visual": (clip.recognise_openai_visual, clip.OPENAI_VISUAL_RULES),
    "timm_clip": (clip.recognise_timm, clip.TIMM_RULES),  # timm's keys too: sniff prefers the spec's
}


def sniff(tensors: Mapping, spec) -> str:
    """The layout of a checkpoint's keys; refuses layouts that the model's family is not published in."""
    keys = set(tensors)
    found = [name for name, (recognise, _) in LAYOUTS.items() if recognise(keys)]
    if not found:
        sample = ", ".join(sorted(keys)[:8])
        raise CheckpointError(f"no known checkpoint layout has keys like: {sample}")
    # A key set can fit several layouts (timm's CLIP checkpoints are timm checkpoints with a
    # projection for a head): the one the model's family is published in decides.
    layout = next((name for name in found if name in spec.layouts), found[0])
    if layout != "vitjax" and layout not in spec.layouts:
        raise CheckpointError(
            f"this checkpoint is in the {layout!r} layout, but {spec.name} ({spec.family}) is read from "
            f"{', '.join(spec.layouts)} checkpoints: is it a checkpoint of another family?"
        )
    return layout


def rules(layout: str, config) -> list[Rule]:
    table = LAYOUTS[layout][1]
    return table(config) if callable(table) else table

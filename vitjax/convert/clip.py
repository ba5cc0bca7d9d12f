"""CLIP image towers in OpenAI's layout and in timm's.

OpenAI's layout is what `torch.jit.load("ViT-B-16.pt").state_dict()` holds and what open_clip's
`model.state_dict()` writes: the image tower under `visual.` next to the text tower, which is
ignored. open_clip's `model.visual.state_dict()` gives the same image-tower names without the
prefix (`OPENAI_VISUAL_RULES`); a separate layout, since unprefixed `transformer.resblocks.*` keys
are the text tower's in a whole checkpoint. timm's layout (`_convert_openai_clip`, and the
`timm/vit_*_clip_*` hub files) is timm's ViT table, with the projection stored as a classifier head.
"""

from __future__ import annotations

import numpy as np

from vitjax.convert import timm_vit
from vitjax.convert.read import CheckpointError
from vitjax.convert.table import Rule, conv, ignore, linear
from vitjax.convert.timm_vit import dense, norm


def _class_token(v: np.ndarray) -> np.ndarray:
    return v.reshape(1, 1, -1)  # OpenAI stores the class embedding as (D,)


def _image_tower(prefix: str) -> list[Rule]:
    """OpenAI's image-tower names under `prefix` (a regex)."""
    block = prefix + r"transformer\.resblocks\.(\d+)\."  # \1 is the block index
    return [
        Rule(prefix + r"conv1\.weight", "patch_embed_kernel", conv),  # bias-free
        Rule(prefix + r"class_embedding", "cls_token", _class_token),
        # (1 + N, D) without a batch axis: positions.fit_pos_embed adds it.
        Rule(prefix + r"positional_embedding", "pos_embed"),
        *norm(prefix + r"ln_pre", "norm_pre"),
        *norm(block + r"ln_1", r"blocks_\1/norm1"),
        # torch's MultiheadAttention stacks q, k, v rows, heads inside each: timm's fused qkv order.
        Rule(block + r"attn\.in_proj_weight", r"blocks_\1/attn/qkv/kernel", linear),
        Rule(block + r"attn\.in_proj_bias", r"blocks_\1/attn/qkv/bias"),
        *dense(block + r"attn\.out_proj", r"blocks_\1/attn/proj"),
        Rule(block + r"ls_1\.gamma", r"blocks_\1/ls1"),  # open_clip's optional layer scale
        *norm(block + r"ln_2", r"blocks_\1/norm2"),
        *dense(block + r"mlp\.c_fc", r"blocks_\1/mlp/fc1"),
        *dense(block + r"mlp\.c_proj", r"blocks_\1/mlp/fc2"),
        Rule(block + r"ls_2\.gamma", r"blocks_\1/ls2"),
        *norm(prefix + r"ln_post", "norm"),
        Rule(prefix + r"proj", "proj"),  # applied as pooled @ proj: already (in, out)
    ]


OPENAI_RULES: list[Rule] = [
    *_image_tower(r"visual\."),
    ignore(r"(?:transformer|token_embedding|ln_final|text)\..*|positional_embedding|text_projection|attn_mask",
           "the text tower"),
    ignore(r"logit_scale", "the contrastive loss temperature"),
    ignore(r"input_resolution|context_length|vocab_size", "sizes that OpenAI's TorchScript archives record"),
]

OPENAI_VISUAL_RULES: list[Rule] = _image_tower("")


def _zero_head_bias(bias: np.ndarray) -> None:
    if np.any(bias != 0):
        raise CheckpointError(
            "head.bias is not zero: a CLIP projection has no bias, so this timm checkpoint is a "
            "classifier (fine-tuned?), not a CLIP image tower"
        )


TIMM_RULES: list[Rule] = [
    # timm holds the projection as its head, an nn.Linear (E, D) with a bias that it sets to zero.
    Rule(r"head\.weight", "proj", linear),
    ignore(r"head\.bias", "zero: CLIP's projection has no bias (checked)", _zero_head_bias),
    *timm_vit.RULES,
]


def recognise_openai(keys) -> bool:
    return "visual.class_embedding" in keys


def recognise_openai_visual(keys) -> bool:
    return "class_embedding" in keys and any(k.startswith("transformer.resblocks.") for k in keys)


def recognise_timm(keys) -> bool:
    return "norm_pre.weight" in keys and any(k.startswith("blocks.") for k in keys)

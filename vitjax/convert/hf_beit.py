"""Hugging Face transformers' BEiT layout (`BeitModel`, `BeitForImageClassification`,
`BeitForMaskedImageModeling`), as `save_pretrained` writes it and the microsoft/beit-* repos hold it.

The attention has separate query/key/value projections where vitjax has timm's fused qkv: their
kernels are concatenated (`part=`), and since the key has no bias, the query and value biases become
BEiT's q_bias/v_bias. transformers 5 renames the modules in memory (`layers.{i}.attention.q_proj`,
`mlp.fc1`, `shared_position_bias`) but saves the names above; a `state_dict()` saved straight from
memory carries the new names, so both are accepted.
"""

from __future__ import annotations

import re

from vitjax.convert.positions import SHARED_REL_POS_BIAS
from vitjax.convert.table import Rule, conv, ignore, linear
from vitjax.convert.timm_vit import dense, norm

P = r"(?:beit\.)?"  # BeitModel saves bare keys; the task models put it under `beit.`
L = P + r"(?:encoder\.layer|layers)\.(\d+)\."  # one layer's prefix; \1 is its index
SELF = L + r"attention\.(?:attention\.)?"  # the self-attention's prefix (legacy names nest it twice)


def _qkv(names: str, part: int) -> Rule:
    return Rule(SELF + names + r"\.weight", r"blocks_\1/attn/qkv/kernel", linear, part=part)


RULES: list[Rule] = [
    Rule(P + r"embeddings\.cls_token", "cls_token"),
    Rule(P + r"embeddings\.position_embeddings", "pos_embed"),
    Rule(P + r"embeddings\.patch_embeddings\.projection\.weight", "patch_embed_kernel", conv),
    Rule(P + r"embeddings\.patch_embeddings\.projection\.bias", "patch_embed_bias"),
    *norm(L + r"layernorm_before", r"blocks_\1/norm1"),
    *norm(L + r"layernorm_after", r"blocks_\1/norm2"),
    _qkv(r"(?:query|q_proj)", 0),
    _qkv(r"(?:key|k_proj)", 1),
    _qkv(r"(?:value|v_proj)", 2),
    Rule(SELF + r"(?:query|q_proj)\.bias", r"blocks_\1/attn/q_bias"),
    Rule(SELF + r"(?:value|v_proj)\.bias", r"blocks_\1/attn/v_bias"),
    Rule(L + r"(?:attention\.attention\.)?relative_position_bias\.relative_position_bias_table",
         r"blocks_\1/attn/rel_pos_bias"),
    *dense(L + r"attention\.(?:output\.dense|o_proj)", r"blocks_\1/attn/proj"),
    Rule(L + r"lambda_1", r"blocks_\1/ls1"),
    Rule(L + r"lambda_2", r"blocks_\1/ls2"),
    *dense(L + r"(?:intermediate\.dense|mlp\.fc1)", r"blocks_\1/mlp/fc1"),
    *dense(L + r"(?:output\.dense|mlp\.fc2)", r"blocks_\1/mlp/fc2"),
    # BEiT pre-training shares one table across layers; positions.fit_rel_pos_bias hands it to every block.
    Rule(P + r"(?:encoder\.relative_position_bias|shared_position_bias)\.relative_position_bias_table",
         SHARED_REL_POS_BIAS),
    ignore(r".*relative_position_index", "an index buffer of older transformers, regenerated from the grid"),
    # `beit.layernorm` is the final norm of models without mean pooling; the masked-image-modelling
    # model keeps that norm outside `beit.` (BEiT's own pre-training code calls it `norm`).
    *norm(P + r"layernorm", "norm"),
    *norm(P + r"pooler\.layernorm", "fc_norm"),
    *dense(r"classifier", "head"),
    ignore(P + r"embeddings\.mask_token", "the masked-image-modelling token, unused at inference"),
    ignore(r"lm_head\..*", "the masked-image-modelling head"),
]


def recognise(keys) -> bool:
    """BEiT's Hugging Face keys: under `beit.`, or (bare BeitModel) with HF layers that carry BEiT's
    layer scales or relative position tables, which HF's plain ViT layers never have."""
    bare = re.compile(r"(?:encoder\.layer|layers)\.\d+\.(?:lambda_1|.*relative_position_bias\.)"
                      r"|(?:encoder\.relative_position_bias|shared_position_bias)\.")
    return any(k.startswith("beit.") or bare.match(k) for k in keys)

"""The timm ViT layout, which the official DINO, DeiT, DeiT-III, MAE, MoCo v3, DINOv2, BEiT and
SelfPatch releases share up to a few synonyms (`gamma_1` for `ls1.gamma`, `register_tokens` for
`reg_token`, DINOv2's `mlp.w12`/`w3` for the fused SwiGLU) and their training-only extras."""

from __future__ import annotations

from vitjax.convert.positions import SHARED_REL_POS_BIAS
from vitjax.convert.table import Rule, conv, ignore, linear

B = r"blocks\.(\d+)\."  # one block's prefix; \1 is its index


def norm(source: str, target: str) -> list[Rule]:
    return [Rule(source + r"\.weight", target + "/scale"), Rule(source + r"\.bias", target + "/bias")]


def dense(source: str, target: str) -> list[Rule]:
    return [Rule(source + r"\.weight", target + "/kernel", linear), Rule(source + r"\.bias", target + "/bias")]


RULES: list[Rule] = [
    Rule(r"cls_token", "cls_token"),
    Rule(r"dist_token", "dist_token"),
    Rule(r"(?:reg_token|register_tokens)", "reg_token"),
    Rule(r"pos_embed", "pos_embed"),
    Rule(r"patch_embed\.proj\.weight", "patch_embed_kernel", conv),
    Rule(r"patch_embed\.proj\.bias", "patch_embed_bias"),
    *norm(r"norm_pre", "norm_pre"),
    *norm(B + r"norm1", r"blocks_\1/norm1"),
    *norm(B + r"norm2", r"blocks_\1/norm2"),
    *dense(B + r"attn\.qkv", r"blocks_\1/attn/qkv"),
    Rule(B + r"attn\.q_bias", r"blocks_\1/attn/q_bias"),
    Rule(B + r"attn\.v_bias", r"blocks_\1/attn/v_bias"),
    Rule(B + r"attn\.relative_position_bias_table", r"blocks_\1/attn/rel_pos_bias"),
    ignore(B + r"attn\.relative_position_index", "an index buffer, regenerated from the grid"),
    # BEiT pre-training shares one table across blocks; positions.fit_rel_pos_bias hands it to every block.
    Rule(r"rel_pos_bias\.relative_position_bias_table", SHARED_REL_POS_BIAS),
    ignore(r"rel_pos_bias\.relative_position_index", "an index buffer, regenerated from the grid"),
    *dense(B + r"attn\.proj", r"blocks_\1/attn/proj"),
    Rule(B + r"(?:ls1\.gamma|gamma_1)", r"blocks_\1/ls1"),
    Rule(B + r"(?:ls2\.gamma|gamma_2)", r"blocks_\1/ls2"),
    *dense(B + r"mlp\.(?:fc1|w12)", r"blocks_\1/mlp/fc1"),
    *dense(B + r"mlp\.(?:fc2|w3)", r"blocks_\1/mlp/fc2"),
    *norm(r"norm", "norm"),
    *norm(r"fc_norm", "fc_norm"),
    *dense(r"head", "head"),
    *dense(r"head_dist", "head_dist"),
    # Training-only parts of the official releases: never part of the backbone.
    ignore(r"mask_token", "the masked-image-modelling token, unused at inference"),
    ignore(r"decoder_.*|decoder\..*", "the MAE decoder"),
    ignore(r"head\.(?:mlp|last_layer)\..*", "the DINO projection head"),
    ignore(r"head\.\d+\..*", "the MoCo v3 projection MLP"),
    ignore(r"lm_head\..*", "the BEiT masked-image-modelling head"),
]

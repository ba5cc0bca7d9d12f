"""The Hugging Face transformers layouts of ViT, DeiT, DINO (hosted as ViTModel) and DINOv2.

`save_pretrained` writes the historical key names (`encoder.layer.{i}.attention.attention.query`),
whatever the installed transformers calls the modules; transformers 5 renamed them in memory
(`layers.{i}.attention.q_proj`, `mlp.fc1`, DINOv2's `gate_proj`/`up_proj`), so a `torch.save` of a
live model's `state_dict()` has the new names. Both spellings are accepted. Keys are prefix-agnostic:
bare models save without a prefix, task models under `vit.`, `deit.`, `dinov2.` or
`dinov2_with_registers.`. Queries, keys and values are separate Linear layers, concatenated here
into vitjax's fused qkv (q | k | v along the output axis, each laid out [heads][head_dim]).

Two layouts, because the block modules differ: 'hf_vit' (ViTModel, DeiTModel: layernorm_before/
after, intermediate/output) and 'hf_dinov2' (Dinov2Model, Dinov2WithRegistersModel: norm1/norm2,
layer_scale1/2, mlp.fc1/fc2 or the SwiGLU weights_in/weights_out).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from vitjax.convert import hf_beit
from vitjax.convert.read import CheckpointError
from vitjax.convert.table import Rule, conv, ignore, linear
from vitjax.convert.timm_vit import dense, norm

P = r"(?:(?:vit|deit|dinov2|dinov2_with_registers)\.)?"  # the task models' backbone prefix, if any
B = P + r"(?:encoder\.layer|layers)\.(\d+)\."  # one block (saved | in-memory name); \1 is its index


def _qkv() -> list[Rule]:
    """The query, key and value Linear layers -> slices 0, 1, 2 of the fused qkv kernel and bias."""
    rules = []
    for part, (saved, live) in enumerate([("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")]):
        source = B + rf"attention\.(?:attention\.{saved}|{live})"
        rules.append(Rule(source + r"\.weight", r"blocks_\1/attn/qkv/kernel", linear, part))
        rules.append(Rule(source + r"\.bias", r"blocks_\1/attn/qkv/bias", part=part))
    return rules


COMMON: list[Rule] = [
    Rule(P + r"embeddings\.cls_token", "cls_token"),
    Rule(P + r"embeddings\.distillation_token", "dist_token"),
    Rule(P + r"embeddings\.register_tokens", "reg_token"),
    Rule(P + r"embeddings\.position_embeddings", "pos_embed"),
    Rule(P + r"embeddings\.patch_embeddings\.projection\.weight", "patch_embed_kernel", conv),
    Rule(P + r"embeddings\.patch_embeddings\.projection\.bias", "patch_embed_bias"),
    *_qkv(),
    *dense(B + r"attention\.(?:output\.dense|o_proj)", r"blocks_\1/attn/proj"),
    *norm(P + r"layernorm", "norm"),
    ignore(P + r"embeddings\.mask_token", "the masked-image-modelling token, unused at inference"),
]

HF_VIT: list[Rule] = [
    *COMMON,
    *norm(B + r"layernorm_before", r"blocks_\1/norm1"),
    *norm(B + r"layernorm_after", r"blocks_\1/norm2"),
    *dense(B + r"(?:intermediate\.dense|mlp\.fc1)", r"blocks_\1/mlp/fc1"),
    *dense(B + r"(?:output\.dense|mlp\.fc2)", r"blocks_\1/mlp/fc2"),
    # ViTForImageClassification / DeiTForImageClassificationWithTeacher heads.
    *dense(r"(?:classifier|cls_classifier)", "head"),
    *dense(r"distillation_classifier", "head_dist"),
    ignore(P + r"pooler\.dense\.(?:weight|bias)",
           "the tanh pooler of ViTModel/DeiTModel (its pooler_output; google's in21k pre-logits layer): "
           "vitjax pools the final-normed class token, as timm and the original releases do"),
]

# No `classifier` rule: Dinov2ForImageClassification's head reads [class token, mean patch token]
# (2 x width inputs), which vitjax's heads do not compute, so such a key is reported as unexpected.
HF_DINOV2: list[Rule] = [
    *COMMON,
    *norm(B + r"norm1", r"blocks_\1/norm1"),
    *norm(B + r"norm2", r"blocks_\1/norm2"),
    Rule(B + r"layer_scale1\.lambda1", r"blocks_\1/ls1"),
    Rule(B + r"layer_scale2\.lambda1", r"blocks_\1/ls2"),
    # The SwiGLU's fused weights_in is [gate; up], which is vitjax's fc1 layout [x1, x2] with
    # silu(x1) * x2; transformers 5 holds the two halves as gate_proj and up_proj.
    *dense(B + r"mlp\.(?:fc1|weights_in)", r"blocks_\1/mlp/fc1"),
    *dense(B + r"mlp\.(?:fc2|weights_out|down_proj)", r"blocks_\1/mlp/fc2"),
    Rule(B + r"mlp\.gate_proj\.weight", r"blocks_\1/mlp/fc1/kernel", linear, part=0),
    Rule(B + r"mlp\.up_proj\.weight", r"blocks_\1/mlp/fc1/kernel", linear, part=1),
    Rule(B + r"mlp\.gate_proj\.bias", r"blocks_\1/mlp/fc1/bias", part=0),
    Rule(B + r"mlp\.up_proj\.bias", r"blocks_\1/mlp/fc1/bias", part=1),
]


def _has(pattern: str):
    regex = re.compile(pattern)
    return lambda keys: any(regex.fullmatch(k) for k in keys)


_vit_layer_norm = _has(B + r"layernorm_before\.weight")


def is_hf_vit(keys) -> bool:
    """ViT's and DeiT's layer names, which a bare BeitModel shares: its extra parameters tell it apart."""
    return _vit_layer_norm(keys) and not hf_beit.recognise(keys)


is_hf_dinov2 = _has(B + r"layer_scale1\.lambda1")


# transformers' hidden_act values -> vitjax's ViTConfig.mlp
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}


def check_config(hf_config: Mapping, cfg) -> None:
    """Raises if a save_pretrained config.json describes a different function than `cfg`, in the
    ways that the weights' shapes cannot reveal: the number of heads and the MLP activation.

    layer_norm_eps is deliberately not checked: the name fixes the numerics, and the Hugging Face
    ports of ViT, DeiT and DINO store ViTConfig's default 1e-12 although their sources (timm, the
    JAX ViT, DINO) use 1e-6 and were verified against it. The difference is ~5e-7 / variance
    relative on each LayerNorm, far below the parity tolerance; pass norm_eps=1e-12 to mirror
    transformers exactly.
    """
    problems = []
    heads = hf_config.get("num_attention_heads")
    if heads is not None and heads != cfg.num_heads:
        problems.append(f"num_attention_heads is {heads} but the model has {cfg.num_heads} heads "
                        f"(pass num_heads={heads})")
    act = hf_config.get("hidden_act", "gelu")
    mlp = "swiglu" if hf_config.get("use_swiglu_ffn") else _ACTIVATIONS.get(act)
    if mlp != cfg.mlp:
        wanted = f"mlp={mlp!r}" if mlp else f"hidden_act {act!r}, which vitjax does not implement"
        problems.append(f"its MLP is {'SwiGLU' if mlp == 'swiglu' else repr(act)} but the model's is "
                        f"{cfg.mlp!r} ({'pass ' if mlp else ''}{wanted})")
    if problems:
        raise CheckpointError("the checkpoint's config.json does not describe this model: " + "; ".join(problems))

"""vitjax: Vision Transformers as pure JAX functions with explicit capture, and the analyses of
five papers on how they work.

    model, params = vitjax.load("vit_small_patch16_224.dino", checkpoint="dino_deitsmall16_pretrain.pth")
    out = model.apply({"params": params}, images_nhwc, capture=("tokens", "attn"))
    out.pooled, out.tokens, out.layers[11]["attn"], out.layout.patch_slice
"""

from vitjax.capture import TAPS, Capture, Output, TokenLayout
from vitjax.convert.read import CheckpointError
from vitjax.convert.table import CheckpointMismatch
from vitjax.load import create_model, load, model_config
from vitjax.models.registry import REGISTRY, ModelSpec, Preprocess, lookup
from vitjax.models.vit import ViT, ViTConfig

__version__ = "0.1.0"

__all__ = [
    "TAPS", "Capture", "CheckpointError", "CheckpointMismatch", "ModelSpec", "Output", "Preprocess",
    "REGISTRY", "TokenLayout", "ViT", "ViTConfig", "create_model", "load", "lookup", "model_config",
]

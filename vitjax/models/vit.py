"""One configurable Vision Transformer; every checkpoint family is a ViTConfig, not a class.

`ViT(config).apply({'params': params}, images, capture=...)` takes preprocessed float images in
NHWC and returns an `Output`. Params are a plain nested dict.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from vitjax.capture import Capture, CaptureLike, Output, TokenLayout, as_capture
from vitjax.models.inputs import check_nhwc
from vitjax.models.layers import Attention, LayerNorm, Mlp, accumulate_wide, dense_init, matmul
from vitjax.models.posemb import Resample, resample_grid


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture and numerics of one ViT family member. Frozen and hashable: static under jit."""

    image_size: tuple[int, int] = (224, 224)  # the grid the position embeddings are stored for
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072  # hidden units (per branch for swiglu)
    in_chans: int = 3
    class_token: bool = True
    dist_token: bool = False  # DeiT distilled: a second prefix token with its own head
    num_registers: int = 0  # inserted after class/dist tokens, with no position embedding
    pos_embed: bool = True  # False: BEiT, which uses a relative position bias instead
    pos_embed_prefix: bool = True  # pos_embed has class/dist entries (False: timm's no_embed_class)
    posemb_resample: Resample = Resample("bicubic", antialias=True)  # how the source resamples it
    patch_bias: bool = True  # OpenAI CLIP's conv1 has none
    norm_pre: bool = False  # CLIP's ln_pre
    qkv_bias: str = "qkv"  # 'qkv', 'qv' (BEiT) or 'none'
    rel_pos_bias: bool = False  # BEiT: a relative position bias table per block
    layer_scale: bool = False  # per-channel gains on both residual branches
    mlp: str = "gelu"  # 'gelu' (exact erf), 'gelu_tanh', 'quick_gelu' or 'swiglu'
    norm_eps: float = 1e-6
    final_norm: bool = True
    pool: str = "token"  # 'token' (first token) or 'avg' (mean of patch tokens)
    fc_norm: bool = False  # LayerNorm after pooling (MAE fine-tuned, BEiT)
    num_classes: int = 0  # classifier head; 0 for none
    proj_dim: int = 0  # bias-free projection of the pooled feature (CLIP); 0 for none
    dtype: str = "float32"  # compute dtype; params stay float32, softmax runs in float32

    def __post_init__(self):
        size = self.image_size
        object.__setattr__(self, "image_size", (size, size) if isinstance(size, int) else tuple(size))
        checks = [
            (self.width % self.num_heads == 0, f"width {self.width} is not divisible by {self.num_heads} heads"),
            (self.qkv_bias in ("qkv", "qv", "none"), f"qkv_bias must be 'qkv', 'qv' or 'none', not {self.qkv_bias!r}"),
            (self.mlp in ("gelu", "gelu_tanh", "quick_gelu", "swiglu"), f"unknown mlp {self.mlp!r}"),
            (self.pool in ("token", "avg"), f"pool must be 'token' or 'avg', not {self.pool!r}"),
            (self.pool != "token" or self.class_token, "pool='token' needs a class token"),
            (not self.rel_pos_bias or self.class_token, "the relative position bias assumes a class token"),
            (all(s % self.patch_size == 0 for s in self.image_size),
             f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ViTConfig: {message}")

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def num_pos_prefix(self) -> int:
        """Prefix tokens that have a position-embedding entry."""
        return (int(self.class_token) + int(self.dist_token)) if self.pos_embed_prefix else 0

    def layout(self, grid: tuple[int, int] | None = None) -> TokenLayout:
        return TokenLayout(
            num_class=int(self.class_token),
            num_dist=int(self.dist_token),
            num_registers=self.num_registers,
            grid=grid or self.grid,
            patch_size=(self.patch_size, self.patch_size),
        )


class Block(nn.Module):
    config: ViTConfig
    rel_pos_grid: tuple[int, int] | None = None
    taps: frozenset[str] = frozenset()
    layout: TokenLayout | None = None  # the attention-statistics taps need it

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        cfg = self.config
        record = {}
        h = LayerNorm(cfg.norm_eps, cfg.dtype, name="norm1")(x)
        record["norm1"] = h
        attn, attn_record = Attention(
            cfg.num_heads, cfg.qkv_bias, self.rel_pos_grid, self.taps, cfg.dtype, self.layout, name="attn"
        )(h)
        record.update(attn_record)
        if cfg.layer_scale:
            attn = attn * self.param("ls1", nn.initializers.constant(1e-5), (cfg.width,))
        record["attn_branch"] = attn
        x = x + attn
        h = LayerNorm(cfg.norm_eps, cfg.dtype, name="norm2")(x)
        record["norm2"] = h
        mlp = Mlp(cfg.mlp_dim, cfg.mlp, cfg.dtype, name="mlp")(h)
        if cfg.layer_scale:
            mlp = mlp * self.param("ls2", nn.initializers.constant(1e-5), (cfg.width,))
        record["mlp_branch"] = mlp
        x = x + mlp
        record["tokens"] = x
        return x, {name: value for name, value in record.items() if name in self.taps}


def _check_images(images: jax.Array, cfg: ViTConfig) -> tuple[int, int]:
    check_nhwc(images, cfg.in_chans)
    _, height, width, _ = images.shape
    if height % cfg.patch_size or width % cfg.patch_size:
        raise ValueError(
            f"image size {height}x{width} cannot be tiled by {cfg.patch_size}-pixel patches; "
            f"resize, crop or pad it to a multiple of {cfg.patch_size}"
        )
    return height // cfg.patch_size, width // cfg.patch_size


class ViT(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array, capture: CaptureLike = None) -> Output:
        cfg = self.config
        spec: Capture = as_capture(capture)
        grid = _check_images(images, cfg)
        batch = images.shape[0]
        p = cfg.patch_size

        # Patch embedding as a matmul over flattened (p, p, C) patches; the kernel keeps the HWIO
        # layout of a stride-p convolution.
        kernel = self.param("patch_embed_kernel", dense_init, (p, p, cfg.in_chans, cfg.width))
        patches = images.astype(cfg.dtype).reshape(batch, grid[0], p, grid[1], p, cfg.in_chans)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid[0] * grid[1], -1)
        x = matmul(patches, kernel.reshape(-1, cfg.width).astype(cfg.dtype))
        if cfg.patch_bias:
            x = x + self.param("patch_embed_bias", nn.initializers.zeros, (cfg.width,)).astype(cfg.dtype)
        patch_embed = x  # the 'patch_embed' tap (the Registers paper's redundancy test reads it)

        prefix = []
        if cfg.class_token:
            prefix.append(self.param("cls_token", nn.initializers.zeros, (1, 1, cfg.width)))
        if cfg.dist_token:
            prefix.append(self.param("dist_token", nn.initializers.zeros, (1, 1, cfg.width)))
        prefix = [jnp.broadcast_to(t, (batch, 1, cfg.width)).astype(cfg.dtype) for t in prefix]

        if cfg.pos_embed:
            stored = cfg.grid
            posemb = self.param(
                "pos_embed", dense_init, (1, cfg.num_pos_prefix + stored[0] * stored[1], cfg.width)
            ).astype(cfg.dtype)
            pos_prefix, pos_patches = posemb[:, : cfg.num_pos_prefix], posemb[:, cfg.num_pos_prefix :]
            if grid != stored:
                pos_patches = resample_grid(
                    pos_patches.reshape(1, *stored, cfg.width), grid, cfg.posemb_resample
                ).reshape(1, grid[0] * grid[1], cfg.width)
            x = x + pos_patches
            prefix = [t + pos_prefix[:, i : i + 1] for i, t in enumerate(prefix)] if cfg.pos_embed_prefix else prefix
        if cfg.num_registers:
            registers = self.param("reg_token", nn.initializers.zeros, (1, cfg.num_registers, cfg.width))
            prefix.append(jnp.broadcast_to(registers, (batch, cfg.num_registers, cfg.width)).astype(cfg.dtype))
        x = jnp.concatenate([*prefix, x], axis=1)
        if cfg.norm_pre:
            x = LayerNorm(cfg.norm_eps, cfg.dtype, name="norm_pre")(x)

        if cfg.rel_pos_bias and grid != cfg.grid:
            raise ValueError(
                f"this model's relative position bias is stored for a {cfg.grid} grid but the images "
                f"give {grid}; load it with image_size={tuple(s * p for s in grid)}"
            )
        rel_pos_grid = cfg.grid if cfg.rel_pos_bias else None
        layout = cfg.layout(grid)
        layers = []
        for i in range(cfg.depth):
            taps = spec.for_block(i, cfg.depth)
            x, record = Block(cfg, rel_pos_grid, taps, layout, name=f"blocks_{i}")(x)
            layers.append({**record, "patch_embed": patch_embed} if "patch_embed" in taps else record)

        tokens = LayerNorm(cfg.norm_eps, cfg.dtype, name="norm")(x) if cfg.final_norm else x
        if cfg.pool == "token" and cfg.dist_token:
            pooled = (tokens[:, 0] + tokens[:, 1]) / 2  # timm's pre-logits feature of distilled DeiT
        elif cfg.pool == "token":
            pooled = tokens[:, 0]
        else:
            pooled = tokens[:, layout.patch_slice].mean(axis=1)
        if cfg.fc_norm:
            pooled = LayerNorm(cfg.norm_eps, cfg.dtype, name="fc_norm")(pooled)

        logits = None
        if cfg.num_classes:
            head = nn.Dense(cfg.num_classes, dtype=cfg.dtype, kernel_init=dense_init, dot_general=accumulate_wide,
                            name="head")
            if cfg.dist_token:
                # DeiT distilled inference: average the class head and the distillation head.
                head_dist = nn.Dense(cfg.num_classes, dtype=cfg.dtype, kernel_init=dense_init,
                                     dot_general=accumulate_wide, name="head_dist")
                logits = (head(tokens[:, 0]) + head_dist(tokens[:, 1])) / 2
            else:
                logits = head(pooled)
        embedding = None
        if cfg.proj_dim:
            embedding = matmul(pooled, self.param("proj", dense_init, (cfg.width, cfg.proj_dim)).astype(cfg.dtype))
        return Output(pooled, tokens, embedding, logits, tuple(layers), layout)

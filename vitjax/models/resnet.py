"""ResNet-50, the convolutional comparator: torchvision's (and timm's) architecture.

`ResNet(config).apply({'params': p}, images_nhwc, capture='tokens')` returns the same `Output` as
the ViT: `pooled` is the globally averaged final feature map, `tokens` that map flattened to
(B, h*w, C) (a grid with no prefix tokens), and `layers` holds one dict per *stage* (layer1..layer4).

BatchNorm runs in inference mode with its running statistics. They are stored as ordinary params
(`.../mean`, `.../var` next to `.../scale`, `.../bias`; paths mirror torchvision's names, e.g.
`layer2/0/bn1/var` for `layer2.0.bn1.running_var`) rather than in a separate `batch_stats`
collection, so a loaded model is one plain nested dict like every ViT, and derivative code
(gradients, Hessians) treats them as constants by masking them out with `statistics_mask`.

Training: `apply({'params': p}, images, train=True, mutable='statistics')` normalises with the
batch's statistics (over the global batch, however it is sharded) and returns, in the
'statistics' collection under the same paths as the params, the updated running averages as
PyTorch computes them (momentum 0.1, unbiased variance). The trainer writes them back into params.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from vitjax.capture import Capture, CaptureLike, Output, TokenLayout, as_capture
from vitjax.models.inputs import check_nhwc

STATISTICS = ("mean", "var")  # BatchNorm param names that are running statistics, not weights
STAGE_TAPS = frozenset({"tokens"})  # a stage has no attention; the other taps are ViT-only


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """A bottleneck ResNet (v1.5: stride on the 3x3 conv). Frozen and hashable: static under jit."""

    image_size: tuple[int, int] = (224, 224)  # only for shape inference; any input size runs
    in_chans: int = 3
    layers: tuple[int, ...] = (3, 4, 6, 3)  # bottleneck blocks per stage
    width: int = 64  # stem channels; stage s has bottleneck width width * 2**s and 4x that out
    num_classes: int = 1000  # 0 for no classifier (DINO's and MoCo v3's backbones)
    bn_eps: float = 1e-5
    dtype: str = "float32"  # compute dtype; params stay float32

    def __post_init__(self):
        size = self.image_size
        object.__setattr__(self, "image_size", (size, size) if isinstance(size, int) else tuple(size))
        object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def stride(self) -> int:
        """The total downsampling: 4 from the stem, 2 per stage after the first."""
        return 4 * 2 ** (len(self.layers) - 1)


class BatchNorm(nn.Module):
    """BatchNorm with its running statistics held as params: they normalise at inference; in
    training the batch's own statistics do, and the updated running averages are sown."""

    eps: float
    dtype: str
    momentum: float = 0.1  # PyTorch's convention: new = (1 - momentum) * old + momentum * batch

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        mean = self.param("mean", nn.initializers.zeros, (channels,))
        var = self.param("var", nn.initializers.ones, (channels,))
        if train:
            mean, var = self._batch_statistics(x, mean, var)
        gain = scale * jax.lax.rsqrt(var + self.eps)
        return x * gain.astype(self.dtype) + (bias - mean * gain).astype(self.dtype)

    def _batch_statistics(self, x, running_mean, running_var):
        """The batch's mean and biased variance (float32), after sowing the running averages,
        which PyTorch updates with the unbiased variance."""
        x = x.astype(jnp.float32)
        axes = tuple(range(x.ndim - 1))
        mean = x.mean(axes)
        var = jnp.square(x - mean).mean(axes)  # two-pass: exact where E[x^2] - E[x]^2 cancels
        count = x.size // x.shape[-1]
        m = self.momentum
        keep = lambda name, value: self.sow("statistics", name, jax.lax.stop_gradient(value),
                                            init_fn=lambda: None, reduce_fn=lambda _, new: new)
        keep("mean", (1 - m) * running_mean + m * mean)
        keep("var", (1 - m) * running_var + m * var * count / max(count - 1, 1))
        return mean, var


def conv(features: int, size: int, stride: int, dtype: str, name: str) -> nn.Conv:
    """A bias-free conv padded like PyTorch's: symmetric `size // 2` (Flax's 'SAME' would pad a
    stride-2 conv on the bottom/right only)."""
    pad = size // 2
    return nn.Conv(
        features, (size, size), strides=(stride, stride), padding=((pad, pad), (pad, pad)), use_bias=False,
        dtype=dtype, kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"), name=name,
    )


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here) -> 1x1 (x4 channels), each with BN; projection shortcut when the shape changes."""

    planes: int
    stride: int
    config: ResNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.config
        bn = lambda name, h: BatchNorm(cfg.bn_eps, cfg.dtype, name=name)(h, train)
        out = nn.relu(bn("bn1", conv(self.planes, 1, 1, cfg.dtype, "conv1")(x)))
        out = nn.relu(bn("bn2", conv(self.planes, 3, self.stride, cfg.dtype, "conv2")(out)))
        out = bn("bn3", conv(self.planes * 4, 1, 1, cfg.dtype, "conv3")(out))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes * 4:
            shortcut = bn("downsample_bn", conv(self.planes * 4, 1, self.stride, cfg.dtype, "downsample_conv")(x))
        return nn.relu(out + shortcut)


class Stage(nn.Module):
    """One of the four stages (torchvision's layer1..layer4); its blocks are named 0, 1, ... as there."""

    index: int
    config: ResNetConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        planes = self.config.width * 2**self.index
        for j in range(self.config.layers[self.index]):
            stride = 2 if self.index > 0 and j == 0 else 1
            x = Bottleneck(planes, stride, self.config, name=str(j))(x, train)
        return x


def _check(images: jax.Array, cfg: ResNetConfig, spec: Capture) -> None:
    check_nhwc(images, cfg.in_chans)
    if other := sorted(spec.taps - STAGE_TAPS):
        raise ValueError(f"a ResNet records only {sorted(STAGE_TAPS)} per stage; {other} exist only in ViTs")


class ResNet(nn.Module):
    config: ResNetConfig

    @nn.compact
    def __call__(self, images: jax.Array, capture: CaptureLike = None, train: bool = False) -> Output:
        cfg = self.config
        spec = as_capture(capture)
        _check(images, cfg, spec)
        x = conv(cfg.width, 7, 2, cfg.dtype, "conv1")(images.astype(cfg.dtype))
        x = nn.relu(BatchNorm(cfg.bn_eps, cfg.dtype, name="bn1")(x, train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf

        flat = lambda t: t.reshape(t.shape[0], -1, t.shape[-1])
        layers = []
        for stage in range(len(cfg.layers)):
            x = Stage(stage, cfg, name=f"layer{stage + 1}")(x, train)
            layers.append({"tokens": flat(x)} if spec.for_block(stage, len(cfg.layers)) else {})

        grid = (x.shape[1], x.shape[2])
        pooled = x.mean(axis=(1, 2))
        logits = nn.Dense(cfg.num_classes, dtype=cfg.dtype, name="fc")(pooled) if cfg.num_classes else None
        layout = TokenLayout(0, 0, 0, grid, (cfg.stride, cfg.stride))
        return Output(pooled, flat(x), None, logits, tuple(layers), layout)


def statistics_mask(params) -> dict:
    """A tree like `params` that is True at BatchNorm running statistics, False at weights: split
    params with it (`jax.tree.map`) to differentiate with respect to the weights only."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: path[-1] in STATISTICS for path in flat})

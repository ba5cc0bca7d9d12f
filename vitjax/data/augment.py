"""Training augmentation as TensorFlow functions for a tf.data `map`, with stateless randomness.

Every random choice is drawn with `tf.random.stateless_*` from the record's 'seed' (an int tensor of
shape [2], which the loader derives from the run seed, the example index and the epoch), each
operation from its own sub-seed (`stateless_fold_in` with a fixed tag). So an example's views are
a pure function of (seed, index, epoch): a resumed run sees exactly the batches it would have seen,
and adding an operation to a recipe never changes the draws of the others.

The operations follow torchvision's semantics (the PyTorch originals DeiT, DINO and SelfPatch use):

- `random_resized_crop`: torchvision's `RandomResizedCrop.get_params` exactly: area fraction
  uniform in `scale`, log-aspect uniform in log(`ratio`), w/h rounded half-to-even as Python's
  round, 10 attempts, the first crop that fits wins, else torchvision's central-crop fallback. The
  crop is resized as PIL resizes it (`preprocess.resize`: anti-aliased, uint8, within 1-2/255).
- `color_jitter`: brightness, contrast, saturation, hue applied in a random order, factors drawn as
  torchvision does, each with torchvision's tensor formula (contrast blends with the *mean of the
  grayscale image*, saturation with the grayscale image, hue shifts H in HSV and wraps).
- `random_grayscale`, `random_flip`, `random_gaussian_blur`, `random_solarize` (DINO's PIL
  GaussianBlur with sigma ~ U(0.1, 2) and ImageOps.solarize at 128).
- `multi_crop`: DINO's `DataAugmentationDINO` (2 global + N local views); `train_transform`: presets.

Deviations, on purpose (DeiT, DINO and SelfPatch run these transforms on PIL images): after the
resize, images are float32 in [0, 1] and the colour steps use torchvision's tensor formulas, where
PIL re-quantises to uint8 after every step, rounds the contrast mean to an integer grey level,
shifts hue in uint8 HSV and uses grayscale weights (0.299, 0.587, 0.114) instead of (0.2989, ...):
small differences, a grey level or two per step. The blur is an exact sampled Gaussian (radius
4 sigma_max, edges replicated) where PIL approximates it with three box blurs (mean difference
under 1.5/255).
RandAugment and random erasing (part of DeiT's recipe) are not implemented.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

from vitjax.data import preprocess
from vitjax.data.tf_env import import_tf
from vitjax.models.registry import IMAGENET_MEAN, IMAGENET_STD

tf = import_tf()

# torchvision's rgb_to_grayscale weights for tensors.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# The code here is already graph code (explicit tf.cond / tf.switch_case); AutoGraph's source
# conversion, which tf.data's `map` applies by default, only made tracing about 10x slower.
_no_autograph = tf.autograph.experimental.do_not_convert

# One fixed tag per random operation: its sub-seed is fold_in(view seed, tag).
_TAG_CROP, _TAG_FLIP, _TAG_JITTER_APPLY, _TAG_JITTER, _TAG_GRAY, _TAG_BLUR, _TAG_SOLARIZE = range(7)


def _sub_seed(seed, tag: int):
    return tf.random.experimental.stateless_fold_in(seed, tag)


def _coin(seed, p: float):
    """True with probability p (torchvision's `torch.rand(1) < p`). Cheap steps compute both
    outcomes and select with tf.where; costly ones (jitter, blur) branch with tf.cond."""
    return tf.random.stateless_uniform([], seed, dtype=tf.float32) < p


# --- geometry --------------------------------------------------------------------------------


def random_resized_crop_box(seed, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """torchvision's RandomResizedCrop.get_params: returns int32 (top, left, crop_h, crop_w).

    The attempts are drawn at once and the first that fits is taken, which gives the same
    distribution as torchvision's sequential loop.
    """
    h_img, w_img = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    u = tf.random.stateless_uniform([4, attempts], seed, dtype=tf.float64)
    target_area = h_img * w_img * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[1])
    # tf.round rounds half to even, as Python's round in torchvision.
    w = tf.round(tf.sqrt(target_area * aspect))
    h = tf.round(tf.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    # randint(0, n - crop + 1) as floor(u * (n - crop + 1)), clipped against u*n rounding up.
    top = tf.minimum(tf.floor(u[2] * (h_img - h + 1)), h_img - h)
    left = tf.minimum(tf.floor(u[3] * (w_img - w + 1)), w_img - w)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

    # torchvision's fallback: the central crop, clamped to the ratio range.
    in_ratio = w_img / h_img
    lo, hi = min(ratio), max(ratio)
    fallback_w = tf.where(in_ratio > hi, tf.round(h_img * hi), w_img)
    fallback_h = tf.where(in_ratio < lo, tf.round(w_img / lo), h_img)
    fallback = tf.stack([
        tf.floor((h_img - fallback_h) / 2), tf.floor((w_img - fallback_w) / 2), fallback_h, fallback_w])
    drawn = tf.stack([top[first], left[first], h[first], w[first]])
    box = tf.where(tf.reduce_any(fits), drawn, fallback)
    return tuple(tf.unstack(tf.cast(box, tf.int32)))


def resized_crop(image, box, size, interpolation="bicubic"):
    """torchvision's F.resized_crop on a PIL image: crop `box` = (top, left, h, w) from a uint8
    image, resize it as PIL does (`preprocess.resize`) to `size` (int or (h, w)); float32 in [0, 1]."""
    top, left, h, w = box
    size = (size, size) if isinstance(size, int) else tuple(size)
    crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([h, w, 3]))
    crop.set_shape([None, None, 3])
    resized = preprocess.resize(crop, size, interpolation)
    resized.set_shape([size[0], size[1], 3])
    return tf.cast(resized, tf.float32) / 255.0


def random_resized_crop(image, seed, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="bicubic"):
    """torchvision's RandomResizedCrop: float32 [0, 1] output of shape (size, size, 3)."""
    shape = tf.shape(image)
    box = random_resized_crop_box(seed, shape[0], shape[1], scale, ratio)
    return resized_crop(image, box, size, interpolation)


def random_flip(image, seed, p=0.5):
    """RandomHorizontalFlip: mirror the width axis with probability p."""
    return tf.where(_coin(seed, p), tf.reverse(image, axis=[1]), image)


# --- colour (float32 images in [0, 1]) -------------------------------------------------------


def grayscale(image):
    """(H, W, 1) luma with torchvision's tensor weights."""
    return tf.reduce_sum(image * tf.constant(_GRAY_WEIGHTS, image.dtype), axis=-1, keepdims=True)


def _blend(image, other, factor):
    # torchvision's _blend: factor * image + (1 - factor) * other, clamped to the value range.
    return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image, factor):
    return _blend(image, tf.zeros_like(image), factor)


def adjust_contrast(image, factor):
    return _blend(image, tf.reduce_mean(grayscale(image)), factor)


def adjust_saturation(image, factor):
    return _blend(image, grayscale(image), factor)


def adjust_hue(image, factor):
    """Shift hue by `factor` (in turns, [-0.5, 0.5]) in HSV, wrapping around."""
    return tf.image.adjust_hue(image, factor)


def _jitter_range(name, value, center, bounds):
    """torchvision's ColorJitter._check_input: a strength s -> [center - s, center + s] (the lower
    end clipped at bounds[0]), a (min, max) pair as given; None when the op is off."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"color_jitter: {name} strength must be >= 0, got {value}")
        lo, hi = max(center - value, bounds[0]), center + value
    else:
        lo, hi = value
    if not bounds[0] <= lo <= hi <= bounds[1]:
        raise ValueError(f"color_jitter: {name} range ({lo}, {hi}) must lie in [{bounds[0]}, {bounds[1]}]")
    return None if lo == hi == center else (float(lo), float(hi))


def _branch(image, op):
    if op is None:
        return lambda: image
    adjust, factor = op
    return lambda: adjust(image, factor)


def color_jitter(image, seed, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
    """torchvision's ColorJitter: each enabled op with a uniform factor, in a random order."""
    ranges = [
        (_jitter_range("brightness", brightness, 1.0, (0.0, math.inf)), adjust_brightness),
        (_jitter_range("contrast", contrast, 1.0, (0.0, math.inf)), adjust_contrast),
        (_jitter_range("saturation", saturation, 1.0, (0.0, math.inf)), adjust_saturation),
        (_jitter_range("hue", hue, 0.0, (-0.5, 0.5)), adjust_hue),
    ]
    if all(bounds is None for bounds, _ in ranges):
        return image
    order = tf.argsort(tf.random.stateless_uniform([4], _sub_seed(seed, 0)))  # torch.randperm(4)
    u = tf.random.stateless_uniform([4], _sub_seed(seed, 1))
    ops = [None if bounds is None else (adjust, bounds[0] + (bounds[1] - bounds[0]) * u[k])
           for k, (bounds, adjust) in enumerate(ranges)]

    def step(position, image):  # a loop, so the four branches are traced once, not four times
        return position + 1, tf.switch_case(order[position], [_branch(image, op) for op in ops])

    return tf.while_loop(lambda position, _: position < 4, step, (tf.constant(0), image))[1]


def random_grayscale(image, seed, p=0.1):
    """RandomGrayscale: with probability p, the grayscale image repeated on 3 channels."""
    return tf.where(_coin(seed, p), tf.tile(grayscale(image), [1, 1, 3]), image)


def gaussian_blur(image, sigma, radius: int = 8):
    """Separable Gaussian blur of an (H, W, C) float image; edges replicated, as PIL does."""
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(taps / tf.cast(sigma, tf.float32)))
    kernel = kernel / tf.reduce_sum(kernel)
    channels = image.shape[-1]
    for axis in (0, 1):
        n = tf.shape(image)[axis]
        image = tf.gather(image, tf.clip_by_value(tf.range(-radius, n + radius), 0, n - 1), axis=axis)
        shape = [2 * radius + 1, 1] if axis == 0 else [1, 2 * radius + 1]
        taps_2d = tf.tile(tf.reshape(kernel, shape + [1, 1]), [1, 1, channels, 1])
        image = tf.nn.depthwise_conv2d(image[None], taps_2d, [1, 1, 1, 1], "VALID")[0]
    return image


def random_gaussian_blur(image, seed, p=0.5, sigma=(0.1, 2.0)):
    """DINO's utils.GaussianBlur: with probability p, blur with sigma ~ U(sigma)."""
    s = tf.random.stateless_uniform([], _sub_seed(seed, 1), minval=sigma[0], maxval=sigma[1])
    radius = math.ceil(4 * sigma[1])
    return tf.cond(_coin(_sub_seed(seed, 0), p), lambda: gaussian_blur(image, s, radius), lambda: image)


def solarize(image, threshold=128 / 255):
    """PIL ImageOps.solarize(threshold=128) on [0, 1] values: invert everything >= threshold."""
    return tf.where(image >= threshold, 1.0 - image, image)


def random_solarize(image, seed, p=0.2):
    return tf.where(_coin(seed, p), solarize(image), image)


def normalize01(image, mean, std):
    """(x - mean) / std for a float image in [0, 1] (torchvision's Normalize after ToTensor)."""
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


# --- recipes ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ViewRecipe:
    """One augmented view, in torchvision's order: crop, flip, jitter, grayscale, blur, solarize,
    normalise. A probability of 0 (or a jitter strength of 0) turns a step off."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brightness, contrast, sat, hue
    jitter_p: float = 1.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    solarize_p: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@_no_autograph
def augment_view(image, seed, recipe: ViewRecipe):
    """Apply `recipe` to a uint8 (H, W, 3) image; float32 (size, size, 3) in model units."""
    x = random_resized_crop(image, _sub_seed(seed, _TAG_CROP), recipe.size, recipe.scale, recipe.ratio,
                            recipe.interpolation)
    if recipe.flip_p > 0:
        x = random_flip(x, _sub_seed(seed, _TAG_FLIP), recipe.flip_p)
    if any(recipe.jitter) and recipe.jitter_p > 0:
        x = tf.cond(_coin(_sub_seed(seed, _TAG_JITTER_APPLY), recipe.jitter_p),
                    lambda: color_jitter(x, _sub_seed(seed, _TAG_JITTER), *recipe.jitter), lambda: x)
    if recipe.grayscale_p > 0:
        x = random_grayscale(x, _sub_seed(seed, _TAG_GRAY), recipe.grayscale_p)
    if recipe.blur_p > 0:
        x = random_gaussian_blur(x, _sub_seed(seed, _TAG_BLUR), recipe.blur_p)
    if recipe.solarize_p > 0:
        x = random_solarize(x, _sub_seed(seed, _TAG_SOLARIZE), recipe.solarize_p)
    return normalize01(x, recipe.mean, recipe.std)


def _passthrough(record) -> dict:
    return {"label": record["label"]} if "label" in record else {}


def dino_recipes(global_size=224, local_size=96, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"):
    """DINO's DataAugmentationDINO as (global view 1, global view 2, local view) recipes."""
    shared = dict(flip_p=0.5, jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, grayscale_p=0.2,
                  mean=mean, std=std, interpolation=interpolation)
    return (
        ViewRecipe(size=global_size, scale=global_scale, blur_p=1.0, **shared),
        ViewRecipe(size=global_size, scale=global_scale, blur_p=0.1, solarize_p=0.2, **shared),
        ViewRecipe(size=local_size, scale=local_scale, blur_p=0.5, **shared),
    )


@_no_autograph
def multi_crop(record, *, global_size=224, local_size=96, num_local=8, global_scale=(0.4, 1.0),
               local_scale=(0.05, 0.4), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"):
    """DINO's multi-crop: {'global_views': (2, G, G, 3), 'local_views': (num_local, L, L, 3)} in
    model units (+ 'label' when the record has one). Each view draws its own randomness."""
    global1, global2, local = dino_recipes(global_size, local_size, global_scale, local_scale, mean, std,
                                           interpolation)
    image, seed = record["image"], record["seed"]
    views = [augment_view(image, _sub_seed(seed, v), r) for v, r in enumerate((global1, global2))]
    if num_local:
        # One traced graph for all local views (a loop over their seeds): tracing N copies would
        # cost seconds of start-up per view.
        seeds = tf.stack([_sub_seed(seed, 2 + v) for v in range(num_local)])
        local_views = tf.map_fn(lambda s: augment_view(image, s, local), seeds, fn_output_signature=tf.float32)
        local_views.set_shape([num_local, local_size, local_size, 3])
    else:
        local_views = tf.zeros([0, local_size, local_size, 3], tf.float32)
    return {"global_views": tf.stack(views), "local_views": local_views, **_passthrough(record)}


# Multi-crop defaults of the two self-supervised recipes (main_dino.py / main_selfpatch.py).
_MULTI_CROP_SCALES = {"dino": ((0.4, 1.0), (0.05, 0.4)), "selfpatch": ((0.25, 1.0), (0.05, 0.25))}


def train_transform(kind="simple", image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, *, scale=None,
                    interpolation="bicubic", local_size=96, num_local=8) -> Callable[[dict], dict]:
    """A record -> dict transform for the loader.

    kind:
      'simple'    RandomResizedCrop(scale=(0.35, 1)) + flip; the default for low-resolution
                  vitjax_scenes, where the usual 0.08 would often crop the object away.
      'deit'      RandomResizedCrop(scale=(0.08, 1), bicubic) + flip + ColorJitter(0.4, 0.4, 0.4),
                  timm's non-AutoAugment default. DeiT itself uses RandAugment(m9, mstd0.5) and
                  random erasing 0.25 with colour jitter off; neither is implemented here.
      'dino', 'selfpatch'
                  multi_crop with that paper's global/local scales; `image_size` is the global size.
    Returns {'image': float32 (S, S, 3), 'label'} or multi_crop's dict. `scale` overrides the crop
    scale of 'simple'/'deit' and the global scale of the multi-crop kinds.
    """
    mean, std, scale = tuple(mean), tuple(std), tuple(scale) if scale else None
    if kind in _MULTI_CROP_SCALES:
        global_scale, local_scale = _MULTI_CROP_SCALES[kind]
        return functools.partial(multi_crop, global_size=image_size, local_size=local_size, num_local=num_local,
                                 global_scale=scale or global_scale, local_scale=local_scale, mean=mean, std=std,
                                 interpolation=interpolation)
    presets = {
        "simple": ViewRecipe(scale=(0.35, 1.0)),
        "deit": ViewRecipe(scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.0)),
    }
    if kind not in presets:
        raise ValueError(f"unknown augmentation kind {kind!r}; choose one of "
                         f"{sorted(presets) + sorted(_MULTI_CROP_SCALES)}")
    recipe = dataclasses.replace(presets[kind], size=image_size, mean=mean, std=std, interpolation=interpolation,
                                 **({"scale": scale} if scale else {}))

    @_no_autograph
    def transform(record):
        return {"image": augment_view(record["image"], record["seed"], recipe), **_passthrough(record)}

    return transform

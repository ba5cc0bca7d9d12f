"""Image preprocessing that reproduces the PyTorch originals, as TensorFlow functions for tf.data.

Every function maps one image tensor to one image tensor, works in graph mode on images whose
height and width are only known at run time, and so composes inside `tf.data.Dataset.map`.

The originals resize PIL images (torchvision `Resize` on a PIL image calls `Image.resize`), so
`resize` reimplements PIL's resampling rather than calling `tf.image.resize`: two separable passes,
width first, each with PIL's antialiased kernel taps (bicubic is Keys a=-0.5, lanczos is
Lanczos-3), PIL's 22-bit fixed-point weights and integer accumulation, and a uint8 result per
pass. It gives PIL's pixels bit for bit on the test images. (`tf.image.resize(antialias=True)`
uses the same kernels in one float pass: on sharp edges it is up to 19/255 off with bicubic and
33/255 with lanczos, where PIL clips the first pass's overshoot; two tf passes rounded between
them still leave 2/255; bilinear is within 1/255.) Nearest picks PIL's source pixels, including
PIL's accumulated float64 coordinates (tf's nearest picks other pixels at some ties).

Pass order: Pillow up to 12 always resamples the width first, and that is what the papers ran.
Pillow 13 (python-pillow/Pillow#9549) does the height first when it shrinks much more than the
width, which changes edge pixels by up to ~20/255 in those cases; we keep the older order. (The
resizes of an eval transform scale both sides alike, where the two versions agree.)

Then `normalize` does torchvision's `ToTensor` + `Normalize` in float32.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from vitjax.data.tf_env import import_tf
from vitjax.models.registry import Preprocess

tf = import_tf()

PRECISION_BITS = 22  # PIL's fixed-point coefficients for 8-bit images (32 - 8 - 2 bits)


def _bilinear(x):
    return tf.maximum(1.0 - tf.abs(x), 0.0)


def _bicubic(x):  # Keys cubic with a = -0.5, as PIL (torch's own bicubic uses a = -0.75)
    x, a = tf.abs(x), -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def _sinc(x):
    one = tf.ones_like(x)
    safe = tf.where(x == 0.0, one, x * math.pi)
    return tf.where(x == 0.0, one, tf.sin(safe) / safe)


def _lanczos(x):  # Lanczos-3 on [-3, 3)
    return tf.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3.0), tf.zeros_like(x))


# name -> (support, kernel) of PIL's filters; nearest is a pixel pick, not a filter.
FILTERS = {"bicubic": (2.0, _bicubic), "bilinear": (1.0, _bilinear), "lanczos": (3.0, _lanczos)}
METHODS = (*FILTERS, "nearest")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown interpolation {method!r}; use one of {', '.join(METHODS)}")


def _nearest_indices(size_in, size_out):
    """PIL's nearest source index per output pixel along one axis.

    PIL (`ImagingScaleAffine`) starts at scale/2 and adds scale once per output pixel in float64,
    then truncates; the running sum is what decides ties such as 4 -> 15 pixels, so it is
    reproduced with a float64 cumulative sum rather than the closed form floor((i + 0.5) * scale).
    """
    scale = tf.cast(size_in, tf.float64) / tf.cast(size_out, tf.float64)
    steps = tf.concat([[scale * 0.5], tf.fill([size_out - 1], scale)], axis=0)
    return tf.minimum(tf.cast(tf.floor(tf.math.cumsum(steps)), tf.int32), size_in - 1)


def _filter_taps(size_in, size_out, method: str):
    """PIL's resampling taps along one axis: source indices and fixed-point weights, (out, K).

    As PIL's `precompute_coeffs`: output pixel i is centred at (i + 0.5) * scale; when shrinking,
    the kernel is stretched by the scale (antialiasing); taps outside the image are dropped and
    the rest renormalised to sum 1; weights become integers with 22 fractional bits, rounded
    away from zero. Computed in float64 like PIL.
    """
    support, kernel = FILTERS[method]
    scale = tf.cast(size_in, tf.float64) / tf.cast(size_out, tf.float64)
    stretch = tf.maximum(scale, 1.0)
    support = support * stretch
    num_taps = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.range(size_out, dtype=tf.float64) + 0.5) * scale
    # float -> int casts truncate toward zero, as C's (int) does.
    first = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)
    count = tf.minimum(tf.cast(center + support + 0.5, tf.int32), size_in) - first
    offsets = tf.range(num_taps)
    taps = first[:, None] + offsets[None, :]
    weights = kernel((tf.cast(taps, tf.float64) - center[:, None] + 0.5) * (1.0 / stretch))
    weights = tf.where(offsets[None, :] < count[:, None], weights, tf.zeros_like(weights))
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    weights = tf.where(total != 0.0, weights / total, weights)
    fixed = weights * (1 << PRECISION_BITS)
    fixed = tf.cast(tf.where(fixed < 0.0, fixed - 0.5, fixed + 0.5), tf.int32)
    return tf.minimum(taps, size_in - 1), fixed  # dropped taps have weight 0 and any index


def _resample_rows(image, size, method: str):
    """One PIL resampling pass along the height of an (H, W, C) uint8 image, to `size` rows.

    Integer arithmetic as PIL's: a rounding constant plus the sum of pixel * weight over the taps,
    shifted back by 22 bits and clipped to uint8. Whole rows are gathered per tap, which is far
    faster in TF than gathering columns, so the width pass runs on the transposed image.
    """
    size_in = tf.shape(image)[0]
    if method == "nearest":
        return tf.gather(image, _nearest_indices(size_in, size))
    taps, weights = _filter_taps(size_in, size, method)
    pixels = tf.cast(image, tf.int32)

    def add_tap(k, total):
        return k + 1, total + tf.gather(pixels, taps[:, k]) * weights[:, k, None, None]

    start = tf.fill(tf.concat([[size], tf.shape(image)[1:]], 0), 1 << (PRECISION_BITS - 1))
    _, total = tf.while_loop(lambda k, _: k < tf.shape(taps)[1], add_tap, (0, start))
    return tf.cast(tf.clip_by_value(total // (1 << PRECISION_BITS), 0, 255), tf.uint8)


def _resample_columns(image, size, method: str):
    return tf.transpose(_resample_rows(tf.transpose(image, (1, 0, 2)), size, method), (1, 0, 2))


def resize(image, size, method: str = "bicubic"):
    """PIL's `Image.resize(image, (width, height), filter)` of a uint8 image; size is (height, width).

    Accepts (H, W, C) or (H, W) uint8 images and returns uint8. An axis whose size does not change
    is left untouched, as PIL does.
    """
    _check_method(method)
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"resize works on uint8 images, as PIL does; got {image.dtype.name}")
    single_channel = image.shape.rank == 2
    if single_channel:
        image = image[..., None]
    height, width = tf.cast(size[0], tf.int32), tf.cast(size[1], tf.int32)
    # Width first, then height (PIL's order up to Pillow 12); it matters as each pass is rounded.
    for axis, target, resample in ((1, width, _resample_columns), (0, height, _resample_rows)):
        image = tf.cond(
            tf.equal(tf.shape(image)[axis], target),
            lambda image=image: image,
            lambda image=image, target=target, resample=resample: resample(image, target, method),
        )
    return image[..., 0] if single_channel else image


def shorter_side_size(height, width, size):
    """torchvision `Resize(size)`'s output (height, width): the shorter side becomes `size`, the
    longer `int(size * long / short)` (truncated, computed here exactly in integers)."""
    height, width, size = (tf.cast(v, tf.int64) for v in (height, width, size))
    short, long = tf.minimum(height, width), tf.maximum(height, width)
    new_long = size * long // short
    portrait = width <= height  # torchvision's tie rule: a square counts as portrait
    new_height = tf.where(portrait, new_long, size)
    new_width = tf.where(portrait, size, new_long)
    return tf.cast(new_height, tf.int32), tf.cast(new_width, tf.int32)


def resize_shorter(image, size: int, method: str = "bicubic"):
    """torchvision `Resize(size, interpolation=method)` on a PIL image (uint8 in, uint8 out)."""
    shape = tf.shape(image)
    return resize(image, shorter_side_size(shape[0], shape[1], size), method)


def _round_half_even_half(n):
    """Python's `int(round(n / 2.0))` for an integer tensor n (round half to even, like tf.round)."""
    return tf.cast(tf.round(tf.cast(n, tf.float64) / 2.0), tf.int32)


def center_crop(image, size):
    """torchvision `CenterCrop(size)`: offsets `int(round((h - crop) / 2.0))` (half to even).

    `size` is an int or (height, width). Like torchvision, an image smaller than the crop is first
    zero-padded, (crop - h) // 2 before and the rest after. Works on any dtype and (H, W[, C]).
    """
    crop_h, crop_w = (size, size) if isinstance(size, int) else size
    shape = tf.shape(image)
    grow_h, grow_w = tf.maximum(crop_h - shape[0], 0), tf.maximum(crop_w - shape[1], 0)
    padding = [[grow_h // 2, (grow_h + 1) // 2], [grow_w // 2, (grow_w + 1) // 2]]
    image = tf.pad(image, padding + [[0, 0]] * (image.shape.rank - 2))
    shape = tf.shape(image)
    top, left = _round_half_even_half(shape[0] - crop_h), _round_half_even_half(shape[1] - crop_w)
    return image[top : top + crop_h, left : left + crop_w]


def normalize(image, mean, std):
    """torchvision `ToTensor()` + `Normalize(mean, std)`: uint8 -> x / 255 -> (x - mean) / std, float32."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def pad_to_multiple(image, multiple: int):
    """Zero-pad bottom and right so height and width are multiples of `multiple`; no resizing.

    LOST (`main_lost.py`) pads the *normalised* tensor, so its padding is 0 in model units: to
    match it, call this after `normalize`.
    """
    shape = tf.shape(image)
    extra_h, extra_w = (-shape[0]) % multiple, (-shape[1]) % multiple
    return tf.pad(image, [[0, extra_h], [0, extra_w]] + [[0, 0]] * (image.shape.rank - 2))


def resize_longer_and_pad(image, size: int = 224, method: str = "lanczos"):
    """Teaching Matters' SPair-71k input (`run_kp_analysis.py::resize`): uint8 in, uint8 out.

    The longer side becomes `size`, the shorter `np.around(size * short / long)` (half to even);
    a square counts as landscape. The image is centred on a black (size, size) canvas, offset
    (size - new) // 2. The padding is 0 in *pixels*: normalising afterwards, as the original does,
    turns it into -mean/std.
    """
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    landscape = shape[0] <= shape[1]
    short_height = tf.cast(tf.round(size * height / width), tf.int32)
    short_width = tf.cast(tf.round(size * width / height), tf.int32)
    new_height = tf.where(landscape, short_height, size)
    new_width = tf.where(landscape, size, short_width)
    image = resize(image, (new_height, new_width), method)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    padding = [[top, size - new_height - top], [left, size - new_width - left]]
    return tf.pad(image, padding + [[0, 0]] * (image.shape.rank - 2))


def eval_transform(preprocess: Preprocess, image_size: int | None = None) -> Callable:
    """timm's eval transform of a registry recipe: uint8 (H, W, 3) -> float32 (crop, crop, 3).

    Resize the shorter side to `int(crop / crop_pct)` with the recipe's interpolation, center-crop
    `crop`, normalise with the recipe's mean and std. `image_size` replaces the crop size and
    scales the resize with it, as timm's `transforms_imagenet_eval(img_size=...)` does.
    """
    if image_size is not None:
        preprocess = dataclasses.replace(preprocess, crop=image_size)
    _check_method(preprocess.interpolation)
    crop = preprocess.crop

    def transform(image):
        image = resize_shorter(image, preprocess.resize, preprocess.interpolation)
        image = normalize(center_crop(image, crop), preprocess.mean, preprocess.std)
        return tf.ensure_shape(image, (crop, crop, 3))

    return transform


def teaching_matters_transform(preprocess: Preprocess, size: int = 224) -> Callable:
    """Teaching Matters' `standard_transform` (`meta_utils/preproc.py`): bicubic `Resize(size)`,
    `CenterCrop(size)`, then the model's own mean and std, whatever its own eval recipe is."""
    return eval_transform(dataclasses.replace(preprocess, crop=size, crop_pct=1.0, interpolation="bicubic"))


# cl-vs-mim's notebooks call timm 0.5.4 `transforms_imagenet_eval(img_size=224, mean, std)` with
# ImageNet statistics and timm's defaults: crop_pct 0.875 and *bilinear* resizing (for both
# MoCo v3 and SimMIM, whatever their own recipes say).
CL_VS_MIM_PREPROCESS = Preprocess(crop=224, crop_pct=0.875, interpolation="bilinear")

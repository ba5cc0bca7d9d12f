"""vitjax.data.augment against torchvision's and DINO's rules, written out independently.

Oracles: torchvision's formulas in NumPy float64 (brightness/contrast/saturation blends, Python's
colorsys for hue), PIL (resize of a crop, ImageOps.solarize, GaussianBlur), scipy's exact Gaussian,
and the closed-form distributions of RandomResizedCrop.get_params (scipy KS tests).
"""

from __future__ import annotations

import colorsys
import math

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps
from scipy import ndimage, stats

from vitjax.data import augment as A
from vitjax.data.loader import example_seed
from vitjax.data.tf_env import import_tf
from vitjax.models.registry import IMAGENET_MEAN, IMAGENET_STD

tf = import_tf()

with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as _im:
    PHOTO = np.asarray(_im.convert("RGB").resize((128, 150), Image.Resampling.BILINEAR))  # 150 x 128
SMALL = PHOTO[40:72, 30:70].astype(np.float64) / 255.0  # 32 x 40 float image in [0, 1]


def seed_of(index: int, epoch: int = 0):
    """The seed the loader hands the transform for example `index` of `epoch` (run seed 0)."""
    return example_seed(0, epoch, index)


def record(index: int = 0, image=PHOTO, epoch: int = 0):
    return {"image": tf.constant(image), "label": tf.constant(7, tf.int64), "index": tf.constant(index, tf.int64),
            "seed": seed_of(index, epoch)}


# ---- determinism ----------------------------------------------------------------------------------


def test_views_are_a_function_of_seed_index_and_epoch():
    kwargs = dict(global_size=32, local_size=16, num_local=2)
    a, b = A.multi_crop(record(3), **kwargs), A.multi_crop(record(3), **kwargs)
    for other in (A.multi_crop(record(4), **kwargs), A.multi_crop(record(3, epoch=1), **kwargs)):
        for key in ("global_views", "local_views"):
            np.testing.assert_array_equal(a[key], b[key])
            assert not np.allclose(a[key], other[key])
    # Each view draws independent randomness.
    assert not np.allclose(a["global_views"][0], a["global_views"][1])
    assert not np.allclose(a["local_views"][0], a["local_views"][1])
    # Graph mode inside tf.data gives the same views as eager mode.
    mapped = next(iter(tf.data.Dataset.from_tensors(record(3)).map(lambda r: A.multi_crop(r, **kwargs))))
    np.testing.assert_array_equal(mapped["global_views"], a["global_views"])
    np.testing.assert_array_equal(mapped["local_views"], a["local_views"])


# ---- RandomResizedCrop ------------------------------------------------------------------------------


def _boxes(height, width, scale, n=1500):
    """n boxes of RandomResizedCrop.get_params for examples 0..n-1, in one traced graph."""
    seeds = tf.stack([seed_of(i) for i in range(n)])
    fn = tf.function(lambda s: tf.stack(A.random_resized_crop_box(s, height, width, scale)))
    return tf.map_fn(fn, seeds, fn_output_signature=tf.int32).numpy().astype(np.float64)


def test_rrc_distribution_matches_get_params():
    # On a 400 x 400 image every first attempt with scale <= 0.5 fits, so the closed forms hold:
    # area fraction ~ U(scale), log aspect ~ U(log 3/4, log 4/3), top ~ U{0..H-h}, left ~ U{0..W-w}.
    height = width = 400
    top, left, h, w = _boxes(height, width, (0.08, 0.5)).T
    area = h * w / (height * width)
    slack = (h + w + 1) / (2 * height * width)  # w and h are rounded to integers
    assert np.all(area >= 0.08 - slack) and np.all(area <= 0.5 + slack)
    assert stats.kstest(area, stats.uniform(0.08, 0.42).cdf).pvalue > 1e-3
    log_aspect = np.log(w / h)
    assert np.all(np.abs(log_aspect) <= math.log(4 / 3) + 1 / h.min())
    assert stats.kstest(log_aspect, stats.uniform(-math.log(4 / 3), 2 * math.log(4 / 3)).cdf).pvalue > 1e-3
    assert np.all(top >= 0) and np.all(top + h <= height) and np.all(left >= 0) and np.all(left + w <= width)
    assert stats.kstest((top + 0.5) / (height - h + 1), "uniform").pvalue > 1e-3
    assert stats.kstest((left + 0.5) / (width - w + 1), "uniform").pvalue > 1e-3


def test_rrc_rejects_crops_that_do_not_fit():
    height, width = 150, 128
    top, left, h, w = _boxes(height, width, (0.08, 1.0), n=500).T
    assert np.all(top >= 0) and np.all(top + h <= height) and np.all(left >= 0) and np.all(left + w <= width)
    assert np.all(np.abs(np.log(w / h)) <= math.log(4 / 3) + 1 / h.min())
    assert (h * w).max() / (height * width) > 0.9  # large crops still occur


@pytest.mark.parametrize("height,width", [(10, 400), (400, 10), (12, 12)])
def test_rrc_fallback_is_torchvisions_central_crop(height, width):
    # scale (0.9, 1) on an extreme aspect ratio: no attempt fits, so torchvision's fallback applies.
    in_ratio = width / height
    if in_ratio < 3 / 4:
        w, h = width, int(round(width / (3 / 4)))
    elif in_ratio > 4 / 3:
        h, w = height, int(round(height * (4 / 3)))
    else:
        h, w = height, width
    expected = ((height - h) // 2, (width - w) // 2, h, w)
    boxes = _boxes(height, width, (0.9, 1.0), n=20)
    if (height, width) == (12, 12):  # a square image: attempts may fit, every box must lie inside
        assert np.all(boxes[:, 0] + boxes[:, 2] <= 12) and np.all(boxes[:, 1] + boxes[:, 3] <= 12)
    else:
        np.testing.assert_array_equal(boxes, np.tile(expected, (20, 1)))


@pytest.mark.parametrize("method,pil", [("bicubic", Image.Resampling.BICUBIC),
                                        ("bilinear", Image.Resampling.BILINEAR)])
def test_resized_crop_matches_pil(method, pil):
    top, left, h, w = 17, 9, 101, 83
    ours = A.resized_crop(tf.constant(PHOTO), (top, left, h, w), (40, 56), method).numpy()
    theirs = np.asarray(Image.fromarray(PHOTO).crop((left, top, left + w, top + h)).resize((56, 40), pil)) / 255
    assert ours.shape == (40, 56, 3) and ours.dtype == np.float32
    # preprocess.resize rounds each pass as PIL does; a rare pixel differs by two grey levels.
    error = np.abs(ours - theirs)
    assert error.max() <= 2 / 255 + 1e-6 and error.mean() < 0.3 / 255


# ---- flip, colour, blur, solarize -----------------------------------------------------------------


def test_flip_is_an_exact_mirror():
    x = tf.constant(SMALL, tf.float32)
    np.testing.assert_array_equal(A.random_flip(x, seed_of(0), p=1.0), SMALL[:, ::-1].astype(np.float32))
    np.testing.assert_array_equal(A.random_flip(x, seed_of(0), p=0.0), SMALL.astype(np.float32))
    flipped = [not np.array_equal(A.random_flip(x, seed_of(i)), x) for i in range(40)]
    assert 8 < sum(flipped) < 32


def _gray(x):
    return x @ np.array([0.2989, 0.587, 0.114])


def _blend(a, b, f):
    return np.clip(f * a + (1 - f) * b, 0, 1)


def _hue(x, shift):
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*x[idx])
        out[idx] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    return out


ORACLES = {
    "brightness": (A.adjust_brightness, lambda x, f: _blend(x, 0.0, f)),
    "contrast": (A.adjust_contrast, lambda x, f: _blend(x, _gray(x).mean(), f)),
    "saturation": (A.adjust_saturation, lambda x, f: _blend(x, _gray(x)[..., None], f)),
    "hue": (A.adjust_hue, _hue),
}


@pytest.mark.parametrize("op,factor", [("brightness", 0.6), ("brightness", 1.4), ("contrast", 0.5),
                                       ("contrast", 1.8), ("saturation", 0.3), ("saturation", 2.0),
                                       ("hue", 0.1), ("hue", -0.35)])
def test_colour_op_matches_torchvision_formula(op, factor):
    ours, oracle = ORACLES[op]
    np.testing.assert_allclose(ours(tf.constant(SMALL, tf.float32), factor), oracle(SMALL, factor), atol=2e-6)


def test_grayscale_matches_torchvision_formula():
    out = A.random_grayscale(tf.constant(SMALL, tf.float32), seed_of(0), p=1.0).numpy()
    np.testing.assert_allclose(out, np.repeat(_gray(SMALL)[..., None], 3, axis=-1), atol=1e-6)


def test_color_jitter_at_zero_strength_is_the_identity():
    x = tf.constant(SMALL, tf.float32)
    np.testing.assert_array_equal(A.color_jitter(x, seed_of(1), 0.0, 0.0, 0.0, 0.0), x)
    # A factor of exactly 1 (brightness, contrast, saturation) leaves the image unchanged too.
    np.testing.assert_array_equal(A.color_jitter(x, seed_of(1), (1.0, 1.0), (1.0, 1.0), (1.0, 1.0)), x)
    # torchvision's argument checks: hue within [-0.5, 0.5], strengths non-negative.
    with pytest.raises(ValueError, match="hue range"):
        A.color_jitter(x, seed_of(1), hue=0.6)
    with pytest.raises(ValueError, match="brightness strength"):
        A.color_jitter(x, seed_of(1), brightness=-0.1)


def test_color_jitter_applies_ops_in_a_random_order():
    # Saturation 2.0 and hue 0.2 (fixed factors) do not commute: each seed must give one of the two
    # orders, and both orders must occur, as with torchvision's randperm.
    sat, hue = ORACLES["saturation"][1], ORACLES["hue"][1]
    sat_first, hue_first = hue(sat(SMALL, 2.0), 0.2), sat(hue(SMALL, 0.2), 2.0)
    assert np.abs(sat_first - hue_first).max() > 0.05
    seen = set()
    for i in range(12):
        out = A.color_jitter(tf.constant(SMALL, tf.float32), seed_of(i), saturation=(2.0, 2.0), hue=(0.2, 0.2))
        matches = [np.abs(out - ref).max() < 1e-5 for ref in (sat_first, hue_first)]
        assert sum(matches) == 1
        seen.add(matches.index(True))
    assert seen == {0, 1}


def test_color_jitter_draws_factors_in_torchvisions_range():
    # Brightness alone, strength 0.4: out = x * f with f ~ U(0.6, 1.4), one f per image.
    x = SMALL * 0.5 + 0.1  # keeps x * 1.4 below 1, so no clipping hides the factor
    factors = []
    for i in range(60):
        out = A.color_jitter(tf.constant(x, tf.float32), seed_of(i), brightness=0.4).numpy()
        ratio = out / x
        assert np.ptp(ratio) < 1e-5
        factors.append(ratio.mean())
    assert 0.6 - 1e-6 <= min(factors) and max(factors) <= 1.4 + 1e-6
    assert stats.kstest(factors, stats.uniform(0.6, 0.8).cdf).pvalue > 1e-3


def test_gaussian_blur_is_the_exact_gaussian_and_close_to_pil():
    for sigma in (0.5, 1.3, 2.0):
        ours = A.gaussian_blur(tf.constant(SMALL, tf.float32), sigma, radius=8).numpy()
        exact = ndimage.gaussian_filter(SMALL, (sigma, sigma, 0), mode="nearest", truncate=8 / sigma)
        np.testing.assert_allclose(ours, exact, atol=1e-5)
        # DINO blurs PIL images; PIL approximates the Gaussian with box blurs.
        pil = np.asarray(Image.fromarray(PHOTO).filter(ImageFilter.GaussianBlur(radius=sigma))) / 255
        full = A.gaussian_blur(tf.constant(PHOTO / 255, tf.float32), sigma, radius=8).numpy()
        assert np.abs(full - pil).mean() < 1.5 / 255
    np.testing.assert_array_equal(A.random_gaussian_blur(tf.constant(SMALL, tf.float32), seed_of(0), p=0.0),
                                  SMALL.astype(np.float32))


def test_solarize_matches_pil():
    ours = A.solarize(tf.constant(PHOTO / 255, tf.float32)).numpy()
    np.testing.assert_allclose(ours, np.asarray(ImageOps.solarize(Image.fromarray(PHOTO), 128)) / 255, atol=1e-6)


# ---- views and presets ------------------------------------------------------------------------------


def test_view_without_random_ops_is_resize_and_normalize():
    # Scale (1, 1) and the image's own aspect ratio: the crop is the whole image, so the view is
    # torchvision's Resize + ToTensor + Normalize.
    ratio = (128 / 150, 128 / 150)
    recipe = A.ViewRecipe(size=32, scale=(1.0, 1.0), ratio=ratio, flip_p=0.0)
    out = A.augment_view(tf.constant(PHOTO), seed_of(0), recipe).numpy()
    resized = np.asarray(Image.fromarray(PHOTO).resize((32, 32), Image.Resampling.BICUBIC)) / 255
    np.testing.assert_allclose(out, (resized - IMAGENET_MEAN) / IMAGENET_STD, atol=1 / 255 / 0.224 + 1e-5)


@pytest.mark.parametrize("num_local", [3, 0])
def test_multi_crop_returns_two_global_and_n_local_views(num_local):
    out = A.multi_crop(record(1), global_size=40, local_size=16, num_local=num_local)
    assert out["global_views"].shape == (2, 40, 40, 3) and out["global_views"].dtype == tf.float32
    assert out["local_views"].shape == (num_local, 16, 16, 3)
    assert int(out["label"]) == 7
    assert np.isfinite(out["global_views"]).all()


def test_train_transform_presets():
    for kind in ("simple", "deit"):
        out = A.train_transform(kind, 32)(record(2))
        assert out["image"].shape == (32, 32, 3) and int(out["label"]) == 7
    selfpatch = A.train_transform("selfpatch", 32, local_size=16, num_local=2)(record(2))
    assert selfpatch["global_views"].shape == (2, 32, 32, 3) and selfpatch["local_views"].shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="unknown augmentation kind 'randaugment'"):
        A.train_transform("randaugment", 32)

"""vitjax.data.mixing against timm's own Mixup (mode='batch').

timm draws with numpy's global RNG; the tests feed timm exactly the values vitjax drew (the apply
and switch coins, the Beta lam, the box centre) by replacing numpy.random's functions for the
call, then compare timm's mixed images and targets with vitjax's. Distributions are checked with
KS tests against scipy's Beta.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats
from timm.data import mixup as timm_mixup

from vitjax.data.mixing import apply_mix, draw_mix_params, mix_batch, smoothed_one_hot

B, H, W, C, NUM_CLASSES = 6, 12, 10, 3, 5
IMAGES = jax.random.normal(jax.random.key(0), (B, H, W, C))
LABELS = jnp.array([0, 3, 1, 4, 2, 3])
SMOOTHING = 0.1
N_KEYS = 2000
KEYS = jax.random.split(jax.random.key(0), N_KEYS)
CONFIGS = {
    "both": dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5),
    "mixup": dict(mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5),
    "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5),
    "sometimes": dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.5, switch_prob=0.5),
}


def timm_with_our_draws(monkeypatch, params, config, smoothing):
    """Run timm's Mixup on IMAGES/LABELS with numpy.random returning what `params` drew."""
    rands = iter([0.0 if params.mixed else 1.0, 0.0 if params.use_cutmix else 1.0])
    centre = iter(np.asarray(params.center).tolist())
    monkeypatch.setattr(timm_mixup.np.random, "rand", lambda *a: next(rands))
    monkeypatch.setattr(timm_mixup.np.random, "beta", lambda *a, **k: float(params.lam_drawn))
    monkeypatch.setattr(timm_mixup.np.random, "randint", lambda *a, **k: next(centre))
    mixer = timm_mixup.Mixup(**config, mode="batch", label_smoothing=smoothing, num_classes=NUM_CLASSES)
    x = torch.from_numpy(np.asarray(IMAGES).transpose(0, 3, 1, 2).copy())
    x, target = mixer(x, torch.from_numpy(np.array(LABELS)))
    monkeypatch.undo()
    return x.numpy().transpose(0, 2, 3, 1), target.numpy()



@functools.cache
def draws(name):
    """What mix_batch draws and returns for keys 0..N_KEYS-1 under CONFIGS[name] (one compile)."""
    config = CONFIGS[name]

    def draw_and_mix(key):  # mix_batch, keeping what it drew
        params = draw_mix_params(key, H, W, **config)
        return params, apply_mix(IMAGES, LABELS, params, num_classes=NUM_CLASSES, label_smoothing=SMOOTHING)

    return jax.device_get(jax.jit(jax.vmap(draw_and_mix))(KEYS))


def draw(name, i):
    return jax.tree.map(lambda leaf: leaf[i], draws(name))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_timm_mixup(monkeypatch, name):
    kinds = set()
    for i in range(16):
        params, (images, targets) = draw(name, i)
        timm_images, timm_targets = timm_with_our_draws(monkeypatch, params, CONFIGS[name], SMOOTHING)
        np.testing.assert_allclose(images, timm_images, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(targets, timm_targets, rtol=1e-6, atol=1e-6)
        kinds.add("none" if not params.mixed else "cutmix" if params.use_cutmix else "mixup")
    expected = {"both": {"mixup", "cutmix"}, "mixup": {"mixup"}, "cutmix": {"cutmix"},
                "sometimes": {"none", "mixup", "cutmix"}}[name]
    assert kinds == expected
    # Targets are distributions.
    targets = draws(name)[1][1]
    assert targets.shape == (N_KEYS, B, NUM_CLASSES) and targets.dtype == np.float32 and (targets >= 0).all()
    np.testing.assert_allclose(targets.sum(axis=-1), 1.0, rtol=1e-6)


def test_mix_batch_is_draw_then_apply():
    ours = mix_batch(KEYS[3], IMAGES, LABELS, num_classes=NUM_CLASSES, label_smoothing=SMOOTHING, **CONFIGS["both"])
    for got, want in zip(ours, draw("both", 3)[1]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_cutmix_box_is_clipped_and_lam_is_its_true_area():
    for i in range(50):
        params, (images, _) = draw("cutmix", i)
        y_lo, y_hi, x_lo, x_hi = params.box
        assert 0 <= y_lo <= y_hi <= H and 0 <= x_lo <= x_hi <= W
        changed = np.any(images != np.asarray(IMAGES), axis=(0, 3))
        assert changed.sum() == (y_hi - y_lo) * (x_hi - x_lo)
        np.testing.assert_allclose(params.lam, 1 - changed.sum() / (H * W), rtol=1e-6)


def test_both_alphas_zero_is_only_label_smoothing():
    images, targets = mix_batch(jax.random.key(0), IMAGES, LABELS, num_classes=NUM_CLASSES,
                                mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.2)
    np.testing.assert_array_equal(images, IMAGES)
    expected = np.full((B, NUM_CLASSES), 0.2 / NUM_CLASSES)
    expected[np.arange(B), np.asarray(LABELS)] = 1 - 0.2 + 0.2 / NUM_CLASSES
    np.testing.assert_allclose(targets, expected, rtol=1e-6)
    np.testing.assert_allclose(smoothed_one_hot(LABELS, NUM_CLASSES, 0.2), expected, rtol=1e-6)


def test_draws_follow_timms_distributions():
    params = draws("sometimes")[0]
    mixed, cutmix = params.mixed, params.use_cutmix
    assert abs(mixed.mean() - 0.5) < 0.04 and abs(cutmix.mean() - 0.5) < 0.04
    assert stats.kstest(params.lam_drawn[cutmix], stats.beta(1.0, 1.0).cdf).pvalue > 1e-3
    assert stats.kstest(params.lam_drawn[~cutmix], stats.beta(0.8, 0.8).cdf).pvalue > 1e-3
    assert np.all(params.lam[~mixed] == 1.0)
    cy, cx = params.center.T
    assert stats.chisquare(np.bincount(cy, minlength=H)).pvalue > 1e-3
    assert stats.chisquare(np.bincount(cx, minlength=W)).pvalue > 1e-3

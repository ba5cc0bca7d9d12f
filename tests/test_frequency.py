"""Frequency robustness: FreqAttack's annulus against a NumPy rebuild of its construction, the noise's
spectrum against the band, toy classifiers that see one known frequency against the band-noise
accuracy and the heat map, and `vitjax frequency` end to end."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitjax.cli import main
from vitjax.curvature import frequency

SCENES = "vitjax_scenes/size64_train40_test40_cue20_seed0"


def their_mask(f: float, size: int, s: float = 0.2) -> np.ndarray:
    """how-do-vits-work FreqAttack._fourier_mask's mask for a square even-sized image, in NumPy:
    _center_mask(w1, size) = ones(w1, w1) zero-padded by int((size - w1) / 2) on each side."""
    def center(w1):
        w1 = size if w1 > size else max(w1, 0)
        pad = int((size - w1) / 2)
        return np.pad(np.ones((w1, w1)), pad)

    return center(int(((f + s) * size) / (2 * math.pi)) * 2) - center(int(((f - s) * size) / (2 * math.pi)) * 2)


@pytest.mark.parametrize("size", [14, 32, 64])
def test_band_mask_is_their_annulus(size):
    for f in np.linspace(0, np.pi, 11):
        np.testing.assert_array_equal(frequency.band_mask(size, size, f), their_mask(f, size), err_msg=f"f={f}")
    assert frequency.band_mask(64, 64, np.pi).sum() > 0 and frequency.band_mask(64, 64, 0.0)[32, 32] == 1


def test_band_limited_noise_has_no_energy_outside_the_band():
    size = 32
    noise = frequency.sign_noise(jax.random.key(0), (2, size, size, 3), 0.5)
    for f in (0.0, 0.4 * np.pi, np.pi):
        mask = frequency.band_mask(size, size, f)
        limited = np.asarray(frequency.band_limit(noise, jnp.asarray(mask)), np.float64)
        # Unshifted mask, and its mirror k -> -k (the real part's conjugate half).
        centred = np.fft.ifftshift(mask)
        band = (centred + np.roll(np.flip(centred), 1, axis=(0, 1))) > 0
        spectrum = np.abs(np.fft.fft2(limited, axes=(1, 2))) ** 2
        inside, outside = spectrum[:, band].sum(), spectrum[:, ~band].sum()
        assert outside <= 1e-9 * inside, f
        # And it is the float64 NumPy band-pass of the same noise: Re(ifft2(M * fft2(noise))).
        expected = np.real(np.fft.ifft2(np.fft.fft2(np.asarray(noise, np.float64), axes=(1, 2))
                                        * centred[None, :, :, None], axes=(1, 2)))
        np.testing.assert_allclose(limited, expected, atol=1e-5)


SIZE, U0, V0 = 16, 1, 3


def toy_problem(n=64, margin=0.5):
    """A linear two-class model that sees only the cosine at frequency (U0, V0) (a low-pass toy), and
    images whose label is the sign of that cosine's coefficient plus high-frequency clutter."""
    i, j = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    wave = np.cos(2 * np.pi * (U0 * i / SIZE + V0 * j / SIZE))
    wave /= np.linalg.norm(wave)
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 2, n)
    clutter = np.cos(np.pi * (i + j))[None] * rng.randn(n, 1, 1)  # the Nyquist frequency only
    images = ((2 * labels - 1)[:, None, None] * margin * wave + clutter)[..., None].astype(np.float32)
    params = {"w": wave.astype(np.float32)}

    def logits_fn(p, x):
        score = jnp.einsum("bhwc,hw->b", x, p["w"])
        return jnp.stack([-score, score], -1)

    batches = [{"image": images[:40], "label": labels[:40]}, {"image": images[40:], "label": labels[40:]}]
    return logits_fn, params, batches


def test_heat_map_of_a_one_frequency_toy_is_zero_elsewhere():
    logits_fn, params, batches = toy_problem()
    result = frequency.fourier_heat_map(logits_fn, params, batches, eps=1.0, stride=1, chunk=32)
    u, v, error = result["u"], result["v"], result["error"]
    assert error.shape == (SIZE, SIZE) and result["clean_error"] == 0.0
    seen = {(U0, V0), (-U0, -V0)}
    for iu, uu in enumerate(u):
        for iv, vv in enumerate(v):
            if (uu, vv) not in seen:
                assert error[iu, iv] == 0.0, (uu, vv)
    at = lambda uu, vv: error[list(u).index(uu), list(v).index(vv)]
    # eps 1 > margin 0.5: images whose random sign opposes their label flip (about half).
    assert 0.25 < at(U0, V0) < 0.75 and at(-U0, -V0) == at(U0, V0)
    assert at(V0, U0) == 0.0 and at(U0, -V0) == 0.0  # the axes are not swapped or mirrored


def test_band_noise_hurts_only_in_the_toys_band():
    logits_fn, params, batches = toy_problem()
    # Frequency (1, 3) of 16 px lies in the squares of half-width 1..3, i.e. bands with f in about [0, 1.4].
    result = frequency.band_noise_accuracy(logits_fn, params, batches, frequencies=[0.4 * np.pi, np.pi],
                                           eps=3.0)
    assert result["clean_accuracy"] == 1.0
    assert result["accuracy"][1] == 1.0  # the highest band carries no energy at (1, 3)
    assert result["accuracy"][0] < 0.9


def test_frequency_command_writes_a_report(tmp_path):
    out = tmp_path / "report"
    code = main(["frequency", "--model", "vit_scenes_patch8_64", "--data", f"{SCENES}:test", "--data-dir",
                 str(tmp_path / "data"), "--num-batches", "1", "--batch-size", "8", "--bands", "3",
                 "--heat-stride", "32", "--out", str(out)])
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"index.html", "metrics.json", "band_noise.png", "fourier_heat_map.png"} <= names
    metrics = json.loads((out / "metrics.json").read_text())["models"]["vit_scenes_patch8_64"]
    assert len(metrics["band_noise"]["accuracy"]) == 3
    assert all(0 <= v <= 1 for v in metrics["band_noise"]["accuracy"])
    assert all(0 <= v <= 1 for row in metrics["heat_map"]["error"] for v in row)

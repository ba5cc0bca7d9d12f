"""Frequency robustness: accuracy under band-limited noise (Park & Kim) and the Fourier heat map of
the error (Yin et al. 2019), both on model-input images (after the model's normalisation).

Band-limited noise (`ops/adversarial.py::FreqAttack` wrapping `Random`, how-do-vits-work)
-----------------------------------------------------------------------------------------
    delta = eps * sign(N(0, 1))                      per pixel and channel (their `Random` attack)
    D     = fftshift(fft2(delta))                    per channel, over (H, W)
    x'    = x + Re(ifft2(ifftshift(M_f * D)))        |D| masked, phase kept (= M_f * D)

M_f (`band_mask`) is a square annulus around the centred zero frequency: the square of half-width
n(f + s) minus the square of half-width n(f - s), n(g) = int(g * size / (2 pi)) clamped to
[0, size / 2], the square covering centred indices [c - n, c + n) with c = size // 2 (their
`_center_mask`: ones of side 2n padded to `size`). f is an angular frequency in [0, pi] (pi is the
Nyquist frequency), s = 0.2 their half-width. Taking the real part makes the noise's spectrum
(M_f + M_f mirrored) / 2 * D: the noise has no energy outside the annulus and its mirror image.
Rows and columns get their own n for non-square images (theirs are square); for odd sizes the
shifts are numpy's fftshift/ifftshift where theirs rolls by int(size / 2) both ways (the same for
even sizes). eps defaults to 0.007 in their code, in the units of their normalised inputs; vitjax's
default here is larger (`DEFAULT_BAND_EPS`), since 0.007 changes no prediction of the embedded models.
One sign pattern per (seed, batch index) serves every band (common random numbers: the bands
differ only by their masks).

Fourier heat map (Yin et al., "A Fourier perspective on model robustness")
---------------------------------------------------------------------------
For each frequency (u, v) of a grid (centred indices: u vertical, v horizontal, in [-H/2, H/2)),
the images get x' = x + eps * r * U_(u,v), U = cos(2 pi (u i / H + v j / W)) / |cos(...)|_2 (the
real Fourier basis image with unit l2 norm: its spectrum is non-zero only at (u, v) and (-u, -v)),
r a random sign per image and channel; the heat map is the error rate at each (u, v). Yin et al.
draw r per image and frequency and clip to the valid pixel range; here r depends on (seed, batch
index) only, so (u, v) and (-u, -v), which give the same U, give identical perturbations and are
evaluated once, and nothing is clipped (the model's inputs are normalised, not pixels).

Both passes are jitted per batch over a chunk of bands or frequencies (vmap), with the batch split
over the devices of `mesh`; `logits_fn(params, images) -> (B, classes)`, labels are the argmax of
batch['target'] (or batch['label']), and rows with batch['valid'] False count for nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vitjax import parallel
from vitjax.curvature import batches as batches_lib

PARK_KIM_WIDTH = 0.2  # FreqAttack's s
DEFAULT_BAND_EPS = 0.1  # in normalised input units (FreqAttack's own default is 0.007)
DEFAULT_HEAT_EPS = 8.0  # l2 norm of the perturbation per image channel, in normalised input units


def _half_width(g: float, size: int) -> int:
    """n(g) = int(g * size / 2 pi), truncated toward zero as Python's int, clamped to [0, size / 2]."""
    return min(max(int(g * size / (2 * math.pi)), 0), size // 2)


def _square(half: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    rows, cols = (np.abs(np.arange(n) - n // 2 + 0.5) < h for n, h in zip(shape, half))  # [c - h, c + h)
    return rows[:, None] & cols[None, :]


def band_mask(height: int, width: int, frequency: float, half_width: float = PARK_KIM_WIDTH) -> np.ndarray:
    """FreqAttack's square annulus M_f, float32 (H, W) in fftshifted layout (zero frequency at
    (H // 2, W // 2))."""
    shape = (height, width)
    outer = _square(tuple(_half_width(frequency + half_width, n) for n in shape), shape)
    inner = _square(tuple(_half_width(frequency - half_width, n) for n in shape), shape)
    return (outer & ~inner).astype(np.float32)


def band_limit(noise, mask):
    """Re(ifft2(ifftshift(mask * fftshift(fft2(noise))))) over the (H, W) axes of NHWC `noise`."""
    axes = (-3, -2)
    spectrum = jnp.fft.fftshift(jnp.fft.fft2(noise, axes=axes), axes=axes) * mask[..., None]
    return jnp.real(jnp.fft.ifft2(jnp.fft.ifftshift(spectrum, axes=axes), axes=axes)).astype(noise.dtype)


def sign_noise(key, shape, eps: float):
    """Their `Random` attack's noise: eps * sign(N(0, 1))."""
    return eps * jnp.sign(jax.random.normal(key, shape))


def fourier_basis(u, v, height: int, width: int):
    """The unit-l2-norm real Fourier basis image cos(2 pi (u i / H + v j / W)) / norm, (H, W)."""
    i = jnp.arange(height, dtype=jnp.float32)[:, None]
    j = jnp.arange(width, dtype=jnp.float32)[None, :]
    wave = jnp.cos(2 * jnp.pi * (u * i / height + v * j / width))
    return wave / jnp.sqrt(jnp.sum(jnp.square(wave)))


def _labels(batch):
    return batch["target"].argmax(-1) if "target" in batch else batch["label"]


def _correct(logits_fn, params, images, batch):
    hits = (logits_fn(params, images).argmax(-1) == _labels(batch)).astype(jnp.float32)
    return jnp.sum(hits * batch["valid"].astype(jnp.float32))


def _sweep(evaluate: Callable, params, batches: Sequence[dict], settings: np.ndarray, *, chunk: int, mesh,
           seed: int, desc: str) -> tuple[np.ndarray, float]:
    """Correct counts at each row of `settings`, summed over batches, and the number of valid rows:
    `evaluate(params, setting_chunk, batch, key)` -> (chunk,) counts, jitted and vmapped by the caller."""
    mesh = mesh or parallel.make_mesh()
    params = jax.device_put(params, parallel.replicated(mesh))
    count = len(settings)
    chunk = max(1, min(chunk, count))
    padded = np.concatenate([settings, np.repeat(settings[-1:], -count % chunk, axis=0)])
    chunks = [jax.device_put(padded[i:i + chunk], parallel.replicated(mesh)) for i in range(0, len(padded), chunk)]
    correct, total = np.zeros(len(padded)), 0.0
    with tqdm(total=len(batches) * len(chunks), desc=desc, leave=False) as bar:
        for index, host_batch in enumerate(batches):
            batch = batches_lib.place(host_batch, mesh)
            key = jax.random.fold_in(jax.random.key(seed), index)
            parts = []
            for settings_chunk in chunks:
                parts.append(evaluate(params, settings_chunk, batch, key))
                bar.update()
            correct += np.concatenate(jax.device_get(parts))
            total += float(np.asarray(host_batch["valid"]).sum()) if "valid" in host_batch else len(host_batch["image"])
    if not total:
        raise ValueError("the batches have no valid rows")
    return correct[:count], total


def band_noise_accuracy(logits_fn: Callable, params, batches: Sequence[dict], *, frequencies=None,
                        eps: float = DEFAULT_BAND_EPS, half_width: float = PARK_KIM_WIDTH, seed: int = 0,
                        chunk: int = 4, mesh=None) -> dict:
    """Accuracy under FreqAttack's band-limited sign noise at each frequency f (default 0, 0.1 pi,
    ..., pi): {'frequency', 'accuracy', 'accuracy_drop' (clean - noisy), 'clean_accuracy', ...}."""
    frequencies = np.linspace(0, np.pi, 11) if frequencies is None else np.asarray(frequencies, np.float64)
    height, width = np.asarray(batches[0]["image"]).shape[1:3]
    # The first "band" is an all-zero mask: the clean accuracy, from the same compiled pass.
    masks = np.stack([np.zeros((height, width), np.float32)]
                     + [band_mask(height, width, f, half_width) for f in frequencies])

    @jax.jit
    def evaluate(params, mask_chunk, batch, key):
        noise = sign_noise(key, batch["image"].shape, eps)
        return jax.vmap(lambda mask: _correct(logits_fn, params, batch["image"] + band_limit(noise, mask), batch))(
            mask_chunk)

    correct, total = _sweep(evaluate, params, batches, masks, chunk=chunk, mesh=mesh, seed=seed, desc="band noise")
    accuracy = correct / total
    return {"frequency": frequencies, "accuracy": accuracy[1:], "accuracy_drop": accuracy[0] - accuracy[1:],
            "clean_accuracy": accuracy[0], "eps": eps, "half_width": half_width, "examples": total}


def heat_map_frequencies(size: int, stride: int = 1) -> np.ndarray:
    """Centred frequencies -size//2, -size//2 + stride, ... < size - size//2 of one axis."""
    return np.arange(-(size // 2), size - size // 2, stride)


def _canonical(u: int, v: int, height: int, width: int) -> tuple[int, int]:
    """One representative of {(u, v), (-u, -v)} modulo the image size: both give the same basis."""
    return min((u % height, v % width), ((-u) % height, (-v) % width))


def fourier_heat_map(logits_fn: Callable, params, batches: Sequence[dict], *, eps: float = DEFAULT_HEAT_EPS,
                     stride: int = 1, seed: int = 0, chunk: int = 8, mesh=None) -> dict:
    """Error rate under eps * r * U_(u, v) for each (u, v) of the centred grid with `stride`:
    {'u': (nu,), 'v': (nv,), 'error': (nu, nv) indexed [iu, iv], 'clean_error', 'eps', 'examples'}."""
    height, width = np.asarray(batches[0]["image"]).shape[1:3]
    us, vs = heat_map_frequencies(height, stride), heat_map_frequencies(width, stride)
    representatives: dict[tuple[int, int], int] = {}
    slot = np.zeros((len(us), len(vs)), int)
    for iu, u in enumerate(us):
        for iv, v in enumerate(vs):
            slot[iu, iv] = representatives.setdefault(_canonical(int(u), int(v), height, width), len(representatives))
    settings = np.zeros((len(representatives), 3), np.float32)  # (u, v, amplitude); row 0 is clean
    for (u, v), index in representatives.items():
        settings[index] = (u, v, eps)
    settings = np.concatenate([np.zeros((1, 3), np.float32), settings])

    @jax.jit
    def evaluate(params, setting_chunk, batch, key):
        images = batch["image"]
        signs = jax.random.rademacher(key, (images.shape[0], 1, 1, images.shape[-1]), jnp.float32)

        def at(setting):
            u, v, amplitude = setting[0], setting[1], setting[2]
            wave = fourier_basis(u, v, height, width)[None, :, :, None]
            return _correct(logits_fn, params, images + amplitude * signs * wave, batch)

        return jax.vmap(at)(setting_chunk)

    correct, total = _sweep(evaluate, params, batches, settings, chunk=chunk, mesh=mesh, seed=seed, desc="heat map")
    error = 1.0 - correct / total
    return {"u": us, "v": vs, "error": error[1:][slot], "clean_error": error[0], "eps": eps, "examples": total}

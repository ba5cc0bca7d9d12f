"""`vitjax landscape` and `vitjax frequency`: Park & Kim's ViT-vs-ResNet loss landscapes and frequency
robustness as reports (OUT/metrics.json, PNGs, OUT/index.html).

Options come from the dataclass defaults, then a config file (`--config`, a Python file whose
get_config() returns them, e.g. experiments/how_do_vits_work/loss_landscape.py), then the flags.
The defaults are sized to finish in a few minutes on a 2-core CPU (see the README for timings).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from vitjax.config_files import parse_data, parse_model
from vitjax.curvature.command import DEFAULT_MODELS


@dataclasses.dataclass
class LandscapeOptions:
    """Park & Kim's protocol on a coarser grid and fewer images than the paper (21 x 21 on the whole
    augmented training set): 11 x 11 points on [-1, 1]^2, 2 fixed augmented batches of 64."""

    models: tuple[str, ...] = DEFAULT_MODELS  # NAME or NAME:CHECKPOINT
    data: str = "vitjax_scenes/size64:train"  # DATASET[:SPLIT]
    data_dir: str | None = None
    dims: int = 2
    grid: int = 11
    span: float = 1.0
    normalization: str = "park_kim"  # 'filter' (Li et al., per output unit), 'park_kim' (dim 0), 'none'
    weight_decay: float = 0.05
    penalty: str = "park_kim"  # 'park_kim': wd * sum |theta_k|; 'l2': wd / 2 * sum |theta_k|^2
    num_batches: int = 2
    batch_size: int = 64
    augment: bool = True  # training crops/flips + Mixup/CutMix + smoothing 0.1; False: eval transform
    chunk: int = 8  # grid points per compiled call (vmap width)
    seed: int = 0
    out: str = "runs/landscape"


@dataclasses.dataclass
class FrequencyOptions:
    """Band-limited noise at 11 frequencies 0, 0.1 pi, ..., pi and an 8 x 8 Fourier heat map (stride 8
    at 64 px) on 2 test batches of 128."""

    models: tuple[str, ...] = DEFAULT_MODELS
    data: str = "vitjax_scenes/size64:test"
    data_dir: str | None = None
    num_batches: int = 2
    batch_size: int = 128
    bands: int = 11  # frequencies linspace(0, pi, bands)
    band_eps: float = 1.0  # sign-noise amplitude, model-input units
    half_width: float = 0.2  # FreqAttack's s
    heat_eps: float = 32.0  # l2 norm of the Fourier perturbation per channel, model-input units
    heat_stride: int = 8  # heat-map grid step in frequency indices
    chunk: int = 4
    seed: int = 0
    out: str = "runs/frequency"


def _load(entry: str):
    """'NAME' or 'NAME:CHECKPOINT' -> (label, registry name, model, params)."""
    import vitjax

    name, checkpoint = parse_model(entry)
    model, params = vitjax.load(name, checkpoint)
    return (entry if checkpoint else vitjax.lookup(name).name), name, model, params


def run_landscape(options: LandscapeOptions) -> Path:
    """Every model's landscape on its own fixed batches; returns the index.html path."""
    from vitjax.curvature import landscape
    from vitjax.curvature.batches import fixed_batches
    from vitjax.curvature.objective import classification_objective
    from vitjax.report import figures_landscape
    from vitjax.report.html import write_report

    if options.dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {options.dims}")
    data, split = parse_data(options.data, "train")
    results, metrics, objective = {}, {"settings": dataclasses.asdict(options), "models": {}}, ""
    for entry in options.models:
        label, name, model, params = _load(entry)
        started = time.perf_counter()
        batches = fixed_batches(data, split, name, num_batches=options.num_batches, batch_size=options.batch_size,
                                seed=options.seed, augment=options.augment, data_dir=options.data_dir)
        timings = {"batches_s": time.perf_counter() - started}
        loss_fn = classification_objective(model, weight_decay=options.weight_decay, penalty=options.penalty)
        bases = landscape.directions(jax.random.key(options.seed), params, normalization=options.normalization,
                                     num=options.dims)
        draw = landscape.landscape_1d if options.dims == 1 else landscape.landscape_2d
        started = time.perf_counter()
        results[label] = draw(loss_fn, params, batches, bases, grid=options.grid, span=options.span,
                              chunk=options.chunk)
        timings["landscape_s"] = time.perf_counter() - started
        objective = results[label].pop("objective")
        metrics["models"][label] = {"landscape": results[label], "timings": timings}
        print(f"{label}: loss at the grid centre {_centre(results[label]):.4g}, "
              f"{timings['landscape_s']:.0f} s for {options.grid ** options.dims} points")
    metrics["objective"] = objective
    if jax.process_index():
        return Path(options.out) / "index.html"
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    plot = figures_landscape.plot_landscape_1d if options.dims == 1 else figures_landscape.plot_landscape_2d
    figures = plot(results, out, objective)
    images = "augmented training images (crops, flips, Mixup/CutMix, label smoothing 0.1)" if options.augment \
        else "images (eval transform)"
    notes = [f"Objective: {objective}.",
             f"Data: {data}:{split}, {options.num_batches} fixed batches of {options.batch_size} {images}, the "
             f"same at every grid point (deterministic in seed {options.seed} and the batch index).",
             f"Directions: random Gaussian, '{options.normalization}' normalisation "
             "(see vitjax.curvature.landscape); excluded tensors stay fixed. Grid: "
             f"{options.grid}{' x ' + str(options.grid) if options.dims == 2 else ''} points on "
             f"[-{options.span:g}, {options.span:g}]."]
    title = "Loss landscapes: " + " vs ".join(metrics["models"])
    return write_report(out, title, metrics, figures, notes)


def _centre(result: dict) -> float:
    """The loss at the middle grid point: the trained weights when the grid size is odd."""
    loss = np.asarray(result["loss"])
    return float(loss[len(loss) // 2] if loss.ndim == 1 else loss[loss.shape[0] // 2, loss.shape[1] // 2])


def run_frequency(options: FrequencyOptions) -> Path:
    """Every model's accuracy under band-limited noise and its Fourier heat map; returns index.html."""
    from vitjax.curvature import frequency
    from vitjax.curvature.batches import fixed_batches
    from vitjax.curvature.objective import classification_objective
    from vitjax.report import figures_frequency
    from vitjax.report.html import write_report

    data, split = parse_data(options.data, "test")
    bands, heat_maps = {}, {}
    metrics = {"settings": dataclasses.asdict(options), "models": {}}
    for entry in options.models:
        label, name, model, params = _load(entry)
        batches = fixed_batches(data, split, name, num_batches=options.num_batches, batch_size=options.batch_size,
                                augment=False, data_dir=options.data_dir)
        logits_fn = classification_objective(model).logits
        started = time.perf_counter()
        bands[label] = frequency.band_noise_accuracy(
            logits_fn, params, batches, frequencies=np.linspace(0, np.pi, options.bands), eps=options.band_eps,
            half_width=options.half_width, seed=options.seed, chunk=options.chunk)
        timings = {"band_noise_s": time.perf_counter() - started}
        started = time.perf_counter()
        heat_maps[label] = frequency.fourier_heat_map(logits_fn, params, batches, eps=options.heat_eps,
                                                      stride=options.heat_stride, seed=options.seed,
                                                      chunk=options.chunk)
        timings["heat_map_s"] = time.perf_counter() - started
        metrics["models"][label] = {"band_noise": bands[label], "heat_map": heat_maps[label], "timings": timings}
        print(f"{label}: clean accuracy {bands[label]['clean_accuracy']:.3f}, largest drop "
              f"{bands[label]['accuracy_drop'].max():.3f}; {sum(timings.values()):.0f} s")
    if jax.process_index():
        return Path(options.out) / "index.html"
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    figures = figures_frequency.plot_band_noise(bands, out) + figures_frequency.plot_heat_maps(heat_maps, out)
    notes = [f"Data: {data}:{split}, the first {options.num_batches} batches of {options.batch_size} images with each "
             "model's eval transform; noise is added to the model's normalised input, with one random sign pattern "
             f"per batch (seed {options.seed}) shared by all frequencies.",
             "Band noise: Park & Kim's FreqAttack (vitjax.curvature.frequency). Heat map: Yin et al.'s Fourier "
             "basis perturbations, (u, v) and (-u, -v) evaluated once (they are the same image)."]
    title = "Frequency robustness: " + " vs ".join(metrics["models"])
    return write_report(out, title, metrics, figures, notes)

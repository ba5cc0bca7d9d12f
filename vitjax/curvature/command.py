"""`vitjax curvature`: Park & Kim's ViT-vs-ResNet Hessian comparison as a report.

For each model: fixed augmented training mini-batches (`fixed_batches`), Park & Kim's max-eigenvalue
spectra (top-k per batch, pooled), and optionally the spectral density by SLQ and the trace by
Hutchinson of the Hessian over all those batches together. Writes OUT/metrics.json, PNGs and
OUT/index.html. Options come from defaults, then a config file (`--config`, a Python file whose
get_config() returns them), then the command line.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax

from vitjax.config_files import parse_data, parse_model

DEFAULT_MODELS = ("vit_scenes_patch8_64", "resnet_scenes_64")


@dataclasses.dataclass
class Options:
    """What a run computes. The defaults are sized for a laptop CPU: the paper's per-batch protocol
    (power iteration, 100 iterations, tol 1e-3) with the top 2 instead of 5 eigenvalues on 4
    batches of 16; experiments/how_do_vits_work/hessian_spectra.py has the full-size settings."""

    models: tuple[str, ...] = DEFAULT_MODELS  # NAME or NAME:CHECKPOINT
    data: str = "vitjax_scenes/size64:train"  # DATASET[:SPLIT]
    data_dir: str | None = None
    num_batches: int = 4
    batch_size: int = 16
    top_k: int = 2
    max_iter: int = 100
    tol: float = 1e-3
    weight_decay: float = 0.05  # coefficient of (wd/2)|w|^2: the Hessian gains wd*I
    mix: bool = True  # Mixup/CutMix + smoothing on the batches, as Park & Kim's training augmentation
    density: bool = False
    slq_probes: int = 4
    slq_steps: int = 30
    trace: bool = False
    trace_rtol: float = 0.05
    trace_max_matvecs: int = 30
    linearize: bool = False  # keep each operator's linearization: faster products, more memory
    seed: int = 0
    out: str = "runs/curvature"


def run(options: Options) -> Path:
    """Computes everything `options` asks for and writes the report; returns the index.html path."""
    import vitjax
    from vitjax.curvature.batches import fixed_batches
    from vitjax.curvature.density import slq
    from vitjax.curvature.objective import classification_objective
    from vitjax.curvature.operator import hessian_operator
    from vitjax.curvature.spectra import max_eigenvalue_spectra, trainable_mask
    from vitjax.curvature.trace import hutchinson
    from vitjax.report import figures_curvature as figures
    from vitjax.report.html import write_report

    data, split = parse_data(options.data, "train")
    key = jax.random.key(options.seed)
    mixing = {} if options.mix else {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}
    metrics: dict = {"settings": dataclasses.asdict(options), "models": {}}
    spectra, densities, traces = {}, {}, {}
    objective = ""
    for entry in options.models:
        name, checkpoint = parse_model(entry)
        model, params = vitjax.load(name, checkpoint)
        label = vitjax.lookup(name).name + (f":{Path(checkpoint).name}" if checkpoint else "")
        started = time.perf_counter()
        batches = fixed_batches(data, split, name, num_batches=options.num_batches, batch_size=options.batch_size,
                                seed=options.seed, data_dir=options.data_dir, **mixing)
        timings = {"batches_s": time.perf_counter() - started}
        started = time.perf_counter()
        spectra[label] = max_eigenvalue_spectra(model, params, batches, k=options.top_k, max_iter=options.max_iter,
                                                tol=options.tol, weight_decay=options.weight_decay,
                                                key=jax.random.fold_in(key, 0), linearize=options.linearize)
        timings["spectra_s"] = time.perf_counter() - started
        objective = spectra[label]["objective"]
        results = {"spectra": spectra[label], "timings": timings}
        if options.density or options.trace:
            # One operator over all the batches (their size-weighted mean loss) for the density and trace.
            loss_fn = classification_objective(model, weight_decay=options.weight_decay)
            operator = hessian_operator(loss_fn, params, batches, wrt=trainable_mask(params),
                                        linearize=options.linearize)
            results["dim"] = operator.dim
        if options.density:
            started = time.perf_counter()
            densities[label] = slq(operator.matvec, operator.params, jax.random.fold_in(key, 1),
                                   num_probes=options.slq_probes, num_steps=options.slq_steps,
                                   progress=True).as_metrics()
            results["density"] = densities[label]
            timings["density_s"] = time.perf_counter() - started
        if options.trace:
            started = time.perf_counter()
            estimate = hutchinson(operator.matvec, operator.params, jax.random.fold_in(key, 2),
                                  rtol=options.trace_rtol, max_matvecs=options.trace_max_matvecs,
                                  min_probes=min(10, options.trace_max_matvecs), progress=True)
            traces[label] = {**estimate.as_metrics(), "dim": operator.dim}
            results["trace"] = traces[label]
            timings["trace_s"] = time.perf_counter() - started
        metrics["models"][label] = results

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    figure_list = figures.plot_max_eigenvalue_spectra(spectra, out, objective)
    if densities:
        figure_list += figures.plot_slq_density(densities, out, objective)
    if traces:
        figure_list += figures.plot_trace(traces, out, objective)
    metrics["objective"] = objective
    notes = [f"Objective: {objective}.",
             f"Data: {data}:{split}, {options.num_batches} fixed mini-batches of {options.batch_size} with the "
             f"training augmentation{' plus Mixup/CutMix and label smoothing 0.1' if options.mix else ''} "
             f"(deterministic in seed {options.seed} and the batch index); parameters: all but BatchNorm "
             "running statistics."]
    return write_report(out, "Hessian spectra: " + " vs ".join(metrics["models"]), metrics, figure_list, notes)

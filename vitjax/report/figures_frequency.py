"""Figures of `vitjax frequency`: accuracy drop under band-limited noise per frequency (Park & Kim's
Fig. 2b layout, models overlaid) and the Fourier heat map of the error per model (Yin et al.).

Each function takes {model name: metrics} from `vitjax.curvature.frequency`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vitjax.report.html import Figure  # noqa: E402

SECTION = "frequency robustness"


def plot_band_noise(results: dict[str, dict], out_dir: Path) -> list[Figure]:
    """Accuracy drop (clean minus noisy, percentage points) against the noise frequency in units of pi."""
    fig, (drop_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    for name, metrics in results.items():
        frequency = np.asarray(metrics["frequency"]) / np.pi
        drop_ax.plot(frequency, 100 * np.asarray(metrics["accuracy_drop"]), marker="o", label=name)
        acc_ax.plot(frequency, 100 * np.asarray(metrics["accuracy"]), marker="o",
                    label=f"{name} (clean {100 * metrics['clean_accuracy']:.1f}%)")
    drop_ax.axhline(0.0, color="gray", lw=0.8)
    drop_ax.set(xlabel="noise frequency (× π)", ylabel="Δ accuracy (clean − noisy, %)",
                title="Accuracy drop under band-limited noise")
    acc_ax.set(xlabel="noise frequency (× π)", ylabel="accuracy (%)", title="Accuracy under noise")
    for ax in (drop_ax, acc_ax):
        ax.legend(fontsize=8)
    any_metrics = next(iter(results.values()))
    path = Path(out_dir) / "band_noise.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    caption = (f"Park & Kim's frequency noise (FreqAttack): ±{any_metrics['eps']:g} sign noise in model-input "
               f"units band-passed to a square annulus of half-width ±{any_metrics['half_width']:g} around each "
               f"angular frequency (0 to π = Nyquist), added to {int(any_metrics['examples'])} test images; the "
               "left panel is the accuracy lost, the right the accuracy kept.")
    return [Figure(path.name, caption, SECTION)]


def plot_heat_maps(results: dict[str, dict], out_dir: Path) -> list[Figure]:
    """The error added by a perturbation at each frequency (u, v) (error minus clean error), one panel
    per model on one colour scale, so models of different clean accuracy compare directly."""
    names = list(results)
    added = {n: 100 * (np.asarray(results[n]["error"]) - results[n]["clean_error"]) for n in names}
    top = max(1.0, max(float(a.max()) for a in added.values()))
    fig, axes = plt.subplots(1, len(names), figsize=(4.4 * len(names) + 1.2, 4.4), squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], names):
        metrics = results[name]
        u, v = np.asarray(metrics["u"]), np.asarray(metrics["v"])
        step_u, step_v = (u[1] - u[0] if len(u) > 1 else 1), (v[1] - v[0] if len(v) > 1 else 1)
        extent = (v[0] - step_v / 2, v[-1] + step_v / 2, u[0] - step_u / 2, u[-1] + step_u / 2)
        image = ax.imshow(added[name], origin="lower", cmap="magma", vmin=min(0.0, float(added[name].min())),
                          vmax=top, extent=extent)
        ax.set(xlabel="horizontal frequency v", ylabel="vertical frequency u",
               title=f"{name}\n(clean error {100 * metrics['clean_error']:.1f}%)")
    fig.colorbar(image, ax=axes[0].tolist(), label="error added (percentage points)")
    path = Path(out_dir) / "fourier_heat_map.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    any_metrics = next(iter(results.values()))
    caption = (f"Fourier heat map of the error (Yin et al. 2019): each cell is the error rate, minus the clean error "
               f"rate, when every test image gets ±{any_metrics['eps']:g} (l2 norm per channel, model-input units) "
               "times the unit real Fourier basis image of that frequency (zero frequency at the centre, ±size/2 at "
               "the edges); metrics.json holds the error rates themselves.")
    return [Figure(path.name, caption, SECTION)]

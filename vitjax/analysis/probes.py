"""Linear probes of single tokens: what do high-norm outlier tokens still know? (the Registers paper)

Darcet et al. (ICLR'24) probe output tokens with linear models: position prediction and pixel
reconstruction (local information, which outliers lose) and image classification from a single
token (global information, which outliers hold about as well as the class token). Their scripts
are not released; this follows the text (shared/reference/protocols.md, section 3).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vitjax.analysis.base import Analysis, Buffer
from vitjax.analysis.buffered import merge_buffers
from vitjax.analysis.linear_probe import ProbeOptions, train_probe
from vitjax.analysis.norms import KINDS, NormOptions, layout_constants, token_blocks
from vitjax.capture import Output

__all__ = ["Probes"]

CONSTANTS = ("blocks", "kinds", "grid", "threshold_block", "patch_size")


@dataclasses.dataclass(frozen=True)
class Probes(NormOptions, ProbeOptions, Analysis):
    """Linear probes on the tokens of `threshold_block` (default the last block, before the final norm).

    Outliers are that block's patch tokens with norm >= the threshold, found from the buffered
    tokens' norm histogram exactly as token_norms finds it (or given as `threshold`, counted from
    the first bin edge at or above it). With no outliers, the outlier entries are NaN.

    The buffered images are split once into train and test images (a permutation seeded by
    `seed`; `test_fraction` of them held out), so no image contributes to both. Probes:
      position: patch index (0 .. gh*gw - 1) from a patch token, softmax regression, top-1 accuracy;
      pixels:   the token's patch pixels (the model's preprocessed input), least squares, MSE and
                R^2 = 1 - SSE / (sum of squares about the test mean);
      class:    the image label from one token per image, softmax regression, top-1 accuracy:
                the class token, a random register, a random normal and a random outlier patch token
                (images without an outlier drop out of that probe).
    Position and pixel probes are trained separately on normal and on outlier tokens; with
    `balance` the normal training set is subsampled to the outlier one's size, so neither probe
    has more data. Every training and test set is capped at `max_tokens` rows (a seeded sample).
    Training: linear_probe.py (AdamW; options epochs, lr, weight_decay, batch_size, seed).

    Memory: the first `capacity` valid images' tokens and pixels, 4 * capacity * (N * D + H * W * 3 + 1)
    bytes (ViT-S/16 at 224, 512 images: 460 MB).

    Metrics: 'threshold', 'bimodal', 'dip', 'minor_fraction', 'threshold_block', 'num_images',
    'num_test_images'; for side in (normal, outlier): 'position_acc_{side}', 'pixel_mse_{side}',
    'pixel_r2_{side}', 'train_tokens_{side}', 'test_tokens_{side}'; 'position_chance' (1 / patches);
    for kind in (class, register, normal, outlier), where present: 'class_acc_{kind}',
    'class_test_{kind}'; 'class_chance' (1 / number of classes).
    """

    name: ClassVar[str] = "probes"
    taps: ClassVar[frozenset[str]] = frozenset({"tokens"})
    needs: ClassVar[frozenset[str]] = frozenset({"label"})

    capacity: int = 512
    test_fraction: float = 0.25
    max_tokens: int = 20000
    balance: bool = True

    def init(self, spec: Output) -> dict:
        constants = layout_constants(spec, self.threshold_block)
        tokens = spec.layers[token_blocks(spec, self.threshold_block)[1]]["tokens"]
        image = (*spec.layout.grid, *spec.layout.patch_size)
        height, width = image[0] * image[2], image[1] * image[3]
        return {"tokens": Buffer(self.capacity, tokens.shape[1:]).init(),
                "images": Buffer(self.capacity, (height, width, 3)).init(),
                "labels": Buffer(self.capacity, (), jnp.int32).init(),
                **constants, "patch_size": jnp.asarray(spec.layout.patch_size, jnp.int32)}

    def update(self, state: dict, output: Output, batch: dict) -> dict:
        _, block = token_blocks(output, self.threshold_block)
        tokens, valid = output.layers[block]["tokens"], batch["valid"]
        images = batch["image"]
        if images.shape[1:] != state["images"]["rows"].shape[1:]:
            raise ValueError(f"probes: images of shape {images.shape[1:]} do not match the token grid "
                             f"{output.layout.grid} x patch {output.layout.patch_size}")
        return {**state,
                "tokens": Buffer(self.capacity, tokens.shape[1:]).append(state["tokens"], tokens, valid),
                "images": Buffer(self.capacity, images.shape[1:]).append(state["images"], images, valid),
                "labels": Buffer(self.capacity, (), jnp.int32).append(state["labels"], batch["label"], valid)}

    def merge(self, a: dict, b: dict) -> dict:
        rows = ("tokens", "images", "labels")
        return {**merge_buffers({k: a[k] for k in rows}, {k: b[k] for k in rows}), **{k: a[k] for k in CONSTANTS}}

    def finalize(self, state: dict) -> dict[str, np.ndarray]:
        tokens, images, labels = (Buffer.rows(state[k]) for k in ("tokens", "images", "labels"))
        kinds = np.asarray(state["kinds"])
        gh, gw = (int(v) for v in np.asarray(state["grid"]))
        ph, pw = (int(v) for v in np.asarray(state["patch_size"]))
        n = len(tokens)
        if n < 2:
            raise ValueError(f"probes need at least 2 images (one to train on, one to test); got {n}")
        rng = np.random.default_rng(self.seed)
        test = np.zeros(n, bool)
        test[rng.permutation(n)[: min(max(1, round(self.test_fraction * n)), n - 1)]] = True

        patches = tokens[:, kinds == KINDS.index("patch")]  # (n, P, D) float32
        norms = np.linalg.norm(patches, axis=-1)  # float32, as token_norms computes and bins them
        edges = self.edges()
        slots = np.searchsorted(edges, norms, side="right")
        found, index = self.cutoff(np.bincount(slots.ravel(), minlength=len(edges) + 1))
        outlier = slots >= index if index is not None else np.zeros(norms.shape, bool)
        pixels = images.reshape(n, gh, ph, gw, pw, -1).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, -1)

        metrics = {**found, "threshold_block": np.int64(state["threshold_block"]), "num_images": np.int64(n),
                   "num_test_images": np.int64(test.sum()), "position_chance": np.float64(1 / (gh * gw))}
        prefix_probes = sum(bool((kinds == KINDS.index(kind)).any()) for kind in ("class", "register"))
        progress = tqdm(total=6 + prefix_probes, desc="probes: training", leave=False)
        metrics.update(self._local_probes(patches, pixels, outlier, test, rng, progress))
        metrics.update(self._class_probes(tokens, patches, kinds, labels, outlier, test, rng, progress))
        progress.close()
        return metrics

    def _sample(self, rows: np.ndarray, rng, cap: int) -> np.ndarray:
        return rows if len(rows) <= cap else np.sort(rng.choice(rows, cap, replace=False))

    def _local_probes(self, patches, pixels, outlier, test, rng, progress) -> dict:
        n, num_patches, _ = patches.shape
        position = np.broadcast_to(np.arange(num_patches), (n, num_patches))
        in_test = np.broadcast_to(test[:, None], outlier.shape)
        flat = lambda a: a.reshape(n * num_patches, *a.shape[2:])
        x, pos, pix = flat(patches), position.ravel(), flat(pixels)
        sets = {side: (np.flatnonzero((~in_test & chosen).ravel()), np.flatnonzero((in_test & chosen).ravel()))
                for side, chosen in (("normal", ~outlier), ("outlier", outlier))}
        cap = self.max_tokens
        if self.balance and len(sets["outlier"][0]):
            cap = min(cap, len(sets["outlier"][0]))
        metrics = {}
        for side, (train, held_out) in sets.items():
            train = self._sample(train, rng, cap if side == "normal" else self.max_tokens)
            held_out = self._sample(held_out, rng, self.max_tokens)
            metrics[f"train_tokens_{side}"] = np.int64(len(train))
            metrics[f"test_tokens_{side}"] = np.int64(len(held_out))
            acc = mse = r2 = np.nan
            if len(train) and len(held_out):
                probe = train_probe(x[train], pos[train], self, num_classes=num_patches)
                acc = float((probe.predict(x[held_out]).argmax(-1) == pos[held_out]).mean())
                probe = train_probe(x[train], pix[train], self)
                target = pix[held_out].astype(np.float64)
                error = ((probe.predict(x[held_out]) - target) ** 2).sum()
                mse = error / target.size
                r2 = 1 - error / ((target - target.mean(0)) ** 2).sum()
            progress.update(2)
            metrics.update({f"position_acc_{side}": np.float64(acc), f"pixel_mse_{side}": np.float64(mse),
                            f"pixel_r2_{side}": np.float64(r2)})
        return metrics

    def _class_probes(self, tokens, patches, kinds, labels, outlier, test, rng, progress) -> dict:
        n = len(tokens)
        num_classes = int(labels.max()) + 1
        pick = lambda options: [rng.choice(np.flatnonzero(row)) if row.any() else -1 for row in options]
        chosen = {}
        if (kinds == KINDS.index("class")).any():
            chosen["class"] = (np.arange(n), tokens[:, 0])
        registers = np.flatnonzero(kinds == KINDS.index("register"))
        if len(registers):
            which = registers[rng.integers(len(registers), size=n)]
            chosen["register"] = (np.arange(n), tokens[np.arange(n), which])
        for side, mask in (("normal", ~outlier), ("outlier", outlier)):
            index = np.asarray(pick(mask))
            images = np.flatnonzero(index >= 0)
            chosen[side] = (images, patches[images, index[images]])
        metrics = {"class_chance": np.float64(1 / num_classes)}
        for kind, (images, x) in chosen.items():
            train, held_out = ~test[images], test[images]
            acc = np.nan
            if train.any() and held_out.any():
                probe = train_probe(x[train], labels[images][train], self, num_classes=num_classes)
                acc = float((probe.predict(x[held_out]).argmax(-1) == labels[images][held_out]).mean())
            metrics[f"class_acc_{kind}"], metrics[f"class_test_{kind}"] = np.float64(acc), np.int64(held_out.sum())
            progress.update()
        return metrics

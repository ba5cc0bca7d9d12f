"""Attention distance and AAAM: vitjax's one-pass runner against the Teaching Matters code's approach.

    python benchmarks/attention_official.py                      # ViT-S/16, 224 px, 64 images
    python benchmarks/attention_official.py --images 16 --official-batch 2

The official approach (vit_analysis `run_attention_analysis.py` with `analysis/attention_metrics.py`),
reimplemented here from its description: a timm model whose blocks' attention probabilities are
collected by forward hooks and materialised as one (batch, blocks, heads, N, N) tensor per batch
(its default batch is 2 images); `AttentionDistance` removes the class token, renormalises the rows
and multiplies by an (N-1)^2 distance template built with a Python loop over tokens, keeping a
per-image result; `AvgAlignedAttentionOnToken` moves the maps to NumPy and loops in Python over
every query token, adding that query's maps (summed over the batch) into a (2K-1)^2 canvas.

vitjax: the same weights (timm's random init, converted by vitjax.load), `AttentionDistance` and
`AlignedAttentionMaps` updated inside one jitted step per batch (default 32 images), no map ever
leaving the step. Both sides run the forward pass; the analysis-only rows time just the metric code
given the same materialised maps (the official add() calls vs vitjax's jitted update, alternating).
Prints the times, the speed ratios (goal >= 5x) and the largest difference between the two results.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "shims"))  # timm imports torchvision

from train_step import interleaved_medians  # noqa: E402


class OfficialAttentionDistance:
    """Teaching Matters' AttentionDistance approach: (b, L, H, N, N) maps in, per-image (L, H) out."""

    def __init__(self):
        self.template, self.results = None, []

    def _template(self, tokens: int):
        import torch

        edge = int(np.sqrt(tokens))
        xy = np.zeros((tokens, 2))
        for i in range(tokens):  # token i at (i % K, i // K) / (K - 1), as their convert_to_xy
            xy[i] = [(i % edge) / (edge - 1), (i // edge) / (edge - 1)]
        template = torch.zeros(tokens, tokens)
        for i in range(tokens):
            template[i] = torch.from_numpy(np.sqrt(((xy - xy[i]) ** 2).sum(1)))
        return template[None, None, None]

    def add(self, maps) -> None:
        import torch

        att = maps[:, :, :, 1:, 1:]
        if self.template is None:
            self.template = self._template(att.shape[3])
        total = att.sum(dim=4, keepdim=True)
        total = total + (total == 0).to(total.dtype)  # all-class rows stay 0
        distance = torch.sum(att / total * self.template, dim=4).mean(dim=3)
        self.results.append(distance.numpy())

    def result(self) -> np.ndarray:
        return np.concatenate(self.results).mean(0)


class OfficialAlignedAttention:
    """Teaching Matters' AvgAlignedAttentionOnToken approach: a Python loop over query tokens."""

    def __init__(self):
        self.canvas, self.count = None, 0

    def add(self, maps) -> None:
        att = maps[:, :, :, 1:, 1:]
        total = att.sum(dim=4, keepdim=True)
        att = att / (total + (total == 0).to(total.dtype))
        edge = int(np.sqrt(att.shape[3]))
        square = att.reshape(*att.shape[:4], edge, edge).numpy()
        if self.canvas is None:
            self.canvas = np.zeros((att.shape[1], att.shape[2], 2 * edge - 1, 2 * edge - 1), square.dtype)
        for query in range(att.shape[3]):
            i, j = divmod(query, edge)
            self.canvas[:, :, edge - i - 1:2 * edge - i - 1, edge - j - 1:2 * edge - j - 1] += square[:, :, :, query].sum(0)
            self.count += 1

    def result(self) -> np.ndarray:
        return self.canvas / self.count


def timm_with_maps(arch: str):
    """A random timm ViT whose forward also returns the stacked attention maps (b, L, H, N, N)."""
    import timm
    import torch

    model = timm.create_model(arch, pretrained=False).eval()
    maps = []
    for block in model.blocks:
        block.attn.fused_attn = False  # the fused kernel returns no probabilities
        block.attn.attn_drop.register_forward_hook(lambda module, inputs, output: maps.append(output))

    def forward(x):
        maps.clear()
        with torch.inference_mode():
            model(x)
        return torch.stack(maps, dim=1)

    return model, forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--official-batch", type=int, default=2, help="the official runner's batch (its default 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="vitjax's batch")
    args = parser.parse_args()

    import jax
    import torch
    from safetensors.torch import save_file

    import vitjax
    from vitjax import parallel
    from vitjax.analysis import inputs, run
    from vitjax.analysis.attention import AlignedAttentionMaps, AttentionDistance
    from vitjax.capture import Output

    torch.manual_seed(0)
    timm_model, timm_forward = timm_with_maps(args.model)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.safetensors")
        save_file({k: v.contiguous() for k, v in timm_model.state_dict().items()}, path)
        model, params = vitjax.load(args.model, path)
    images = np.random.default_rng(0).normal(size=(args.images, 224, 224, 3)).astype(np.float32)
    print(f"{args.model}, {args.images} random images, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    # The official approach, end to end and analysis only.
    distance, aligned = OfficialAttentionDistance(), OfficialAlignedAttention()
    start = time.perf_counter()
    for first in range(0, args.images, args.official_batch):
        maps = timm_forward(torch.from_numpy(images[first:first + args.official_batch]).permute(0, 3, 1, 2))
        distance.add(maps)
        aligned.add(maps)
    official_total = time.perf_counter() - start

    # vitjax: one jitted step per batch, maps never leave it.
    mesh = parallel.make_mesh()
    analyses = [AttentionDistance(units="unit_square"),
                AlignedAttentionMaps(divisor="teaching_matters", batch_size=args.official_batch)]
    recipe = vitjax.lookup(args.model).preprocess
    plans, _, _ = run.plan([(args.model, model, params, recipe)], analyses, has_labels=False, has_masks=False,
                           data_name="random", explicit=True)
    one_pass = run.Pass(plans, [], mesh)
    data = {"image": images, "valid": np.ones(args.images, bool)}
    batches = list(inputs.batches_of(data, [args.batch_size] * -(-args.images // args.batch_size), mesh))

    def vitjax_run():
        one_pass.reset()
        for batch in batches:
            one_pass.feed(batch)
        return one_pass.finalize()

    vitjax_run()  # compile
    start = time.perf_counter()
    metrics = vitjax_run()["models"][args.model]
    vitjax_total = time.perf_counter() - start

    # Metrics only, on the same materialised maps (timm's, of one vitjax batch), the two sides
    # alternating so that both see the same machine load; medians of 9 (each side takes well under a second).
    torch_maps = timm_forward(torch.from_numpy(images[:args.batch_size]).permute(0, 3, 1, 2))
    maps = jax.numpy.asarray(torch_maps.numpy())
    spec = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, capture="attn"), params, images[:args.batch_size])
    output = Output(spec.pooled, spec.tokens, None, None, tuple({"attn": maps[:, i]} for i in range(maps.shape[1])),
                    spec.layout)
    # On the device before timing, as the official side gets its maps as tensors already in memory.
    batch = jax.device_put({"image": images[:args.batch_size], "valid": np.ones(args.batch_size, bool)})
    update = jax.jit(lambda states, out, b: [a.update(s, out, b) for a, s in zip(analyses, states)])
    states = [a.init(spec) for a in analyses]
    jax.block_until_ready(update(states, output, batch))  # compile

    def official_metrics_run():
        d, g = OfficialAttentionDistance(), OfficialAlignedAttention()
        for first in range(0, args.batch_size, args.official_batch):
            d.add(torch_maps[first:first + args.official_batch])
            g.add(torch_maps[first:first + args.official_batch])

    medians = interleaved_medians({"official": official_metrics_run,
                                   "vitjax": lambda: jax.block_until_ready(update(states, output, batch))},
                                  repeats=9, warmup=0)
    official_metrics, vitjax_metrics = medians["official"], medians["vitjax"]

    print(f"end to end, {args.images} images: official approach (batch {args.official_batch}) {official_total:7.2f} s, "
          f"vitjax (batch {args.batch_size}) {vitjax_total:7.2f} s: {official_total / vitjax_total:5.1f}x")
    print(f"metrics only, {args.batch_size} materialised maps: official {official_metrics * 1e3:6.1f} ms, vitjax jitted "
          f"update {vitjax_metrics * 1e3:6.1f} ms: {official_metrics / vitjax_metrics:5.1f}x   (goal >= 5x)")
    distance_gap = np.abs(metrics["attention_distance"]["distance"] - distance.result()).max()
    aaam_gap = np.abs(metrics["aaam"]["aaam"] - aligned.result()).max()
    print(f"largest difference: attention distance {distance_gap:.2e}, AAAM {aaam_gap:.2e} "
          f"(AAAM values up to {aligned.result().max():.3f})")


if __name__ == "__main__":
    main()

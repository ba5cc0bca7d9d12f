"""Training-step throughput, vitjax's trainer against timm with torch.optim.AdamW, in one process.

    python benchmarks/train_step.py                        # ViT-S/16, 224 px, batch 32
    python benchmarks/train_step.py --repeats 10 --batch 16
    python benchmarks/train_step.py --dtype bfloat16        # bf16 compute (torch.autocast / model.dtype)
    python benchmarks/train_step.py --parts                 # forward, value-and-grad, AdamW update apart

One step is a forward pass, the cross-entropy loss, the backward pass and an AdamW update (weight
decay masked as DeiT masks it, on both sides). vitjax runs the trainer's own jitted step
(`vitjax.train.loop.train_step`, state donated) with the supervised objective and no mixup; timm
runs the model in train mode with `torch.optim.AdamW` (its default foreach implementation).
Weights and images are random: the cost of a step does not depend on them. Prints images/s for
both, the vitjax/timm ratio, and the minor page faults of one more step on each side.

Both sides run with glibc's malloc set to keep freed memory, as the `vitjax` command sets it
(`vitjax.allocator`); VITJAX_MALLOC=system measures glibc's default instead.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "shims"))  # timm imports torchvision

from forward_throughput import torch_autocast  # benchmarks/ is the script's folder, so on sys.path


def interleaved_medians(steps: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, timed in turns (a, b, a, b, ...) so that both
    sides see the same background load on a shared machine."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def timm_step(arch: str, images_nchw, labels, dtype: str):
    import timm
    import torch

    model = timm.create_model(arch, pretrained=False).train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and n not in model.no_weight_decay()]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n in model.no_weight_decay()]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch_autocast(dtype):
            loss = loss_fn(model(images_nchw), labels)
        loss.backward()
        optimizer.step()

    return step


def vitjax_step(arch: str, images_nhwc, labels, dtype: str):
    import jax

    from vitjax.train import config as run_config, objectives, optimizer
    from vitjax.train import state as state_lib
    from vitjax.train.loop import train_step

    config = run_config.defaults()
    config.model.name, config.model.num_classes, config.model.dtype = arch, 1000, dtype
    config.objective.update(dict(label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0))
    config.batch_size = images_nhwc.shape[0]
    objective = objectives.create(config)
    abstract = jax.eval_shape(lambda: objective.init(jax.random.key(0))[0])
    tx = optimizer.make(config, abstract, objective.frozen(abstract))
    state = jax.jit(functools.partial(state_lib.create, objective, tx, 0))()
    fn = jax.jit(functools.partial(train_step, objective=objective, tx=tx,
                                   learning_rate=optimizer.learning_rate(config)), donate_argnums=0)
    batch = {"image": jax.numpy.asarray(images_nhwc), "label": jax.numpy.asarray(labels)}
    holder = [state]

    def step():
        holder[0], metrics = fn(holder[0], batch)
        jax.block_until_ready(metrics["loss"])

    return step


def step_parts(arch: str, images_nhwc, labels, images_nchw, labels_torch, dtype: str) -> dict:
    """Forward (no gradient), loss + gradient, and AdamW update as separate calls, for both sides
    (no weight-decay mask: the update's cost does not depend on it)."""
    import jax
    import optax
    import timm
    import torch

    import vitjax

    model, params = vitjax.create_model(arch, key=jax.random.key(0), dtype=dtype)
    x, y = jax.numpy.asarray(images_nhwc), jax.numpy.asarray(labels)

    def loss(p, x, y):
        logits = model.apply({"params": p}, x).logits.astype(jax.numpy.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    forward, value_and_grad = jax.jit(loss), jax.jit(jax.value_and_grad(loss))
    tx = optax.adamw(1e-4, weight_decay=0.05)
    opt_state, grads = tx.init(params), value_and_grad(params, x, y)[1]
    update = jax.jit(lambda p, o, g: optax.apply_updates(p, tx.update(g, o, p)[0]))

    torch_model = timm.create_model(arch, pretrained=False).train()
    torch_opt = torch.optim.AdamW(torch_model.parameters(), lr=1e-4, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()

    def timm_forward():
        with torch.no_grad(), torch_autocast(dtype):
            loss_fn(torch_model(images_nchw), labels_torch)

    def timm_grad():
        torch_model.zero_grad(set_to_none=False)
        with torch_autocast(dtype):
            loss = loss_fn(torch_model(images_nchw), labels_torch)
        loss.backward()

    timm_grad()  # the optimizer step needs gradients
    return {"timm forward": timm_forward,
            "vitjax forward": lambda: jax.block_until_ready(forward(params, x, y)),
            "timm value-and-grad": timm_grad,
            "vitjax value-and-grad": lambda: jax.block_until_ready(value_and_grad(params, x, y)),
            "timm AdamW update": torch_opt.step,
            "vitjax AdamW update": lambda: jax.block_until_ready(update(params, opt_state, grads))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype; bfloat16: timm under torch.autocast, vitjax with model.dtype (params "
                        "and optimizer stay float32 on both sides)")
    parser.add_argument("--parts", action="store_true",
                        help="time the forward, the loss and gradient, and the AdamW update separately")
    args = parser.parse_args()

    from vitjax import allocator

    print(allocator.describe(allocator.keep_freed_memory()))  # before the first computation

    import numpy as np
    import torch

    rng = np.random.RandomState(0)
    x = rng.randn(args.batch, args.image_size, args.image_size, 3).astype(np.float32)
    y = rng.randint(0, 1000, args.batch)
    x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if args.parts:
        parts = step_parts(args.model, x, y.astype(np.int32), x_nchw, torch.from_numpy(y), args.dtype)
        for name, t in interleaved_medians(parts, args.repeats).items():
            print(f"{name:24s}{t * 1e3:9.1f} ms")
        return
    print(f"{args.model}, batch {args.batch}, {args.image_size} px, {args.dtype}, AdamW, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats} interleaved", flush=True)
    steps = {"timm": timm_step(args.model, x_nchw, torch.from_numpy(y), args.dtype),
             "vitjax": vitjax_step(args.model, x, y.astype(np.int32), args.dtype)}
    seconds = interleaved_medians(steps, args.repeats)
    for name, t in seconds.items():
        print(f"{name:7s}{args.batch / t:7.2f} img/s  ({t * 1e3:.0f} ms/step)")
    print(f"ratio  {seconds['timm'] / seconds['vitjax']:.2f}x")
    for name, step in steps.items():  # the allocator's effect: glibc's default faults in XLA's temporaries
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        print(f"{name} step: {resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before} minor page faults")


if __name__ == "__main__":
    main()

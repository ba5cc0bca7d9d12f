"""Curvature costs on ViT-S/16, vitjax against a gradient and against PyHessian, in one process.

    python benchmarks/curvature.py                      # batch 32, 10 power iterations
    python benchmarks/curvature.py --batch 8 --iterations 3 --repeats 2

1. Hessian-vector product time / gradient time (vitjax, jitted, medians timed in turns). Goal <= 2.5x.
   Also the linearized operator (`op.linearized()`): the linearization once (its repeated residuals
   dropped, as the operator does), then tangent-only products.
2. Top eigenvalue by power iteration, same timm weights (loaded into vitjax), batch and iteration
   count (tol 0: both run every iteration): PyHessian 0.1 (reverse-over-reverse, `eigenvalues()`)
   against `vitjax.curvature.eigen.power_iteration` on a `hessian_operator`, plain and linearized
   (its linearization counted, as PyHessian's create_graph gradient is). Goal >= 3x faster.
   vitjax's compilation is timed separately (once per loss function and shapes). PyTorch's fused CPU
   attention has no second derivative, so PyHessian runs timm's explicit attention path.
3. Peak memory of the product / of a gradient, from XLA's compiled memory analysis (arguments +
   outputs + temporaries, minus aliased buffers; for the linearized operator the larger of the
   linearization and the product, whose arguments include the stored residuals). Goal <= 3x.

Weights and images are random (the costs do not depend on them); the model is in eval mode.

Both sides run with glibc's malloc set to keep freed memory, as the `vitjax` command sets it
(`vitjax.allocator`); VITJAX_MALLOC=system measures glibc's default instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "shims"))  # timm imports torchvision

from train_step import interleaved_medians  # noqa: E402


def memory(compiled) -> int:
    stats = compiled.memory_analysis()
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-pyhessian", action="store_true")
    args = parser.parse_args()

    from vitjax import allocator

    print(allocator.describe(allocator.keep_freed_memory()))  # before the first computation

    import jax
    import numpy as np
    import pyhessian
    import timm
    import torch

    import vitjax
    from vitjax import parallel
    from vitjax.curvature import operator as curvature_operator
    from vitjax.curvature.eigen import power_iteration
    from vitjax.curvature.losses import ClassificationLoss

    torch.manual_seed(0)  # the same random weights every run, so eigenvalues compare across runs
    reference = timm.create_model(args.model, pretrained=False).eval()
    for block in reference.blocks:
        block.attn.fused_attn = False
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weights.pth")
        torch.save(reference.state_dict(), path)
        model, params = vitjax.load(args.model, checkpoint=path)
    rng = np.random.RandomState(0)
    size = model.config.image_size
    images = rng.randn(args.batch, *size, 3).astype(np.float32)
    labels = rng.randint(0, model.config.num_classes, args.batch).astype(np.int32)
    batch = {"image": images, "label": labels}
    print(f"{args.model}, batch {args.batch}, {jax.device_count()} device(s), {os.cpu_count()} CPU(s), "
          f"load average {os.getloadavg()[0]:.1f}")

    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    loss = ClassificationLoss(model)
    start = time.perf_counter()
    op = curvature_operator.hessian_operator(loss, params, [batch], mesh=mesh, check=False)
    # The operator's own jitted product and a jitted gradient, compiled once each (the compiled
    # objects also give the memory analysis).
    shardings = jax.tree.map(lambda x: x.sharding, op.params)
    v = jax.device_put(jax.tree.map(lambda x: np.asarray(rng.randn(*x.shape), np.float32), op.params), shardings)
    common = (loss, op.params, op.constants, op.batches, op.weights, 0.0)
    product = curvature_operator._hvp.lower(loss, "fwd_rev", *common[1:], v).compile()
    matvec = lambda x: product(*common[1:], jax.device_put(x, shardings))
    gradient = jax.jit(jax.grad(loss)).lower(params, batch).compile()
    print(f"compile (product, gradient): {time.perf_counter() - start:.1f} s")
    time_gradient = lambda: jax.block_until_ready(gradient(params, batch))

    # 1. time, 3. memory, 2. power iteration: the plain operator
    medians = interleaved_medians({"gradient": time_gradient, "hvp": lambda: jax.block_until_ready(matvec(v))},
                                  args.repeats, warmup=1)
    print(f"[1] gradient {medians['gradient']:.2f} s, Hessian-vector product {medians['hvp']:.2f} s: "
          f"ratio {medians['hvp'] / medians['gradient']:.2f}x (goal <= 2.5x)")
    grad_bytes, hvp_bytes = memory(gradient), memory(product)
    print(f"[3] peak memory: gradient {grad_bytes / 2**20:.0f} MiB, Hessian-vector product {hvp_bytes / 2**20:.0f} "
          f"MiB: ratio {hvp_bytes / grad_bytes:.2f}x (goal <= 3x)")
    key = jax.random.PRNGKey(0)
    start = time.perf_counter()
    power_iteration(matvec, op.params, key, max_iter=2, tol=0)  # compiles the solver's small steps
    print(f"    power-iteration warm-up (2 products + compiling its vector steps): {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    ours = power_iteration(matvec, op.params, key, max_iter=args.iterations, tol=0)
    vitjax_time = time.perf_counter() - start
    print(f"    vitjax: top eigenvalue {ours.values[0]:.4g} after {args.iterations} iterations in {vitjax_time:.1f} s")
    del product, matvec  # one set of buffers at a time: the linearization below holds gigabytes

    # The same for the linearized operator: one linearization (timed once; it is what a solver pays
    # once, as PyHessian pays its create_graph gradient), then tangent-only products.
    linearize = curvature_operator._linearize.lower(*common).compile()
    start = time.perf_counter()
    residuals, index = curvature_operator._distinct(jax.block_until_ready(linearize(*common[1:]))[2])
    linearize_time = time.perf_counter() - start
    kept_product = curvature_operator._linearized_hvp.lower(loss, index, *common[1:], residuals, v).compile()
    kept_matvec = lambda x: kept_product(*common[1:], residuals, jax.device_put(x, shardings))
    medians = interleaved_medians({"gradient": time_gradient, "kept": lambda: jax.block_until_ready(kept_matvec(v))},
                                  args.repeats, warmup=1)
    print(f"    linearized operator: linearization {linearize_time:.2f} s once, then each product "
          f"{medians['kept']:.2f} s vs gradient {medians['gradient']:.2f} s: ratio "
          f"{medians['kept'] / medians['gradient']:.2f}x")
    kept_bytes = max(memory(linearize), memory(kept_product))  # the product's arguments include the residuals
    print(f"    linearized operator: residuals {sum(x.nbytes for x in residuals) / 2**20:.0f} MiB, peak "
          f"{kept_bytes / 2**20:.0f} MiB: ratio {kept_bytes / grad_bytes:.2f}x")
    start = time.perf_counter()
    kept_ours = power_iteration(kept_matvec, op.params, key, max_iter=args.iterations, tol=0)
    kept_time = linearize_time + time.perf_counter() - start
    print(f"    vitjax linearized: top eigenvalue {kept_ours.values[0]:.4g} in {kept_time:.1f} s "
          "(the linearization included)")
    del residuals, kept_product, kept_matvec  # PyHessian's graph needs the memory
    if args.skip_pyhessian:
        return
    torch.manual_seed(0)
    start = time.perf_counter()
    data = (torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels).long())
    theirs, _ = pyhessian.hessian(reference, torch.nn.CrossEntropyLoss(), data=data, cuda=False).eigenvalues(
        maxIter=args.iterations, tol=0.0)
    pyhessian_time = time.perf_counter() - start
    print(f"    PyHessian: top eigenvalue {theirs[0]:.4g} after {args.iterations} iterations in {pyhessian_time:.1f} s")
    print(f"[2] power iteration: vitjax {vitjax_time:.1f} s, PyHessian {pyhessian_time:.1f} s: vitjax "
          f"{pyhessian_time / vitjax_time:.2f}x faster (goal >= 3x); linearized {kept_time:.1f} s: "
          f"{pyhessian_time / kept_time:.2f}x faster; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

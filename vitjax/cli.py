"""The `vitjax` command: list, inspect, convert, train and evaluate models (analyses come later)."""

from __future__ import annotations

import argparse
import ast
import math
import sys

DESCRIPTION = """\
vitjax: Vision Transformers as pure JAX functions, and the analyses of how they work.

  vitjax models                      every model name, its family and accepted checkpoint layouts
  vitjax inspect NAME                config, parameter count, token layout, per-block shapes
  vitjax convert FILE --model NAME --out DIR
                                     read a public checkpoint once, save it as vitjax params (orbax)
  vitjax evaluate NAME [--data DATASET:SPLIT]
                                     accuracy, and shape bias on a cue-conflict split
  vitjax train CONFIG [--workdir DIR] [--set key=value ...]
                                     train as a config file (experiments/*.py) says; resumes by itself

Run `vitjax COMMAND --help` for the options of each command.
"""


def parse_overrides(pairs: list[str]) -> dict:
    """`--set depth=2 --set mlp=swiglu` -> {'depth': 2, 'mlp': 'swiglu'} (values parsed as Python literals)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def cmd_models(args) -> None:
    from vitjax.load import param_count
    from vitjax.models.registry import REGISTRY

    rows = []
    for spec in REGISTRY.values():
        if args.family and args.family.lower() not in spec.family.lower():
            continue
        count = param_count(spec.config) if args.count else None
        rows.append((spec.name, spec.family, f"{count / 1e6:.1f}M" if count else "", ", ".join(spec.layouts)))
    _table(("name", "family", "params", "checkpoint layouts"), rows)


def cmd_inspect(args) -> None:
    import jax

    import vitjax
    from vitjax.load import build, dummy_input, model_config

    overrides = parse_overrides(args.set)
    if args.checkpoint:
        model, params = vitjax.load(args.name, args.checkpoint, args.image_size, **overrides)
        shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    else:
        model = build(model_config(args.name, args.image_size, **overrides))
        shapes = jax.eval_shape(model.init, jax.random.key(0), dummy_input(model.config))["params"]
    spec = vitjax.lookup(args.name)
    print(f"{spec.name}  ({spec.family})")
    print(f"preprocessing: {spec.preprocess}")
    print(f"checkpoint layouts: {', '.join(spec.layouts)}; verified against: {spec.verified or '-'}")
    print(f"config: {model.config}")
    print(f"parameters: {sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes)):,}")
    default_taps = ("tokens", "attn") if isinstance(model.config, vitjax.ViTConfig) else ("tokens",)
    taps = tuple(args.taps.split(",")) if args.taps else default_taps
    out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, capture=taps), shapes, dummy_input(model.config))
    layout = out.layout
    print(f"token layout: {layout.num_class} class, {layout.num_dist} distillation, {layout.num_registers} "
          f"registers, {layout.grid[0]}x{layout.grid[1]} patches of {layout.patch_size[0]} px "
          f"= {layout.num_tokens} tokens")
    print(f"outputs: pooled {out.pooled.shape}, tokens {out.tokens.shape}"
          + (f", embedding {out.embedding.shape}" if out.embedding is not None else "")
          + (f", logits {out.logits.shape}" if out.logits is not None else ""))
    rows = []
    for i, layer in enumerate(out.layers):
        block_params = shapes.get(f"blocks_{i}", shapes.get(f"layer{i + 1}", {}))  # ViT block or ResNet stage
        count = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(block_params))
        shape = lambda tap: str(tuple(jax.tree_util.tree_leaves(layer[tap])[0].shape))  # attn_stats: a dict
        rows.append((str(i), f"{count:,}", *(shape(t) if t in layer else "" for t in taps)))
    _table(("block", "params", *taps), rows)


def cmd_convert(args) -> None:
    import jax

    import vitjax
    from vitjax.convert import orbax_io

    overrides = parse_overrides(args.set)
    if args.image_size:
        overrides["image_size"] = args.image_size
    model, params = vitjax.load(args.model, args.file, **overrides)
    spec = vitjax.lookup(args.model)
    orbax_io.save(args.out, params, {"name": spec.name, "overrides": overrides, "source": args.file})
    count = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
    print(f"wrote {args.out}: {spec.name}, {count:,} parameters; load it with "
          f"vitjax.load({spec.name!r}, checkpoint={args.out!r})")


def cmd_train(args) -> None:
    from vitjax import parallel

    # Joining a multi-process run must come before anything else touches JAX.
    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    from vitjax.train import config, train

    run_config = config.load(args.config, parse_overrides(args.set))
    train(run_config, args.workdir, resume=args.resume)


def cmd_evaluate(args) -> None:
    from vitjax.evaluate import evaluate

    data, _, split = args.data.partition(":")
    metrics = evaluate(args.name, data, split or "test", checkpoint=args.checkpoint, batch_size=args.batch_size,
                       data_dir=args.data_dir)
    for key, value in metrics.items():
        print(f"{key:>10}: {value:.4f}" if isinstance(value, float) else f"{key:>10}: {value}")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitjax", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = sub.add_parser("models", help="list the model registry",
                            description="List every model name vitjax knows: timm names (arch.tag; the bare "
                            "arch means its first tag) and the official repositories' aliases.")
    models.add_argument("--family", help="only families whose name contains this (e.g. dino, clip)")
    models.add_argument("--no-count", dest="count", action="store_false",
                        help="skip computing parameter counts (faster)")
    models.set_defaults(func=cmd_models)

    size_help = "run at this image size (pixels); position embeddings are resampled as the source does it"
    set_help = "override a config field, e.g. --set depth=2 (repeatable; see `vitjax inspect NAME`)"
    inspect = sub.add_parser("inspect", help="show a model's config, parameters and per-block shapes",
                             description="Show what a model is: config, parameter count, token layout and, "
                             "per block, the parameter count and the shapes of the captured taps. With "
                             "--checkpoint the file is loaded and checked against the model.")
    inspect.add_argument("name", help="model name (see `vitjax models`)")
    inspect.add_argument("--checkpoint", help="a checkpoint file or directory to load and check")
    inspect.add_argument("--image-size", type=int, help=size_help)
    inspect.add_argument("--taps", help="comma-separated taps to show per block (default tokens,attn)")
    inspect.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    inspect.set_defaults(func=cmd_inspect)

    convert = sub.add_parser("convert", help="convert a public checkpoint to vitjax params (orbax)",
                             description="Read a checkpoint in any published layout (timm, the official repo's, "
                             "Hugging Face), check it against the model, and write an orbax checkpoint that "
                             "vitjax.load(NAME, checkpoint=DIR) reads back without torch.")
    convert.add_argument("file", help="the checkpoint file or directory")
    convert.add_argument("--model", required=True, help="model name (see `vitjax models`)")
    convert.add_argument("--out", required=True, help="output directory (must be new or empty)")
    convert.add_argument("--image-size", type=int, help=size_help)
    convert.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    convert.set_defaults(func=cmd_convert)

    train = sub.add_parser("train", help="train a model from a config file (experiments/*.py)",
                           description="Train as a config file says (a Python file with get_config(); its "
                           "docstring has the command that runs it). Checkpoints, metrics.jsonl and TensorBoard "
                           "summaries go to the work directory; a run that stopped resumes from its latest "
                           "checkpoint when started again with the same command.")
    train.add_argument("config", help="the config file, e.g. experiments/scenes_vit.py")
    train.add_argument("--workdir", default="runs/default", help="where checkpoints and logs go (default %(default)s)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set total_steps=100 --set model.depth=2; an unknown key fails")
    train.add_argument("--resume", choices=("auto", "require", "never"), default="auto",
                       help="auto: continue from the latest checkpoint if there is one (a checkpoint directory "
                       "without a complete checkpoint is an error); require: fail if there is none; never: fail "
                       "if there is one (default %(default)s)")
    train.add_argument("--coordinator", help="multi-process run: HOST:PORT of process 0")
    train.add_argument("--num-processes", type=int, help="multi-process run: how many processes")
    train.add_argument("--process-id", type=int, help="multi-process run: this process's index")
    train.add_argument("--distributed", action="store_true",
                       help="multi-process run on a cluster JAX detects by itself (Cloud TPU, Slurm, Open MPI)")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="accuracy (and shape bias on a cue-conflict split) of a classifier",
                              description="Run a model's own eval transform over a dataset split and report top-1 and "
                              "top-5 accuracy; on vitjax_scenes' cue_conflict split also the shape bias (of the "
                              "answers naming either cue, the fraction naming the shape).")
    evaluate.add_argument("name", help="model name (see `vitjax models`), e.g. vit_scenes_patch8_64")
    evaluate.add_argument("--data", default="vitjax_scenes/size64:test",
                          help="DATASET[:SPLIT], a TFDS name or folder:/path (default %(default)s)")
    evaluate.add_argument("--checkpoint", help="weights to evaluate (default: bundled or Hugging Face cache)")
    evaluate.add_argument("--batch-size", type=int, default=256, help="global batch (default %(default)s)")
    evaluate.add_argument("--data-dir", help="TFDS data directory (default: TFDS's own)")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        args.func(args)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError, TypeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"vitjax {args.command}: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

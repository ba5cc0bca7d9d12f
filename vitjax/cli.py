"""The `vitjax` command: list, inspect and convert models (analyses and training come later)."""

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
        rows.append((str(i), f"{count:,}", *(str(tuple(layer[t].shape)) if t in layer else "" for t in taps)))
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

"""The `vitjax` command: list, inspect, convert, train, evaluate and analyze models."""

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
  vitjax analyze [--model NAME[:CHECKPOINT] ...] [--data DATASET[:SPLIT]] [--preset NAME]
                 [--analyses a,b,...] [--config FILE] --out DIR
                                     the five papers' analyses in one pass: metrics.json, figures,
                                     index.html (no arguments but --out: embedded models, vitjax_scenes)
  vitjax curvature [--model NAME[:CHECKPOINT] ...] [--density] [--trace] --out DIR
                                     Hessian max-eigenvalue spectra (Park & Kim), spectral density, trace
  vitjax landscape [--model NAME[:CHECKPOINT] ...] [--dims 1|2] [--grid N] [--config FILE] --out DIR
                                     loss landscapes along filter-normalised random directions
  vitjax frequency [--model NAME[:CHECKPOINT] ...] [--data DATASET[:SPLIT]] --out DIR
                                     accuracy under band-limited noise, Fourier heat map of the error

Run `vitjax COMMAND --help` for the options of each command.

On Linux the command sets glibc's malloc to keep freed memory for reuse (XLA:CPU would otherwise
page-fault its temporaries anew on every step; see vitjax/allocator.py). VITJAX_MALLOC=system
turns that off.
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


def cmd_curvature(args) -> None:
    from vitjax.config_files import options_from
    from vitjax.curvature.command import Options, run

    options = options_from(Options, args.config, {
        "models": args.model, "data": args.data, "data_dir": args.data_dir, "num_batches": args.num_batches,
        "batch_size": args.batch_size, "top_k": args.top_k, "max_iter": args.max_iter,
        "weight_decay": args.weight_decay, "density": args.density, "trace": args.trace,
        "slq_probes": args.slq_probes, "slq_steps": args.slq_steps, "trace_max_matvecs": args.trace_max_matvecs,
        "linearize": args.linearize, "seed": args.seed, "out": args.out})
    print(f"wrote {run(options)}")


def cmd_landscape(args) -> None:
    from vitjax.config_files import options_from
    from vitjax.curvature.landscape_command import LandscapeOptions, run_landscape

    options = options_from(LandscapeOptions, args.config, {
        "models": args.model, "data": args.data, "data_dir": args.data_dir, "dims": args.dims, "grid": args.grid,
        "span": args.span, "normalization": args.normalization, "weight_decay": args.weight_decay,
        "penalty": args.penalty, "num_batches": args.num_batches, "batch_size": args.batch_size,
        "augment": args.augment, "chunk": args.chunk, "seed": args.seed, "out": args.out})
    print(f"wrote {run_landscape(options)}")


def cmd_frequency(args) -> None:
    from vitjax.config_files import options_from
    from vitjax.curvature.landscape_command import FrequencyOptions, run_frequency

    options = options_from(FrequencyOptions, args.config, {
        "models": args.model, "data": args.data, "data_dir": args.data_dir, "num_batches": args.num_batches,
        "batch_size": args.batch_size, "bands": args.bands, "band_eps": args.band_eps, "heat_eps": args.heat_eps,
        "heat_stride": args.heat_stride, "seed": args.seed, "out": args.out})
    print(f"wrote {run_frequency(options)}")


def cmd_analyze(args) -> None:
    from vitjax import parallel

    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
    import jax

    from vitjax.analysis import config, run
    from vitjax.report import figures, html

    settings = config.load(args.config) if args.config else config.defaults()
    flags = {"models": args.model, "data": args.data, "data_dir": args.data_dir, "preset": args.preset,
             "analyses": args.analyses, "batch_size": args.batch_size, "num_images": args.num_images}
    settings.update({key: value for key, value in flags.items() if value is not None})
    models = list(settings["models"] or run.DEFAULT_MODELS)
    data = settings["data"] or run.DEFAULT_DATA
    analyses, explicit = config.analyses_of(settings)
    result = run.analyze(models, data, analyses, batch_size=settings["batch_size"],
                         num_images=settings["num_images"], data_dir=settings["data_dir"], explicit=explicit)
    for note in result.notes:
        print(f"note: {note}")
    if jax.process_index() == 0:
        drawn = figures.draw(result.metrics, args.out)
        title = f"vitjax analyze: {', '.join(models)} on {data} ({result.metrics['run']['images']} images)"
        index = html.write_report(args.out, title, result.metrics, drawn, result.notes)
        print(f"wrote {index} ({len(drawn)} figures) and {index.parent / 'metrics.json'}")


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

    analyze = sub.add_parser("analyze", help="run the papers' analyses on models and a dataset, write a report",
                             description="Apply every requested analysis to every model in one pass over a dataset "
                             "(each model with its own preprocessing, sharded over all devices) and write "
                             "metrics.json, one PNG per figure and an index.html. Presets are the papers' protocols: "
                             "all (default), teaching_matters, cl_vs_mim, registers, park_kim. With no --model and "
                             "--data: the embedded vit_scenes_patch8_64 and resnet_scenes_64 on vitjax_scenes.")
    analyze.add_argument("--model", action="append", metavar="NAME[:CHECKPOINT]",
                         help="a model and optionally its checkpoint (repeatable; default the two embedded models)")
    analyze.add_argument("--data", metavar="DATASET[:SPLIT]", help="a TFDS name or folder:/path, and a split "
                         "(default vitjax_scenes/size64:test)")
    analyze.add_argument("--analyses", metavar="a,b,...", help="comma-separated analysis names (with --preset: "
                         "those of the preset, with its options)")
    analyze.add_argument("--preset", help="a paper's protocol: all, teaching_matters, cl_vs_mim, registers, park_kim")
    analyze.add_argument("--config", help="a config file (experiments/*/*.py) setting any of these; flags override it")
    analyze.add_argument("--batch-size", type=int, help="global batch (default 32, rounded up to the device count "
                         "and CKA's minibatch)")
    analyze.add_argument("--num-images", type=int, help="analyse only the first N images of the split")
    analyze.add_argument("--data-dir", help="TFDS data directory (default: TFDS's own)")
    analyze.add_argument("--out", required=True, help="report directory")
    analyze.add_argument("--coordinator", help="multi-process run: HOST:PORT of process 0")
    analyze.add_argument("--num-processes", type=int, help="multi-process run: how many processes")
    analyze.add_argument("--process-id", type=int, help="multi-process run: this process's index")
    analyze.add_argument("--distributed", action="store_true",
                         help="multi-process run on a cluster JAX detects by itself (Cloud TPU, Slurm, Open MPI)")
    analyze.set_defaults(func=cmd_analyze)

    curvature = sub.add_parser(
        "curvature", help="Hessian max-eigenvalue spectra (Park & Kim), spectral density and trace",
        description="Park & Kim's Hessian max-eigenvalue spectra: the top-k eigenvalues (largest |lambda|, power "
        "iteration, tol 1e-3, at most 100 iterations) of the loss on each of several fixed, augmented training "
        "mini-batches (NLL + (wd/2)|w|^2, eval-mode BatchNorm), pooled and overlaid per model; with --density the "
        "spectral density by stochastic Lanczos quadrature, with --trace the trace by Hutchinson, both of the "
        "Hessian over all the batches. Writes metrics.json, PNGs and index.html. The defaults (the embedded ViT "
        "and ResNet, top-2 of 4 batches of 16) are sized for a laptop CPU. Options: defaults < --config < flags.")
    curvature.add_argument("--model", action="append", metavar="NAME[:CHECKPOINT]",
                           help="a model to analyse (repeatable; default vit_scenes_patch8_64 and resnet_scenes_64)")
    curvature.add_argument("--data", help="DATASET[:SPLIT] (default vitjax_scenes/size64:train)")
    curvature.add_argument("--data-dir", help="TFDS data directory (default: TFDS's own)")
    curvature.add_argument("--num-batches", type=int, help="mini-batches, one Hessian each (default 4)")
    curvature.add_argument("--batch-size", type=int, help="examples per mini-batch (default 16)")
    curvature.add_argument("--top-k", type=int, help="eigenvalues per mini-batch (default 2; Park & Kim use 5)")
    curvature.add_argument("--max-iter", type=int, help="power iterations per eigenvalue (default 100, PyHessian's)")
    curvature.add_argument("--weight-decay", type=float, help="wd in NLL + (wd/2)|w|^2 (default 0.05)")
    curvature.add_argument("--density", action="store_true", default=None, help="also the SLQ spectral density")
    curvature.add_argument("--slq-probes", type=int, help="SLQ probes (default 4)")
    curvature.add_argument("--slq-steps", type=int, help="Lanczos steps per SLQ probe (default 30)")
    curvature.add_argument("--trace", action="store_true", default=None, help="also the Hutchinson trace")
    curvature.add_argument("--trace-max-matvecs", type=int, help="Hutchinson probe budget (default 30)")
    curvature.add_argument("--linearize", action="store_true", default=None,
                           help="keep each Hessian's linearization in memory, as PyHessian keeps its graph: every "
                           "product after the first runs only its tangent half (about 1.5x faster) for about 1.6x "
                           "a gradient's peak memory held per mini-batch")
    curvature.add_argument("--seed", type=int, help="seed of the batches, augmentation and probes (default 0)")
    curvature.add_argument("--config", help="a Python file whose get_config() sets these options "
                           "(e.g. experiments/how_do_vits_work/hessian_spectra.py)")
    curvature.add_argument("--out", help="output directory (default runs/curvature)")
    curvature.set_defaults(func=cmd_curvature)

    model_help = "a model and optionally its checkpoint (repeatable; default vit_scenes_patch8_64 and resnet_scenes_64)"
    landscape = sub.add_parser(
        "landscape", help="loss landscapes along normalised random directions (Li et al.; Park & Kim)",
        description="The loss on a 1-D line or 2-D plane through the trained weights along random Gaussian directions "
        "normalised slice by slice to the weights (Flax layouts; see vitjax.curvature.landscape), evaluated on fixed "
        "augmented training batches with eval-mode BatchNorm, grid points vmapped and data sharded over all devices. "
        "Defaults are Park & Kim's protocol (dim-0 normalisation, 1-D tensors and position embeddings fixed, "
        "NLL + 0.05 * sum of weight norms, Mixup/CutMix data) on an 11 x 11 grid over 2 batches of 64 (a few minutes "
        "on a laptop CPU). Writes metrics.json, PNGs and index.html. Options: defaults < --config < flags.")
    landscape.add_argument("--model", action="append", metavar="NAME[:CHECKPOINT]", help=model_help)
    landscape.add_argument("--data", metavar="DATASET[:SPLIT]", help="default vitjax_scenes/size64:train")
    landscape.add_argument("--data-dir", help="TFDS data directory (default: TFDS's own)")
    landscape.add_argument("--dims", type=int, choices=(1, 2), help="a line or a plane (default 2)")
    landscape.add_argument("--grid", type=int, help="points per axis (default 11; Park & Kim 21)")
    landscape.add_argument("--span", type=float, help="the axes run over [-span, span] (default 1)")
    landscape.add_argument("--normalization", choices=("filter", "park_kim", "none"),
                           help="filter: per output unit (Li et al.); park_kim: torch.norm(dim=0) (default)")
    landscape.add_argument("--weight-decay", type=float, help="coefficient of the penalty (default 0.05)")
    landscape.add_argument("--penalty", choices=("park_kim", "l2"),
                           help="park_kim: wd * sum |w_k| (default); l2: wd/2 * sum |w_k|^2")
    landscape.add_argument("--num-batches", type=int, help="fixed batches (default 2)")
    landscape.add_argument("--batch-size", type=int, help="examples per batch (default 64)")
    landscape.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                           help="eval-transform batches with one-hot targets instead of augmented training data")
    landscape.add_argument("--chunk", type=int, help="grid points per compiled call (default 8)")
    landscape.add_argument("--seed", type=int, help="seed of the directions and batches (default 0)")
    landscape.add_argument("--config", help="a Python file whose get_config() sets these options "
                           "(e.g. experiments/how_do_vits_work/loss_landscape.py)")
    landscape.add_argument("--out", required=True, help="report directory")
    landscape.set_defaults(func=cmd_landscape)

    frequency = sub.add_parser(
        "frequency", help="accuracy under band-limited noise and the Fourier heat map of the error",
        description="Park & Kim's frequency robustness: accuracy when FreqAttack's sign noise, band-passed to a "
        "square annulus around each frequency, is added to the test images; and Yin et al.'s Fourier heat map: the "
        "error rate under a single Fourier basis perturbation at each frequency (u, v). Defaults: 11 bands, an 8 x 8 "
        "heat map, 2 test batches of 128 (a few minutes on a laptop CPU). Writes metrics.json, PNGs and index.html.")
    frequency.add_argument("--model", action="append", metavar="NAME[:CHECKPOINT]", help=model_help)
    frequency.add_argument("--data", metavar="DATASET[:SPLIT]", help="default vitjax_scenes/size64:test")
    frequency.add_argument("--data-dir", help="TFDS data directory (default: TFDS's own)")
    frequency.add_argument("--num-batches", type=int, help="batches from the start of the split (default 2)")
    frequency.add_argument("--batch-size", type=int, help="examples per batch (default 128)")
    frequency.add_argument("--bands", type=int, help="noise frequencies linspace(0, pi, N) (default 11)")
    frequency.add_argument("--band-eps", type=float, help="sign-noise amplitude in model-input units (default 1.0)")
    frequency.add_argument("--heat-eps", type=float, help="l2 norm of a heat-map perturbation per channel (default 32)")
    frequency.add_argument("--heat-stride", type=int, help="heat-map step in frequency indices (default 8)")
    frequency.add_argument("--seed", type=int, help="seed of the noise (default 0)")
    frequency.add_argument("--config", help="a Python file whose get_config() sets these options "
                           "(e.g. experiments/how_do_vits_work/frequency_robustness.py)")
    frequency.add_argument("--out", required=True, help="report directory")
    frequency.set_defaults(func=cmd_frequency)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vitjax import allocator

    allocator.keep_freed_memory()  # before JAX's first computation starts its worker threads
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

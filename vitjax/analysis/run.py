"""`vitjax analyze`'s engine: every requested analysis of every requested model in one pass over a dataset.

    result = analyze(["vit_scenes_patch8_64", "resnet_scenes_64"], "vitjax_scenes/size64:test",
                     presets.get("all"))
    result.metrics["models"]["vit_scenes_patch8_64"]["attention_distance"]["distance"]   # (blocks, heads)

How a run goes
--------------
1. Plan (before any image is read): load every model, open the dataset, and check that each
   analysis can run: an analysis that needs masks or labels on a dataset without them is an
   error; an analysis a model cannot serve (attention on a ResNet, a class token it lacks) is
   skipped for that model with a note, or is an error when the user named it and no model can
   serve it. Pair analyses (CKA between models) run on every pair of models.
2. One pass: tf.data decodes each image once and applies each model's own preprocessing; batches
   are sharded over every device of every process (`vitjax.parallel`). Per model, ONE jitted step
   applies the model with the union of its analyses' capture taps and updates all their states,
   so attention maps exist only inside that step, for one batch. Pair analyses get the two
   models' outputs of the same images in a second jitted step. States are replicated, so their
   reductions run over the global batch and every process ends with the same state.
3. Finalize: states to the host, `finalize` per analysis; metrics per model, per analysis.

Resolution and preprocessing: each model sees the images through its own registry recipe (mean,
std, crop_pct, interpolation) at its own input size (the model config's image_size replaces the
recipe's crop and the resize scales with it, as timm's eval transform does with `img_size`), so
models of different resolutions and normalisations compare on the same images. An instance mask
goes through the same resize (nearest) and crop, then becomes a float foreground mask (id > 0).

A model whose output holds NaN or inf on a valid image stops the run with the first block (the
first stage of a ResNet) whose output is not finite on that batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vitjax import parallel
from vitjax.analysis.base import Analysis, PairAnalysis
from vitjax.analysis.inputs import open_limited, record_transform
from vitjax.capture import Capture, Output
from vitjax.config_files import parse_data, parse_model
from vitjax.models.registry import Preprocess
from vitjax.models.vit import ViTConfig

DEFAULT_MODELS = ("vit_scenes_patch8_64", "resnet_scenes_64")
DEFAULT_DATA = "vitjax_scenes/size64:test"
DATA_FIELDS = {"label": "labels", "mask": "object masks"}  # batch fields analyses may need -> words


class NonFiniteOutput(ValueError):
    """A model produced NaN or inf; the message names the model, the images and the first block."""


def is_pair(analysis) -> bool:
    """Pair analyses (CKA between models) take two models' outputs: init(spec_a, spec_b)."""
    return isinstance(analysis, PairAnalysis)


def _option_text(value) -> str:
    if isinstance(value, (frozenset, set, tuple, list)):
        return "+".join(sorted(map(str, value)))
    return str(value)


def label_analyses(analyses: Sequence) -> dict[str, Any]:
    """Metric keys for configured analyses: the name, or, when one name appears more than once,
    name[option=value, ...] for the instances whose options differ from the defaults (e.g.
    'attention_distance' and 'attention_distance[units=pixels]')."""
    counts: dict[str, int] = {}
    for analysis in analyses:
        counts[analysis.name] = counts.get(analysis.name, 0) + 1
    labelled: dict[str, Any] = {}
    for analysis in analyses:
        label = analysis.name
        if counts[analysis.name] > 1:
            default = type(analysis)()
            changed = [f"{f.name}={_option_text(getattr(analysis, f.name))}" for f in dataclasses.fields(analysis)
                       if getattr(analysis, f.name) != getattr(default, f.name)]
            label = f"{analysis.name}[{', '.join(changed)}]" if changed else analysis.name
        if label in labelled:
            raise ValueError(f"analysis {label} is listed twice with the same options")
        labelled[label] = analysis
    return labelled


@dataclasses.dataclass
class ModelPlan:
    """One model of a run: where its images are in a batch and the analyses it runs."""

    label: str  # its key in the metrics
    model: Any
    params: Any
    recipe: Preprocess  # its preprocessing, crop = its input size
    analyses: dict[str, Analysis]  # metric label -> analysis
    image_key: str = "image"  # batch entries holding its images and masks
    mask_key: str = "mask"


@dataclasses.dataclass
class PairPlan:
    """Analyses of two models on the same images (indices into the run's models)."""

    label: str
    a: int
    b: int
    analyses: dict[str, Any]


@dataclasses.dataclass
class Result:
    metrics: dict  # {'models': {model: {analysis: {metric: array}}}, 'pairs': {...}, 'run': {...}}
    notes: list[str]  # what was skipped and why, state sizes


def model_labels(refs: Sequence[tuple[str, str | None]]) -> list[str]:
    """Metric keys for models: the name, with the checkpoint when one name comes twice."""
    names = [name for name, _ in refs]
    labels = [name if names.count(name) == 1 else f"{name}@{checkpoint}" for name, checkpoint in refs]
    if len(set(labels)) < len(labels):
        raise ValueError(f"the same model is listed twice: {', '.join(names)}")
    return labels


def input_recipe(name: str, model) -> Preprocess:
    """The model's registry recipe at the model's own (square) input size."""
    from vitjax.models.registry import lookup

    height, width = model.config.image_size
    if height != width:
        raise ValueError(f"{name} takes {height}x{width} images; `vitjax analyze` crops square images only")
    return dataclasses.replace(lookup(name).preprocess, crop=height)


def _abstract_output(model, params, size: int, taps: Iterable[str]) -> Output:
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda p, x: model.apply({"params": p}, x, capture=Capture(frozenset(taps))), params, images)


class _Specs:
    """Abstract outputs of one model per set of taps, or why the model cannot record those taps."""

    def __init__(self, model, params, size: int):
        self.model, self.params, self.size = model, params, size
        self.cache: dict[frozenset, tuple[Output | None, str]] = {}

    def get(self, taps) -> tuple[Output | None, str]:
        taps = frozenset(taps)
        if taps not in self.cache:
            try:
                self.cache[taps] = (_abstract_output(self.model, self.params, self.size, taps), "")
            except ValueError as error:  # e.g. a ResNet asked for attention maps
                self.cache[taps] = (None, str(error))
        return self.cache[taps]


def why_not(analysis, *specs: _Specs) -> str | None:
    """None if `analysis` can run on these models (their taps record and its init accepts them), else why not."""
    outputs = []
    for spec in specs:
        output, reason = spec.get(analysis.taps)
        if output is None:
            return reason
        outputs.append(output)
    try:
        analysis.init(*outputs)  # eagerly: some inits read shapes into Python ints (not traceable)
    except (ValueError, KeyError, NotImplementedError) as error:
        return str(error.args[0] if error.args else error)
    return None


def plan(models: Sequence[tuple[str, Any, Any, Preprocess]], analyses: Sequence, *, has_labels: bool, has_masks: bool,
         data_name: str, explicit: bool) -> tuple[list[ModelPlan], list[PairPlan], list[str]]:
    """Decide which model runs which analysis, before any image is read (see the module docstring).

    models: (label, model, params, input recipe) (see `load_models`); explicit: the user named these analyses (so one that no
    model can run is an error, not a note). Returns the model plans, the pair plans and notes.
    """
    labelled = label_analyses(analyses)
    available = {"label": has_labels, "mask": has_masks}
    for key, analysis in labelled.items():
        missing = [DATA_FIELDS[f] for f in sorted(analysis.needs) if f in available and not available[f]]
        if missing:
            raise ValueError(f"analysis {key} needs {' and '.join(missing)}, which {data_name} does not have; "
                             "use a dataset that has them (vitjax_scenes has both) or leave it out")
    singles = {k: a for k, a in labelled.items() if not is_pair(a)}
    doubles = {k: a for k, a in labelled.items() if is_pair(a)}
    notes: list[str] = []
    skipped: dict[str, list[str]] = {}

    def choose(candidates: dict, subject: str, *specs: _Specs) -> dict:
        chosen = {}
        for key, analysis in candidates.items():
            reason = why_not(analysis, *specs)
            if reason is None:
                chosen[key] = analysis
            else:
                notes.append(f"{key} skipped for {subject}: {reason}")
                skipped.setdefault(key, []).append(f"{subject}: {reason}")
        return chosen

    plans, specs = [], []
    for label, model, params, recipe in models:
        specs.append(_Specs(model, params, recipe.crop))
        plans.append(ModelPlan(label, model, params, recipe, choose(singles, label, specs[-1])))
    pairs = []
    for (i, a), (j, b) in itertools.combinations(enumerate(plans), 2):
        subject = f"{a.label} vs {b.label}"
        chosen = choose(doubles, subject, specs[i], specs[j])
        if chosen:
            pairs.append(PairPlan(subject, i, j, chosen))
    if explicit:
        served = {key for p in [*plans, *pairs] for key in p.analyses}
        for key in labelled.keys() - served:
            if key in doubles and len(plans) < 2:
                raise ValueError(f"analysis {key} compares two models; give at least two --model")
            raise ValueError(f"no model can run analysis {key}: {'; '.join(skipped[key])}")
    return plans, pairs, notes


def _view(batch: dict, plan: ModelPlan) -> dict:
    """The batch one model's analyses see (base.py's contract)."""
    view = {"image": batch[plan.image_key], "valid": batch["valid"]}
    if "label" in batch:
        view["label"] = batch["label"]
    if plan.mask_key in batch:
        view["mask"] = batch[plan.mask_key]
    return view


def _restrict(out: Output, taps: frozenset[str]) -> Output:
    """The Output with only `taps` kept per block (what pair analyses read), to pass between steps."""
    layers = tuple({t: v for t, v in layer.items() if t in taps} for layer in out.layers)
    return dataclasses.replace(out, layers=layers)


def _finite(out: Output, valid: jax.Array) -> jax.Array:
    """True unless a valid row of the model's outputs (pooled, tokens, logits) holds NaN or inf."""
    rows = valid.shape[0]
    arrays = [a for a in (out.pooled, out.tokens, out.embedding, out.logits) if a is not None]
    finite = jnp.stack([jnp.isfinite(a.reshape(rows, -1)).all(axis=1) for a in arrays]).all(axis=0)
    return (finite | ~valid).all()


class Pass:
    """The compiled steps and the states of one pass; `feed` global batches, then `finalize`.

    A batch is a dict of global arrays: 'valid', optional 'label', and each model's
    `image_key` / `mask_key` entries.
    """

    def __init__(self, plans: Sequence[ModelPlan], pairs: Sequence[PairPlan], mesh):
        self.plans, self.pairs = list(plans), list(pairs)
        self.replicated = parallel.replicated(mesh)
        pair_taps = [frozenset() for _ in self.plans]
        for pair in self.pairs:
            for index in (pair.a, pair.b):
                pair_taps[index] = pair_taps[index].union(*(a.taps for a in pair.analyses.values()))
        self.pair_taps = [taps if any(index in (p.a, p.b) for p in self.pairs) else None
                          for index, taps in enumerate(pair_taps)]
        self.captures = [Capture(frozenset().union(*(a.taps for a in plan.analyses.values()))
                                 | (self.pair_taps[i] or frozenset()))
                         for i, plan in enumerate(self.plans)]
        self.steps = [self._model_step(i) for i in range(len(self.plans))]
        self.pair_step = jax.jit(self._pair_update, donate_argnums=0) if self.pairs else None
        self.reset()

    def reset(self) -> None:
        """Empty states (the compiled steps are kept)."""
        self.states = [self._init(plan.analyses.values(), [self._spec(i)]) for i, plan in enumerate(self.plans)]
        self.pair_states = [self._init(pair.analyses.values(), [self._spec(pair.a), self._spec(pair.b)])
                            for pair in self.pairs]
        self.examples = 0

    def _spec(self, index: int) -> Output:
        plan = self.plans[index]
        return _abstract_output(plan.model, plan.params, plan.recipe.crop, self.captures[index].taps)

    def _init(self, analyses, specs) -> tuple:
        # Eagerly: inits only build small constant states, so there is nothing worth compiling.
        return jax.device_put(tuple(a.init(*specs) for a in analyses), self.replicated)

    def _model_step(self, index: int):
        plan, capture, pair_taps = self.plans[index], self.captures[index], self.pair_taps[index]
        analyses = tuple(plan.analyses.values())

        def step(params, states, batch):
            view = _view(batch, plan)
            out = plan.model.apply({"params": params}, view["image"], capture=capture)
            states = tuple(a.update(s, out, view) for a, s in zip(analyses, states))
            states = jax.lax.with_sharding_constraint(states, self.replicated)
            return states, _finite(out, view["valid"]), None if pair_taps is None else _restrict(out, pair_taps)

        return jax.jit(step, donate_argnums=1)

    def _pair_update(self, states, outputs, batch):
        new = []
        for pair, pair_states in zip(self.pairs, states):
            view = _view(batch, self.plans[pair.a])
            new.append(tuple(a.update(s, outputs[pair.a], outputs[pair.b], view)
                             for a, s in zip(pair.analyses.values(), pair_states)))
        return jax.lax.with_sharding_constraint(new, self.replicated)

    def feed(self, batch: dict) -> None:
        """Updates every state with one global batch; raises NonFiniteOutput (see the module docstring)."""
        outputs, flags = [], []
        for index, plan in enumerate(self.plans):
            self.states[index], finite, out = self.steps[index](plan.params, self.states[index], batch)
            outputs.append(out)
            flags.append(finite)
        if self.pair_step is not None:
            self.pair_states = self.pair_step(self.pair_states, outputs, batch)
        for plan, finite in zip(self.plans, flags):  # checked after dispatching everything, not in between
            if not bool(finite):
                raise NonFiniteOutput(self._locate_nonfinite(plan, batch))
        self.examples += int(np.asarray(parallel.to_host(batch["valid"])).sum())

    def _locate_nonfinite(self, plan: ModelPlan, batch: dict) -> str:
        images, valid = batch[plan.image_key], np.asarray(parallel.to_host(batch["valid"]))
        out = jax.jit(lambda p, x: plan.model.apply({"params": p}, x, capture="tokens"))(plan.params, images)
        unit = "block" if isinstance(plan.model.config, ViTConfig) else "stage"
        where = f"after the last {unit} (final norm, pooling or head)"
        for index, layer in enumerate(out.layers):
            tokens = np.asarray(parallel.to_host(layer["tokens"]))[valid]
            if not np.isfinite(tokens).all():
                where = f"first in {unit} {index} (counting from 0, of {len(out.layers)})"
                break
        first, last = self.examples, self.examples + int(valid.sum()) - 1
        return (f"model {plan.label} produced NaN or inf on images {first}-{last} of the pass, {where}; "
                "check its checkpoint and preprocessing")

    def state_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes each analysis keeps between batches (sums, bounded feature buffers)."""
        size = lambda tree: sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(tree))
        sizes = {plan.label: {k: size(s) for k, s in zip(plan.analyses, states)}
                 for plan, states in zip(self.plans, self.states)}
        sizes.update({pair.label: {k: size(s) for k, s in zip(pair.analyses, states)}
                      for pair, states in zip(self.pairs, self.pair_states)})
        return sizes

    def finalize(self) -> dict:
        """{'models': {model: {analysis: metrics}}, 'pairs': {'a vs b': {analysis: metrics}}}."""
        def done(analyses, states):
            host = parallel.to_host(states)
            return {k: {m: np.asarray(v) for m, v in a.finalize(s).items()}
                    for (k, a), s in zip(analyses.items(), host)}

        def named(pair: PairPlan, metrics: dict) -> dict:
            # Each pair analysis's metrics carry the two models' labels, for axis labels and readers of metrics.json.
            models = np.asarray([self.plans[pair.a].label, self.plans[pair.b].label])
            return {key: {**values, "models": models} for key, values in metrics.items()}

        return {"models": {p.label: done(p.analyses, s) for p, s in zip(self.plans, self.states)},
                "pairs": {p.label: named(p, done(p.analyses, s)) for p, s in zip(self.pairs, self.pair_states)}}


def load_models(specs: Sequence[str]) -> list[tuple[str, Any, Any, Preprocess]]:
    """(label, model, params, input recipe) for each 'NAME[:CHECKPOINT]'."""
    from vitjax.load import load

    refs = [parse_model(spec) for spec in specs]
    loaded = []
    for label, (name, checkpoint) in zip(model_labels(refs), refs):
        model, params = load(name, checkpoint)
        loaded.append((label, model, params, input_recipe(name, model)))
    return loaded


def round_batch(batch_size: int, devices: int, analyses: Iterable) -> int:
    """The batch size rounded up to a multiple of the device count and of every analysis's
    `minibatch` (CKA cuts batches into minibatches of n images)."""
    multiple = math.lcm(devices, *(getattr(a, "minibatch", 1) for a in analyses))
    return -(-batch_size // multiple) * multiple


def analyze(models: Sequence[str], data: str, analyses: Sequence, *, batch_size: int = 32,
            num_images: int | None = None, data_dir: str | None = None, explicit: bool = False,
            progress: bool = True) -> Result:
    """Runs `analyses` (configured instances, see presets.py) for each of `models` ('NAME[:CHECKPOINT]')
    on `data` ('DATASET[:SPLIT]') in one pass; see the module docstring."""
    from vitjax.data import loader

    if not analyses:
        raise ValueError("no analyses to run")
    source = open_limited(*parse_data(data), num_images, data_dir)
    if source.num_examples == 0:
        raise ValueError(f"{data} has no images")
    loaded = load_models(models)
    plans, pairs, notes = plan(loaded, analyses, has_labels=source.has_labels, has_masks=source.has_masks,
                               data_name=data, explicit=explicit)
    # Masks go to every analysis when the dataset has them (clustering pools with them if present).
    transform = record_transform(plans, source.has_labels, source.has_masks)
    mesh = parallel.make_mesh()
    devices = jax.device_count()
    batch_size = round_batch(batch_size, devices, [a for p in [*plans, *pairs] for a in p.analyses.values()])
    run = Pass(plans, pairs, mesh)
    batches = loader.eval_batches(source, transform=transform, global_batch=batch_size,
                                  sharding=parallel.batch_sharding(mesh))
    total = -(-source.num_examples // batch_size)
    for batch in tqdm(batches, total=total, desc="analyze", disable=not progress or jax.process_index() != 0):
        run.feed(batch)
    sizes = run.state_bytes()
    notes.append("state kept between batches: " + "; ".join(
        f"{subject}: {sum(s.values()) / 2**20:.1f} MiB" for subject, s in sizes.items()))
    metrics = run.finalize()
    metrics["run"] = {"models": list(models), "data": data, "images": run.examples, "batch_size": batch_size,
                      "devices": devices, "state_bytes": sizes}
    return Result(metrics, notes)


__all__ = ["DEFAULT_DATA", "DEFAULT_MODELS", "ModelPlan", "NonFiniteOutput", "PairPlan", "Pass", "Result",
           "analyze", "label_analyses", "plan"]

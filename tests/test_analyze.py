"""`vitjax analyze`: streaming equals all-at-once for every registered analysis, the report, bad input.

The oracle of the streaming test is the same analysis given all images in one batch on one device:
batches (merged from two streams, with padding rows) and a run sharded over 8 simulated devices
must give the same metrics to 1e-6.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import vitjax
from vitjax import parallel
from vitjax.config_files import parse_model
from vitjax.analysis import config, inputs, presets, registry, run
from vitjax.cli import main
from vitjax.models.registry import Preprocess
from vitjax.report.figures import file_prefix, plots

from image_folders import make_image_folder

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY = dict(image_size=32, patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64, num_classes=5)
SCENES = "vitjax_scenes/size64_train40_test40_cue20_seed0"
# Options that keep the buffered analyses (k-means, probes) small and fast on 16 images.
SMALL = {"clustering": dict(k=3, k_mask=3, n_init=2, capacity=64, blocks=(-1,)),
         "probes": dict(epochs=2, capacity=64, max_tokens=512),
         "cka": dict(minibatch=4), "cka_between": dict(minibatch=4), "cls_attention_maps": dict(num_images=4)}


def tiny_vit(seed: int, **overrides):
    return vitjax.create_model("vit_tiny_patch16_224", key=jax.random.key(seed), **{**TINY, **overrides})


def small_suite() -> list:
    """Every registered analysis, with small buffers where it has them."""
    return [registry.make({"name": name, **SMALL.get(name, {})}) for name in registry.ANALYSES]


def synthetic_data(n: int = 16, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.integers(6, size - 6, (n, 2))
    masks = ((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2 < 49).astype(np.float32)
    return {"image": rng.normal(size=(n, size, size, 3)).astype(np.float32), "mask": masks,
            "label": rng.integers(0, 5, n).astype(np.int32), "valid": np.ones(n, bool)}


def assert_same_metrics(got: dict, want: dict, where: str) -> None:
    assert got.keys() == want.keys(), where
    for key, value in want.items():
        a, b = np.asarray(got[key]), np.asarray(value)
        if b.dtype.kind in "fc":
            # CKA is a ratio of HSIC estimates that are themselves differences of sums: it turns the
            # ~1e-7 float32 summation-order differences of a sharded forward pass into ~3e-6.
            tolerance = 1e-5 if where.split()[-1].startswith("cka") and key == "cka" else 1e-6
            np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance, err_msg=f"{where} {key}")
        else:
            np.testing.assert_array_equal(a, b, err_msg=f"{where} {key}")


def test_streamed_merged_and_sharded_runs_equal_one_batch_for_every_analysis():
    data = synthetic_data()
    recipe = Preprocess(crop=32)
    models = [("vit_a", *tiny_vit(0, num_registers=2), recipe), ("vit_b", *tiny_vit(1), recipe)]
    analyses = small_suite()
    plans, pairs, notes = run.plan(models, analyses, has_labels=True, has_masks=True, data_name="synthetic",
                                   explicit=True)
    assert not notes, notes
    plans[1].analyses = {}  # the second model only serves the pair analyses (less to compile)
    assert {k for p in [*plans, *pairs] for k in p.analyses} == set(registry.ANALYSES)
    one_device = parallel.make_mesh(devices=jax.devices()[:1])
    single = run.Pass(plans, pairs, one_device)

    def feed(on: run.Pass, chunks: list[slice], mesh) -> run.Pass:
        """Each chunk of images as one batch of 16 rows (padding rows after the chunk)."""
        on.reset()
        for chunk in chunks:
            for batch in inputs.batches_of({k: v[chunk] for k, v in data.items()}, [16], mesh):
                on.feed(batch)
        return on

    want = feed(single, [slice(0, 16)], one_device).finalize()

    # Two streams merged: images 0-3 then 4-7 (two updates); images 8-15.
    first = feed(single, [slice(0, 4), slice(4, 8)], one_device)
    first_states, first_pairs = first.states, first.pair_states
    second = feed(single, [slice(8, 16)], one_device)
    merge = lambda analyses, a, b: tuple(x.merge(s, t) for x, s, t in zip(analyses.values(), a, b))
    single.states = [merge(p.analyses, a, b) for p, a, b in zip(plans, first_states, second.states)]
    single.pair_states = [merge(p.analyses, a, b) for p, a, b in zip(pairs, first_pairs, second.pair_states)]
    merged = single.finalize()

    assert jax.device_count() == 8
    eight = parallel.make_mesh()
    sharded = feed(run.Pass(plans, pairs, eight), [slice(0, 16)], eight).finalize()

    for got, how in ((merged, "merged"), (sharded, "sharded")):
        for group in ("models", "pairs"):
            for subject, results in want[group].items():
                for label, values in results.items():
                    assert_same_metrics(got[group][subject][label], values, f"{how} {subject} {label}")


def test_cli_report_has_every_figure_and_finite_metrics(tmp_path):
    from vitjax.convert import orbax_io

    _, params = tiny_vit(0, num_registers=2)
    checkpoint = tmp_path / "tiny"
    orbax_io.save(checkpoint, params, {"name": vitjax.lookup("vit_tiny_patch16_224").name,
                                       "overrides": {**TINY, "num_registers": 2}})
    # Every analysis; CKA also on block outputs, which a ResNet has, so the pair can run it.
    entries = [{"name": name, **SMALL.get(name, {})} for name in registry.ANALYSES if name != "cka_between"]
    entries += [{"name": "cka", "taps": ("tokens",), "minibatch": 4},
                {"name": "cka_between", "taps": ("tokens",), "minibatch": 4}]
    config_file = tmp_path / "suite.py"
    config_file.write_text(f"def get_config():\n    return dict(analyses={entries!r}, num_images=12, batch_size=8)\n")
    out = tmp_path / "report"
    argv = ["analyze", "--model", f"vit_tiny_patch16_224:{checkpoint}", "--model", "resnet_scenes_64",
            "--data", f"{SCENES}:test", "--data-dir", str(tmp_path / "tfds"), "--config", str(config_file),
            "--out", str(out)]
    assert main(argv) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["images"] == 12
    vit, resnet = "vit_tiny_patch16_224", "resnet_scenes_64"
    labelled = run.label_analyses(registry.resolve(entries))
    assert set(metrics["models"][vit]) == set(labelled) - {"cka_between"}  # a ViT with registers runs all
    block_outputs = {label for label, a in labelled.items() if a.name == "cka" and a.taps == {"tokens"}}
    assert block_outputs | {"clustering", "singular_values"} <= set(metrics["models"][resnet])
    assert set(metrics["pairs"][f"{vit} vs {resnet}"]) == {"cka_between"}
    assert metrics["pairs"][f"{vit} vs {resnet}"]["cka_between"]["models"] == [vit, resnet]  # the heatmap's axes

    page = (out / "index.html").read_text()
    shown = re.findall(r"<img src='([^']+)'>", page)
    for path in shown:
        with Image.open(out / path) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    for group in ("models", "pairs"):
        for subject, results in metrics[group].items():
            for label, values in results.items():
                prefix = file_prefix(subject, label)
                assert any(path.startswith(prefix + "_") for path in shown), f"no figure of {subject} {label}"
                for key, value in values.items():
                    assert value is not None or _may_be_nan(label, key), f"{subject} {label} {key} is not finite"
    assert "skipped for resnet_scenes_64" in page  # notes say what a ResNet cannot run


def _may_be_nan(label: str, key: str) -> bool:
    """Metrics documented as NaN on a model without high-norm outliers (the random tiny ViT)."""
    return label.partition("[")[0] in ("token_norms", "outlier_redundancy", "probes") and (
        "outlier" in key or key in ("threshold", "dip", "minor_fraction", "class_above_threshold"))


def test_unknown_analysis_lists_the_known_ones(tmp_path, capsys):
    assert main(["analyze", "--analyses", "attention_distance,attn_dist", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "unknown analysis 'attn_dist'" in error
    for name in registry.ANALYSES:
        assert name in error


def test_mask_analysis_on_a_dataset_without_masks_fails_before_the_run(tmp_path, capsys, monkeypatch):
    make_image_folder(tmp_path / "images", {"a": 2, "b": 2}, size=(40, 40))
    monkeypatch.setattr(run, "Pass", lambda *a, **k: pytest.fail("the run started"))
    argv = ["analyze", "--model", "vit_scenes_patch8_64", "--data", f"folder:{tmp_path / 'images'}",
            "--analyses", "saliency_alignment,nmi", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "saliency_alignment needs object masks" in error and "does not have" in error


def test_attention_analysis_on_a_resnet_alone_says_it_needs_a_vit():
    model, params = vitjax.load("resnet_scenes_64")
    with pytest.raises(ValueError, match="no model can run analysis nmi: resnet_scenes_64: .*exist only in ViTs"):
        run.plan([("resnet_scenes_64", model, params, Preprocess(crop=64))], [registry.make("nmi")], has_labels=True, has_masks=True,
                 data_name="d", explicit=True)


def test_nan_in_a_block_is_reported_with_that_block():
    model, params = tiny_vit(0)
    poisoned = jax.tree_util.tree_map(lambda x: x, params)
    poisoned["blocks_1"]["mlp"]["fc1"]["bias"] = poisoned["blocks_1"]["mlp"]["fc1"]["bias"].at[3].set(np.nan)
    plans, _, _ = run.plan([("tiny", model, poisoned, Preprocess(crop=32))], [registry.make("attention_entropy")], has_labels=True,
                           has_masks=True, data_name="d", explicit=True)
    mesh = parallel.make_mesh()
    one_pass = run.Pass(plans, [], mesh)
    with pytest.raises(run.NonFiniteOutput, match=r"model tiny produced NaN or inf on images 0-7 .*first in block 1 "):
        for batch in inputs.batches_of(synthetic_data(8), [8], mesh):
            one_pass.feed(batch)


def test_labels_tell_apart_two_settings_of_one_analysis():
    labels = list(run.label_analyses(presets.get("all")))
    assert "attention_distance" in labels and "attention_distance[units=pixels]" in labels
    with pytest.raises(ValueError, match="listed twice"):
        run.label_analyses([registry.make("nmi"), registry.make("nmi")])


def test_every_analysis_has_a_plot_and_every_preset_resolves():
    assert set(plots()) == set(registry.ANALYSES)
    for name in presets.PRESETS:
        assert presets.get(name) and presets.describe(name)
    with pytest.raises(ValueError, match="no option.*'unit'.*units"):
        registry.make({"name": "attention_distance", "unit": "pixels"})


ANALYZE_CONFIGS = sorted(p for p in EXPERIMENTS.glob("*/*.py") if "vitjax analyze --config" in p.read_text())


def test_every_paper_has_analyze_configs():
    assert {p.parent.name for p in ANALYZE_CONFIGS} >= {"teaching_matters", "cl_vs_mim", "registers", "how_do_vits_work"}


@pytest.mark.parametrize("path", ANALYZE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_experiment_configs_load_and_name_known_analyses(path):
    settings = config.load(path)
    analyses, _ = config.analyses_of(settings)
    assert analyses and all(a.name in registry.ANALYSES for a in analyses)
    assert f"vitjax analyze --config experiments/{path.parent.name}/{path.name}" in path.read_text()
    for model in settings["models"] or ():
        vitjax.lookup(parse_model(model)[0])

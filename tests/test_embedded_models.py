"""The models shipped with the package: they load by name with no download, they are what their
committed training run trained, and they classify held-out vitjax_scenes images well."""

import json
import os

import pytest

from vitjax.evaluate import evaluate
from vitjax.load import bundled_path, model_config
from vitjax.models.registry import REGISTRY, lookup

EMBEDDED = {"vit_scenes_patch8_64": 0.5, "resnet_scenes_64": 0.8}  # name -> minimum test accuracy (chance 0.1)
# The first 200 test and 100 cue-conflict images of vitjax_scenes/size64: examples are a pure
# function of (seed, split, index), so a smaller config holds the same images, none trained on.
HELD_OUT = "vitjax_scenes/size64_train10_test200_cue100_seed0"


def test_embedded_models_are_registered_and_small():
    assert set(EMBEDDED) <= {name for name in REGISTRY if "scenes" in name}
    for name in EMBEDDED:
        folder = bundled_path(lookup(name))
        assert os.path.getsize(os.path.join(folder, "params.safetensors")) <= 5 * 2**20
        assert os.path.exists(os.path.join(folder, "metrics.jsonl"))


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_bundled_run_config_is_the_registered_architecture(name):
    with open(os.path.join(bundled_path(lookup(name)), "config.json")) as f:
        model = dict(json.load(f)["model"])
    trained = model_config(model.pop("name"), **{k: tuple(v) if isinstance(v, list) else v for k, v in model.items()})
    assert trained == lookup(name).config


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_model_classifies_held_out_scenes(name, tmp_path_factory):
    data_dir = str(tmp_path_factory.getbasetemp() / "tfds")  # shared by both models in one worker
    metrics = evaluate(name, HELD_OUT, "test", batch_size=200, data_dir=data_dir)
    assert metrics["examples"] == 200
    assert metrics["accuracy"] > EMBEDDED[name]
    assert "shape_bias" not in metrics  # the test split's shape and texture agree: no bias to measure
    conflict = evaluate(name, HELD_OUT, "cue_conflict", batch_size=100, data_dir=data_dir)
    assert 0.0 <= conflict["shape_bias"] <= 1.0

"""The loader: batches are a pure function of (seed, step), resuming gives exactly the batches of
an uninterrupted run, 1 and 2 processes build the same global batch, evaluation sees every example
once, and the global jax.Arrays are sharded over 8 (simulated) devices with the right contents."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from image_folders import make_image_folder
from vitjax.data import loader
from vitjax.data.sources import open_source
from vitjax.data.tf_env import import_tf

tf = import_tf()

N = 13  # examples in the folder: not a multiple of any batch size used, so batches cross epochs


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    written = make_image_folder(root, {"a": 5, "b": 4, "c": 4}, size=(8, 8), vary_size=False)
    return open_source(f"folder:{root}"), written


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    # A TFDS source whose shuffle buffer (8) is smaller than the split (30).
    data_dir = tmp_path_factory.mktemp("tfds")
    return open_source("vitjax_scenes/size16_train30_test7_cue2_seed0", "train", data_dir=str(data_dir))


def transform(record):
    """Fixed-size example + a random draw from the example's seed (stands in for augmentation)."""
    image = tf.image.resize_with_crop_or_pad(record["image"], 8, 8)  # scenes are 16 px
    return {"image": image, "label": record["label"], "index": record["index"],
            "noise": tf.random.stateless_uniform([], record["seed"], dtype=tf.float32)}


def take(dataset, count):
    return list(itertools.islice(dataset.as_numpy_iterator(), count))


def train(source, count, **kwargs):
    kwargs = dict(transform=transform, global_batch=4, seed=0) | kwargs
    return take(loader.local_train_dataset(source, **kwargs), count)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_same_seed_same_batches_other_seed_other_batches(folder):
    source, _ = folder
    first = train(source, 8, seed=3)
    assert_same_batches(first, train(source, 8, seed=3))
    other = train(source, 8, seed=4)
    order = np.concatenate([b["index"] for b in first])
    assert not np.array_equal(order, np.concatenate([b["index"] for b in other]))


def test_each_epoch_is_a_permutation_and_augmentation_changes_per_epoch(folder):
    source, written = folder
    batches = train(source, 7, seed=1)  # 28 examples: two full epochs and 2 of the third
    index = np.concatenate([b["index"] for b in batches])
    noise = np.concatenate([b["noise"] for b in batches])
    assert sorted(index[:N]) == list(range(N)) and sorted(index[N:2 * N]) == list(range(N))
    assert not np.array_equal(index[:N], index[N:2 * N])  # reshuffled each epoch
    for i in range(N):  # the same example gets new random draws in a new epoch
        first, second = np.flatnonzero(index[:2 * N] == i)
        assert noise[first] != noise[second]
    # Images are the files' pixels and labels their class folder (oracle: what was written).
    paths = sorted(written)
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    for k, i in enumerate(index):
        np.testing.assert_array_equal(images[k], written[paths[i]])
        assert labels[k] == "abc".index(paths[i].split("/")[-2])


@pytest.mark.parametrize("start_step", [1, 3, 7])  # inside epoch 0, at its end, inside epoch 2
def test_resume_gives_the_batches_of_an_uninterrupted_run(folder, start_step):
    source, _ = folder
    fresh = train(source, start_step + 4, seed=2)
    assert_same_batches(fresh[start_step:], train(source, 4, seed=2, start_step=start_step))


def test_resume_with_a_shuffle_buffer_smaller_than_the_split(scenes):
    fresh = train(scenes, 12, seed=5, shuffle_buffer=8)
    assert_same_batches(fresh[9:], train(scenes, 3, seed=5, shuffle_buffer=8, start_step=9))
    index = np.concatenate([b["index"] for b in fresh])
    assert sorted(index[:30]) == list(range(30))


@pytest.mark.parametrize("source_name", ["folder", "scenes"])
def test_two_processes_build_the_same_global_batch(request, source_name):
    source = request.getfixturevalue(source_name)
    source = source[0] if isinstance(source, tuple) else source
    whole = train(source, 6, seed=7, start_step=2)
    halves = [train(source, 6, seed=7, start_step=2, process_index=p, process_count=2) for p in range(2)]
    for step, batch in enumerate(whole):
        for key in batch:
            joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
            np.testing.assert_array_equal(joined, batch[key], err_msg=key)


def _eval(source, global_batch, **kwargs):
    return list(loader.local_eval_dataset(source, transform=transform, global_batch=global_batch,
                                          **kwargs).as_numpy_iterator())


@pytest.mark.parametrize("global_batch", [4, 13, 16])
def test_eval_covers_every_example_once_in_order(folder, global_batch):
    source, written = folder
    batches = _eval(source, global_batch)
    assert len(batches) == -(-N // global_batch)
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    assert valid.dtype == bool and len(valid) == len(batches) * global_batch
    assert valid.sum() == N and not valid[N:].any()
    assert list(index[valid]) == list(range(N))
    images = np.concatenate([b["image"] for b in batches])[valid]
    for i, path in enumerate(sorted(written)):
        np.testing.assert_array_equal(images[i], written[path])
    halves = [_eval(source, global_batch, process_index=p, process_count=2) for p in (0, 1)] \
        if global_batch % 2 == 0 else None
    if halves:
        for step, batch in enumerate(batches):
            for key in batch:
                joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
                np.testing.assert_array_equal(joined, batch[key], err_msg=key)


def test_global_arrays_sharded_over_eight_devices(folder):
    source, _ = folder
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    expected = train(source, 3, seed=9, global_batch=16)
    batches = loader.train_batches(source, transform=transform, global_batch=16, seed=9,
                                   sharding=sharding, prefetch=2)
    for want, got in zip(expected, itertools.islice(batches, 3)):
        assert got["image"].shape == (16, 8, 8, 3) and got["label"].shape == (16,)
        for key in want:
            assert got[key].sharding == sharding
            np.testing.assert_array_equal(np.asarray(got[key]), want[key])
            for shard in got[key].addressable_shards:  # device d holds rows [2d, 2d + 2)
                rows = shard.index[0]
                assert (rows.start, rows.stop) == (2 * shard.device.id, 2 * shard.device.id + 2)
                np.testing.assert_array_equal(np.asarray(shard.data), want[key][rows])
    batches.close()
    evals = list(loader.eval_batches(source, transform=transform, global_batch=8, sharding=sharding))
    assert len(evals) == 2 and evals[-1]["valid"].shape == (8,)
    assert int(np.asarray(evals[-1]["valid"]).sum()) == N - 8


def test_bad_batch_sizes_are_explained(folder):
    source, _ = folder
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        train(source, 1, global_batch=5, process_count=2)


def test_prefetcher_hands_on_errors_and_ends():
    def items():
        yield 1
        raise RuntimeError("broken reader")
    prefetched = loader.Prefetcher(items(), size=2)
    assert next(prefetched) == 1
    with pytest.raises(RuntimeError, match="broken reader"):
        next(prefetched)
    assert list(loader.Prefetcher(iter(range(5)), size=2)) == list(range(5))

"""One config, one loss curve: training on 1 device, on 8 simulated CPU devices (data parallel, and
with params and optimizer state sharded FSDP-style), and in 2 processes of 4 devices each joined by
jax.distributed over gloo gives the same losses step by step (to float32 reduction-order noise).

Parameters are not compared: Adam divides by the gradient's own scale, so reduction-order noise in
a near-zero gradient entry can move that entry's update by a visible fraction of the step size.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from train_runs import CONFIG, command, free_port, sets, start

from vitjax import parallel
from vitjax.train import config as run_config
from vitjax.train import train
from vitjax.train.logging import read_metrics
from vitjax.train.synthetic import SyntheticTask

STEPS = 8
RUN = dict(total_steps=STEPS, log_every=1, eval_every=0, checkpoint_every=0, tensorboard=False,
           data__eval_split="", optimizer__warmup_steps=2)
RTOL = 1e-5


def losses(workdir) -> np.ndarray:
    return np.array([m["loss"] for m in read_metrics(str(workdir)) if "loss" in m])


def run_here(workdir, devices: int, fsdp: int):
    config = run_config.load(CONFIG, {k.replace("__", "."): v for k, v in {**RUN, "fsdp": fsdp}.items()})
    mesh = parallel.make_mesh(fsdp, jax.devices()[:devices])
    task = SyntheticTask(image_size=32, num_classes=4, global_batch=config.batch_size)
    state = train(config, str(workdir), train_batches=task.train_batches(parallel.batch_sharding(mesh)),
                  mesh=mesh, progress=False)
    return state, losses(workdir)


@pytest.mark.parametrize("shape, fsdp, expected", [
    ((6, 8), 4, P(None, "fsdp")),  # the largest dimension that 4 divides
    ((8, 6), 4, P("fsdp", None)),
    ((12, 8), 4, P("fsdp", None)),
    ((16, 16), 4, P(None, "fsdp")),  # a tie goes to the later dimension
    ((3, 5), 4, P()),  # nothing divisible: replicated
    ((), 4, P()),
    ((64, 64), 1, P()),  # no FSDP: replicated
])
def test_fsdp_rule(shape, fsdp, expected):
    assert parallel.fsdp_spec(shape, fsdp) == expected


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    _, curve = run_here(tmp_path_factory.mktemp("one"), devices=1, fsdp=1)
    assert len(curve) == STEPS and curve[-1] < curve[0]
    return curve


@pytest.mark.parametrize("fsdp", [1, 4])
def test_eight_devices_match_one(tmp_path, one_device, fsdp):
    state, eight = run_here(tmp_path, devices=8, fsdp=fsdp)
    np.testing.assert_allclose(eight, one_device, rtol=RTOL)
    kernel = state.params["blocks_0"]["mlp"]["fc1"]["kernel"]  # (32, 64): its 64 outputs split 4 ways
    moment = state.opt_state.inner_states["trained"].inner_state[0].mu["blocks_0"]["mlp"]["fc1"]["kernel"]
    if fsdp == 1:
        assert kernel.sharding.spec == P() and kernel.addressable_shards[0].data.shape == (32, 64)
    else:
        assert kernel.sharding.spec == P(None, "fsdp") and kernel.addressable_shards[0].data.shape == (32, 16)
        assert moment.sharding.spec == kernel.sharding.spec  # the optimizer state is sharded alike


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """`vitjax train --coordinator localhost:PORT --num-processes 2 --process-id i` with 4 devices
    each, data parallel (fsdp=1) and FSDP (fsdp=2); both runs at once, to share the waiting."""
    runs = {}
    for fsdp in (1, 2):
        workdir, port = tmp_path_factory.mktemp(f"two_processes_fsdp{fsdp}"), free_port()
        runs[fsdp] = workdir, [start(command(workdir, "--coordinator", f"localhost:{port}", "--num-processes", "2",
                                             "--process-id", str(i), *sets(**RUN, fsdp=fsdp)), devices=4)
                               for i in range(2)]
    results = {}
    for fsdp, (workdir, processes) in runs.items():
        outputs = [p.communicate(timeout=300)[0] for p in processes]
        results[fsdp] = workdir, [(p.returncode, output) for p, output in zip(processes, outputs)]
    return results


@pytest.mark.parametrize("fsdp", [1, 2])
def test_two_processes_match_one_device(two_processes, one_device, fsdp):
    workdir, results = two_processes[fsdp]
    for code, output in results:
        assert code == 0, output
    assert "over 2 process(es)" in results[0][1] and f"'fsdp': {fsdp}" in results[0][1]
    np.testing.assert_allclose(losses(workdir), one_device, rtol=RTOL)

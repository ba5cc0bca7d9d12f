"""Checkpoints and resuming: a `vitjax train` process killed with SIGKILL mid-training and started
again ends with the same parameters and loss curve as a run that was never interrupted; only the
last k checkpoints are kept; a missing, empty-handed or damaged checkpoint directory is an error
that names it, never a silent fresh start."""

from __future__ import annotations

import os
import shutil
import signal
import time

import jax
import numpy as np
import pytest
from flax import traverse_util

from train_runs import CONFIG, command, sets, start

from vitjax.cli import main
from vitjax.convert import orbax_io
from vitjax.train import config as run_config
from vitjax.train import train
from vitjax.train.logging import read_metrics

TOTAL, EVERY, KEEP = 120, 20, 2
RUN = dict(total_steps=TOTAL, checkpoint_every=EVERY, keep_checkpoints=KEEP, log_every=1, eval_every=0,
           tensorboard=False, data__eval_split="")


def committed_steps(workdir) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def logged_steps(workdir) -> int:
    try:
        return max((m["step"] for m in read_metrics(str(workdir))), default=0)
    except (FileNotFoundError, ValueError):  # not written yet, or a line half-written
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process, on the same 8 simulated devices as the subprocesses."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    overrides = {key.replace("__", "."): value for key, value in RUN.items()}
    state = train(run_config.load(CONFIG, overrides), str(workdir), progress=False)
    return jax.device_get(state.params), read_metrics(str(workdir))


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A subprocess killed with SIGKILL after a checkpoint exists and training has gone past it,
    then started again with the same command until it finishes."""
    workdir = tmp_path_factory.mktemp("killed")
    args = command(workdir, *sets(**RUN))
    process = start(args, devices=8)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        done = committed_steps(workdir)
        if done and logged_steps(workdir) >= done[-1] + 5:
            break
        time.sleep(0.02)
    killed_at = logged_steps(workdir)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0]
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{output}"
    assert EVERY <= killed_at < TOTAL, killed_at

    process = start(args, devices=8)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    return workdir, killed_at, output


def test_killed_run_resumes_to_the_same_parameters(reference, resumed):
    params, logged = reference
    workdir, killed_at, output = resumed
    assert "resumed from" in output and f"at step {TOTAL}" not in output
    exported = orbax_io.read(os.path.join(workdir, "params")).tensors
    flat = traverse_util.flatten_dict(params, sep="/")
    assert exported.keys() == flat.keys()
    worst = max(float(np.abs(exported[k] - flat[k]).max() / max(np.abs(flat[k]).max(), 1e-12)) for k in flat)
    assert worst <= 1e-6, f"params differ from the uninterrupted run by {worst:.2e} (relative)"

    # metrics.jsonl holds every step once: the lines logged after the checkpoint and before the
    # kill were dropped and logged again by the resumed run, with the same losses.
    resumed_losses = {m["step"]: m["loss"] for m in read_metrics(str(workdir))}
    assert sorted(resumed_losses) == list(range(1, TOTAL + 1))
    reference_losses = np.array([m["loss"] for m in logged])
    np.testing.assert_allclose([resumed_losses[s] for s in range(1, TOTAL + 1)], reference_losses, rtol=1e-6)


def test_only_the_last_checkpoints_are_kept(resumed):
    workdir, _, _ = resumed
    assert committed_steps(workdir) == [TOTAL - EVERY * i for i in reversed(range(KEEP))]
    assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in n]


def test_resume_errors(tmp_path, capsys, resumed):
    """Every way resuming can fail says so and starts nothing."""
    def run(workdir, *options):
        code = main(["train", CONFIG, "--workdir", str(workdir), *sets(**RUN), *options])
        return code, capsys.readouterr().err

    code, err = run(tmp_path / "fresh", "--resume", "require")
    assert code == 2 and "nothing to resume" in err and "does not exist" in err

    stray = tmp_path / "stray"
    (stray / "checkpoints" / "40.orbax-checkpoint-tmp-1234").mkdir(parents=True)
    code, err = run(stray)
    assert code == 2 and "holds no complete checkpoint" in err and "40.orbax-checkpoint-tmp-1234" in err

    finished, _, _ = resumed
    code, err = run(finished, "--resume", "never")
    assert code == 2 and "already holds checkpoints" in err

    damaged = tmp_path / "damaged"
    shutil.copytree(finished, damaged)
    latest = damaged / "checkpoints" / str(TOTAL)
    for root, _, files in os.walk(latest / "default"):
        for name in files:
            if name not in ("commit_success.txt",):
                os.truncate(os.path.join(root, name), 0)
    before = read_metrics(str(damaged))
    code, err = run(damaged)
    assert code == 2 and f"cannot restore checkpoint {TOTAL}" in err and str(latest) in err
    assert read_metrics(str(damaged)) == before  # nothing was trained or logged

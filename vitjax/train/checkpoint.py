"""Train-state checkpoints with orbax: written in the background, atomically, the last k kept, and
a run resumed from the latest one, or a clear error, never a silent fresh start.

Orbax writes each checkpoint into a temporary directory and renames it to its step number only
when every file is complete, so a process killed mid-save leaves a temporary directory, never a
half-written step. Saving copies the arrays to host memory before `save` returns; the files are
written while training goes on.

Resuming (`resume_step`, the `--resume` option of `vitjax train`):
  auto     resume from the latest checkpoint if the checkpoint directory holds any; start afresh
           if it does not exist or is empty; fail if it holds files but no complete checkpoint
           (damaged, or a run stopped before its first checkpoint finished: delete it to restart)
  require  resume, or fail if there is nothing to resume
  never    start afresh, or fail if the directory already holds checkpoints
A checkpoint that exists but cannot be restored is always an error that names it.
"""

from __future__ import annotations

import os
import shutil

import jax
import orbax.checkpoint as ocp

from vitjax.convert import orbax_io
from vitjax.convert.read import CheckpointError
from vitjax.models.registry import lookup

RESUME_MODES = ("auto", "require", "never")


def resume_step(directory: str, mode: str = "auto") -> int | None:
    """The step to resume from, or None for a fresh start; raises CheckpointError per `mode`."""
    if mode not in RESUME_MODES:
        raise ValueError(f"resume mode must be one of {RESUME_MODES}, not {mode!r}")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"{directory} should be the checkpoint directory but is a file")
    entries = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    if mode == "never":
        if entries:
            raise CheckpointError(f"{directory} already holds checkpoints ({', '.join(entries)}); resume "
                                  "them with --resume auto, or choose a new --workdir")
        return None
    if not entries:
        if mode == "require":
            state = "is empty" if os.path.isdir(directory) else "does not exist"
            raise CheckpointError(f"nothing to resume: {directory} {state}")
        return None
    steps = ocp.path.step.checkpoint_steps(directory)
    if not steps:
        raise CheckpointError(
            f"{directory} holds no complete checkpoint (it contains {', '.join(entries)}): the run was "
            f"stopped before its first checkpoint was written, or the directory is damaged. Delete "
            f"{directory} to start afresh.")
    return max(steps)


class Checkpoints:
    """The checkpoints of one run directory."""

    def __init__(self, directory: str, *, keep: int):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=True, create=True,
            cleanup_tmp_directories=True)  # leftovers of a save that was killed
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state) -> None:
        """Starts writing `state` as checkpoint `step` (returns once the arrays are on the host)."""
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore(self, step: int, abstract_state):
        """The state of checkpoint `step`, placed with the shardings of `abstract_state` (a tree
        of jax.ShapeDtypeStruct with shardings)."""
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as error:  # orbax raises many types for a damaged or mismatched checkpoint
            others = [s for s in self.manager.all_steps() if s != step]
            earlier = f" (the other checkpoints: {others})" if others else ""
            raise CheckpointError(
                f"cannot restore checkpoint {step} from {self.directory}: {type(error).__name__}: {error}. "
                f"If it is damaged, delete {os.path.join(self.directory, str(step))} to resume from an earlier "
                f"one{earlier}, or delete {self.directory} to start afresh; if the config changed the model "
                f"or the optimizer, use a new --workdir.") from None

    def close(self) -> None:
        """Waits for the last save to finish."""
        self.manager.wait_until_finished()
        self.manager.close()


def export_params(directory: str, params, model_section) -> bool:
    """Writes the trained params as a `vitjax convert`-style directory, so that
    `vitjax.load(model.name, checkpoint=directory)` reads them back with the right config.

    Single-process runs only (`orbax_io.save` is not multi-host); returns whether it wrote. A
    previous export in `directory` is replaced.
    """
    if jax.process_count() > 1:
        return False
    fields = model_section.to_dict()
    name = lookup(fields.pop("name")).name  # the full name, which vitjax.load checks
    shutil.rmtree(directory, ignore_errors=True)
    orbax_io.save(directory, jax.device_get(params), {"name": name, "overrides": fields, "source": "vitjax train"})
    return True

"""What a run records: `metrics.jsonl` (one JSON object per logged step) and TensorBoard scalars.

The JSON lines are the record that scripts and tests read: {"step": 100, "loss": 2.1, ...}. The
TensorBoard event files (under `tensorboard/`) are written with TensorFlow's own summary op and
the scalar plugin's metadata, so TensorBoard shows them, without the `tensorboard` package.

Only process 0 writes. A resumed run first drops the lines logged after its checkpoint: those steps
run again and are logged again, so the file holds each step once.
"""

from __future__ import annotations

import json
import os

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(workdir: str) -> list[dict]:
    """The logged lines of a run, in order."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
    def __init__(self, workdir: str, *, start_step: int, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self.tensorboard_dir = os.path.join(workdir, TENSORBOARD_DIR) if tensorboard else None
        self._summary_writer = None
        if enabled:
            self._drop_lines_after(start_step)

    def _drop_lines_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        kept = [line for line in read_metrics(os.path.dirname(self.path)) if line["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(line) + "\n" for line in kept)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        values = {name: float(value) for name, value in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tensorboard_dir:
            self._write_tensorboard(step, values)

    def _write_tensorboard(self, step: int, values: dict[str, float]) -> None:
        from vitjax.data.tf_env import import_tf

        tf = import_tf()
        if self._summary_writer is None:
            self._summary_writer = tf.summary.create_file_writer(self.tensorboard_dir)
        scalar = tf.compat.v1.SummaryMetadata(
            plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))
        with self._summary_writer.as_default():
            for name, value in values.items():
                tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=scalar)
        self._summary_writer.flush()

    def close(self) -> None:
        if self._summary_writer is not None:
            self._summary_writer.close()


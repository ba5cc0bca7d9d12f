"""Starting `vitjax train` in subprocesses, for the resume and multi-process tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

CONFIG = os.path.join(os.path.dirname(__file__), "configs", "tiny_synthetic.py")


def command(workdir, *options: str, config: str = CONFIG) -> list[str]:
    return [sys.executable, "-m", "vitjax.cli", "train", config, "--workdir", str(workdir), *options]


def sets(**values) -> list[str]:
    """--set options; a double underscore in a name stands for a dot (optimizer__base_lr)."""
    return [arg for key, value in values.items() for arg in ("--set", f"{key.replace('__', '.')}={value!r}")]


def environment(devices: int) -> dict[str, str]:
    """The environment of a process with `devices` simulated CPU devices."""
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "TF_CPP_MIN_LOG_LEVEL": "2"}


def start(args: list[str], devices: int) -> subprocess.Popen:
    return subprocess.Popen(args, env=environment(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]

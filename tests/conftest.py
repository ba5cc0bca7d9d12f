"""Test set-up: 8 simulated CPU devices for sharding tests, and the torchvision shim for timm."""

import importlib.util
import os
import sys

# Must happen before jax is imported anywhere: sharding tests need several CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

# timm and open_clip import torchvision at module level; it has no CPU build on the test machines.
if importlib.util.find_spec("torchvision") is None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "shims"))

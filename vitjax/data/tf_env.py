"""The one place where vitjax imports TensorFlow.

TensorFlow is only the input pipeline here (tf.data decodes, resizes and augments images on the
CPU); JAX owns the accelerators. So before TF is used, its GPUs are hidden (otherwise TF reserves
most of the GPU memory JAX needs) and its logs are quieted to errors only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile


@contextlib.contextmanager
def _stderr_held_back():
    """Hold back what C++ writes to stderr; replay it only if the block fails.

    TF 2.21 logs through absl before `absl::InitializeLog()`, where `TF_CPP_MIN_LOG_LEVEL` has no
    effect, so the only way to keep `import tensorflow` quiet is to catch file descriptor 2.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@functools.cache
def import_tf():
    """Return the `tensorflow` module with GPUs hidden from TF and its logs reduced to errors.

    Safe to call many times; the set-up runs once. A `TF_CPP_MIN_LOG_LEVEL` set by the user wins.
    """
    # Read by the C++ runtime at load time, for everything logged after absl is initialised.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_held_back():
        import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # TF's devices were initialised by other code before vitjax; they can no longer change.
        pass
    return tf

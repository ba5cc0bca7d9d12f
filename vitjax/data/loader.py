"""Deterministic, resumable, sharded batches from a Source, built with tf.data.

What `transform` receives
-------------------------
`transform(record) -> dict of tensors` is a TensorFlow function (it runs inside a tf.data `map`,
one example at a time). `record` is the source's decoded record ('image' uint8 (H, W, 3), 'index'
int64, and 'label', 'mask', 'boxes', 'box_labels' where the source has them; see
`vitjax.data.sources`) plus

    'seed'   int64 (2,)   = tf.random.experimental.stateless_fold_in([seed, epoch], index)

All of the transform's randomness must come from `record['seed']` through stateless ops
(`tf.random.stateless_*`, sub-seeds by `stateless_fold_in(record['seed'], tag)`), never from
stateful ones (`tf.random.uniform`, `tf.image.random_*`): then an example's augmentation is a pure
function of (run seed, example index, epoch), the same in a fresh run, a resumed run and on any
number of hosts. It returns the arrays of one example, each of a fixed shape (they are stacked into
batches), e.g. {'image': float32 (224, 224, 3), 'label': int64 ()}; a batch holds exactly what it
returns (plus 'valid' in eval batches).

What a batch is
---------------
Training: the split is read in its fixed order, shuffled per epoch with a seed derived from
(seed, epoch), and the epochs are concatenated; global batch s is elements [s*G, (s+1)*G) of that
stream (G = global_batch; batches run across epoch boundaries, nothing is dropped). So batches are
a pure function of (seed, step): `start_step=s` skips s*G encoded records (never decoded) and
yields exactly the batches s, s+1, ... of a run that was never interrupted.

Hosts: every process builds the same stream of *encoded* records, and process p of P decodes and
transforms only positions [p*L, (p+1)*L) of each global batch (L = G / P), so the global batch
is identical for any number of processes; `jax.make_array_from_process_local_data` then assembles
the global jax.Array. `local_train_dataset` / `local_eval_dataset` take (process_index,
process_count) explicitly, which is how tests check that 1 and 2 processes agree.

Evaluation: each example exactly once, in the split's order; the last global batch is padded with
copies of the first example, and 'valid' (bool) is False on those.

Shuffling uses tf.data's seeded shuffle buffer; vitjax never sets TensorFlow's global seed
(`tf.random.set_seed`), which would change every shuffle order (still deterministically).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import jax

from vitjax.data.sources import Source
from vitjax.data.tf_env import import_tf

tf = import_tf()

_MAX_EPOCHS = 2**62  # "forever": the training stream ends only when the caller stops


def example_seed(seed, epoch, index):
    """The per-example seed given to `transform`: int64 (2,), a pure function of its arguments."""
    pair = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(pair, tf.cast(index, tf.int64))


def _shuffle_seed(seed: int, epoch):
    """The shuffle seed of one epoch (an int64 scalar tensor)."""
    pair = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.stateless_uniform([], seed=pair, minval=None, maxval=None, dtype=tf.int64)


def _local_slice(stream: tf.data.Dataset, global_batch: int, process_index: int,
                 process_count: int) -> tf.data.Dataset:
    """Keep positions [p*L, (p+1)*L) of each run of `global_batch` elements (stream starts at a
    batch boundary)."""
    if global_batch % process_count:
        raise ValueError(f"global_batch={global_batch} must be a multiple of the number of "
                         f"processes ({process_count}).")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
    local = global_batch // process_count
    if process_count == 1:
        return stream
    mine = stream.enumerate().filter(lambda k, _: (k % global_batch) // local == process_index)
    return mine.map(lambda _, record: record)


def _finish(stream: tf.data.Dataset, source: Source, transform: Callable, local_batch: int,
            carry: tuple[str, ...] = ()) -> tf.data.Dataset:
    """Decode, transform and batch; `carry` names loader entries that bypass the transform."""
    def one(record):
        kept = {k: record.pop(k) for k in carry}
        return {**transform(source.decode(record)), **kept}

    options = tf.data.Options()
    options.deterministic = True
    return (stream.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
            .with_options(options))


def local_train_dataset(source: Source, *, transform: Callable, global_batch: int, seed: int,
                        start_step: int = 0, process_index: int = 0, process_count: int = 1,
                        shuffle_buffer: int | None = None) -> tf.data.Dataset:
    """This process's slice of every training batch from `start_step` on, as a tf.data.Dataset of
    dicts of (global_batch / process_count, ...) tensors. See the module docstring."""
    n = source.num_examples
    if n == 0:
        raise ValueError(f"{source} has no examples to train on.")
    if start_step < 0 or global_batch <= 0:
        raise ValueError(f"Need start_step >= 0 and global_batch > 0, got {start_step}, {global_batch}.")
    buffer = min(shuffle_buffer or source.shuffle_buffer, n)
    first_epoch, offset = divmod(start_step * global_batch, n)

    def epoch(e):
        shuffled = source.encoded().shuffle(buffer, seed=_shuffle_seed(seed, e),
                                            reshuffle_each_iteration=False)
        return shuffled.map(lambda record: {**record, "seed": example_seed(seed, e, record["index"])})

    stream = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(epoch).skip(offset)
    stream = _local_slice(stream, global_batch, process_index, process_count)
    return _finish(stream, source, transform, global_batch // process_count)


def local_eval_dataset(source: Source, *, transform: Callable, global_batch: int, seed: int = 0,
                       process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    """This process's slice of every evaluation batch: ceil(num_examples / global_batch) batches
    covering each example once, in order, the last padded ('valid' False on the padding)."""
    padding = -source.num_examples % global_batch

    def mark(valid):
        return lambda record: {**record, "valid": tf.constant(valid),
                               "seed": example_seed(seed, 0, record["index"])}

    stream = source.encoded().map(mark(True))
    if padding:
        stream = stream.concatenate(source.encoded().take(1).map(mark(False)).repeat(padding))
    stream = _local_slice(stream, global_batch, process_index, process_count)
    return _finish(stream, source, transform, global_batch // process_count, carry=("valid",))


def _global_arrays(batches: Iterator[dict], sharding) -> Iterator[dict]:
    """Local numpy batches -> global jax.Arrays (`sharding`: one Sharding, or one per key)."""
    for batch in batches:
        yield {key: jax.make_array_from_process_local_data(
            sharding[key] if isinstance(sharding, dict) else sharding, value)
            for key, value in batch.items()}


def train_batches(source: Source, *, transform: Callable, global_batch: int, seed: int,
                  start_step: int = 0, sharding, shuffle_buffer: int | None = None,
                  prefetch: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Training batches from `start_step` on, forever, as dicts of global jax.Arrays placed with
    `sharding` (e.g. NamedSharding(mesh, P('data'))), computed `prefetch` batches ahead in a
    background thread. `shuffle_buffer` defaults to the source's own suggestion."""
    local = local_train_dataset(source, transform=transform, global_batch=global_batch, seed=seed,
                                start_step=start_step, process_index=jax.process_index(),
                                process_count=jax.process_count(), shuffle_buffer=shuffle_buffer)
    return Prefetcher(_global_arrays(local.as_numpy_iterator(), sharding), prefetch)


def eval_batches(source: Source, *, transform: Callable, global_batch: int, sharding,
                 seed: int = 0, prefetch: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Evaluation batches (each example once, in order; last batch padded, see 'valid') as dicts
    of global jax.Arrays placed with `sharding`, prefetched in a background thread."""
    local = local_eval_dataset(source, transform=transform, global_batch=global_batch, seed=seed,
                               process_index=jax.process_index(), process_count=jax.process_count())
    return Prefetcher(_global_arrays(local.as_numpy_iterator(), sharding), prefetch)


class Prefetcher:
    """Iterates `items` in a background thread, staying up to `size` items ahead.

    An error in the thread is raised by `next`. `close()`, or dropping the Prefetcher, stops the
    thread (it holds no reference to the Prefetcher, so garbage collection can reach `__del__`).
    """

    def __init__(self, items: Iterator, size: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self._stop = threading.Event()
        self._done = False
        threading.Thread(target=_fill, args=(items, self._queue, self._stop), daemon=True).start()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._done = True

    def __del__(self):
        self.close()


_END = object()


def _fill(items: Iterator, out: queue.Queue, stop: threading.Event) -> None:
    """The Prefetcher's thread: put items (then _END, or the error raised) until `stop` is set."""
    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in items:
            if not put(item):
                return
        put(_END)
    except BaseException as error:  # handed to the consumer, which raises it
        put(error)

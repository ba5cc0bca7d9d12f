"""Where examples come from: a TFDS dataset by name and split, or a folder of images.

    source = open_source("vitjax_scenes/size64", "train")           # built here on first use
    source = open_source("imagenet2012", "validation", manual_dir="~/imagenet-tars")
    source = open_source("folder:/data/my_images")                  # class subfolders -> labels
    source.num_examples, source.num_classes, source.class_names, source.has_masks, source.has_boxes
    ds = source.records()          # tf.data.Dataset of decoded records, in the split's fixed order

Every source yields the same records (dicts of tf tensors):

    'image'      uint8 (H, W, 3)
    'label'      int64 ()            when the source has labels
    'mask'       uint8 (H, W)        instance ids: 0 background, k = the object of boxes[k - 1]
    'boxes'      float32 (n, 4)      [ymin, xmin, ymax, xmax] in [0, 1] (TFDS's convention)
    'box_labels' int64 (n,)
    'index'      int64 ()            the example's id within the split (unique, stable)

A source has two stages, so that the loader shuffles, skips and slices examples between hosts
before paying for decoding: `source.encoded()` is the ordered stream of cheap *encoded* records
(image bytes still compressed, or only a file path; opaque except for 'index' and 'label'), and
`source.decode(record)` (a tf function for a tf.data `map`) turns one into the record above.
`records()` is the two composed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vitjax.data.tf_env import import_tf

tf = import_tf()

FOLDER_PREFIX = "folder:"


class DataError(ValueError):
    """A dataset that cannot be opened as asked: unknown, not prepared, or holding bad files."""


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """One split of one dataset. Build it with `open_source`.

    `encoded()` returns a fresh tf.data.Dataset of encoded records in the split's fixed order
    (the same on every host and every run); `decode(record)` maps one to a decoded record.
    `shuffle_buffer` is the buffer that shuffles this source well at a sensible memory cost
    (all of it where encoded records are just file paths). `corrupt` lists the files that were
    skipped as unreadable (image folders opened with on_corrupt='skip').
    """

    name: str
    split: str | None
    num_examples: int
    class_names: tuple[str, ...]
    has_labels: bool
    has_masks: bool
    has_boxes: bool
    encoded: Callable[[], tf.data.Dataset]
    decode: Callable[[dict], dict]
    shuffle_buffer: int
    corrupt: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of label classes (0 for a source without labels)."""
        return len(self.class_names) if self.has_labels else 0

    def records(self) -> tf.data.Dataset:
        """Decoded records, in the split's fixed order."""
        return self.encoded().map(self.decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def __repr__(self) -> str:
        parts = [f"{self.num_examples} examples"]
        if self.has_labels:
            parts.append(f"{self.num_classes} classes")
        parts += [name for name, flag in (("masks", self.has_masks), ("boxes", self.has_boxes)) if flag]
        split = f"[{self.split}]" if self.split else ""
        return f"Source({self.name}{split}: {', '.join(parts)})"


def open_source(spec: str, split: str | None = None, *, data_dir: str | None = None,
                manual_dir: str | None = None, on_corrupt: str = "skip") -> Source:
    """Open one split of a dataset.

    Args:
      spec: a TFDS name with optional config and version ('imagenette', 'voc/2007', 'coco/2017',
        'davis', 'vitjax_scenes/size64', 'imagenet2012', any registered builder), or
        'folder:/path' for a folder of images (class subfolders, sorted by name, give the labels).
      split: a TFDS split, slices included ('train', 'validation', 'train[:10%]'). For a folder:
        None uses the folder itself; a name uses that subfolder (e.g. 'val' for /path/val).
      data_dir: where TFDS datasets are stored (TFDS's default, ~/tensorflow_datasets, if None).
      manual_dir: files downloaded by hand that a dataset is prepared from (ImageNet's tars, or
        the archives a dataset would otherwise download). vitjax itself never downloads.
      on_corrupt: image folders only: 'skip' leaves out unreadable images (listed in
        `source.corrupt` and in a warning); 'fail' raises an error naming them.
    """
    if on_corrupt not in ("skip", "fail"):
        raise ValueError(f"on_corrupt must be 'skip' or 'fail', got {on_corrupt!r}")
    if spec.startswith(FOLDER_PREFIX):
        from vitjax.data.folder_source import open_folder
        return open_folder(spec[len(FOLDER_PREFIX):], split, on_corrupt=on_corrupt)
    from vitjax.data.tfds_source import open_tfds
    return open_tfds(spec, split, data_dir=data_dir, manual_dir=manual_dir)

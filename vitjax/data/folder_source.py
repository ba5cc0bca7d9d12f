"""A folder of images as a source: 'folder:/path'.

Layout: either class subfolders (`/path/<class>/**/<image>`: classes sorted by name give labels
0..C-1, images sorted by path within each) or images directly in the folder (no labels). Images
are JPEG, PNG, BMP, GIF (first frame) or WebP, decoded to RGB as TensorFlow decodes them.

Every image is decoded once when the folder is opened, with the same TensorFlow decoder the
pipeline uses, so an unreadable file is found up front and named, never half way through a run
(that costs one decoding pass over the folder). Encoded records are just paths, so the loader can
shuffle the whole folder and skip or slice examples without reading a single file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from tqdm import tqdm

from vitjax.data.sources import DataError, Source
from vitjax.data.tf_env import import_tf

tf = import_tf()

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_LISTED = 10  # corrupt files named in a message; the rest are counted


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def decode_file(path):
    """Read and decode one image file to uint8 (H, W, 3)."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def find_corrupt(paths: list[str]) -> list[str]:
    """The paths TensorFlow cannot decode, in the order given (one parallel decoding pass)."""
    checked = (tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))
               .map(lambda p: (p, tf.shape(decode_file(p))[0]), num_parallel_calls=tf.data.AUTOTUNE)
               .ignore_errors())
    readable = set()
    for path, _ in tqdm(checked.as_numpy_iterator(), total=len(paths), desc="checking images",
                        unit="img", leave=False, disable=len(paths) < 1000):
        readable.add(path.decode())
    return [p for p in paths if p not in readable]


def _list_images(folder: Path) -> tuple[list[str], list[int], tuple[str, ...]]:
    """(paths, labels, class_names); labels and class names are empty for an unlabelled folder."""
    class_dirs = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: d.name)
    loose = sorted(str(p) for p in folder.iterdir() if _is_image(p))
    if class_dirs and loose:
        raise DataError(f"{folder} holds both class subfolders ({', '.join(d.name for d in class_dirs[:5])}"
                        f"...) and loose images ({loose[0]}, ...). Put every image in a class folder, "
                        "or use a folder without subfolders for unlabelled images.")
    if not class_dirs:
        if not loose:
            raise DataError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder}.")
        return loose, [], ()
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(str(p) for p in class_dir.rglob("*") if _is_image(p))
        if not files:
            raise DataError(f"Class folder {class_dir} has no images ({', '.join(IMAGE_SUFFIXES)}); "
                            "remove it or add its images.")
        paths += files
        labels += [label] * len(files)
    return paths, labels, tuple(d.name for d in class_dirs)


def open_folder(root: str, split: str | None, *, on_corrupt: str) -> Source:
    """The folder `root` (or its subfolder `split`) as a Source; see the module docstring."""
    folder = Path(root).expanduser()
    if split is not None:
        if not (folder / split).is_dir():
            raise DataError(f"{folder} has no subfolder {split!r} for split={split!r}; pass "
                            "split=None to use the folder itself.")
        folder = folder / split
    if not folder.is_dir():
        raise DataError(f"Image folder {folder} does not exist or is not a folder.")
    paths, labels, class_names = _list_images(folder)

    corrupt = find_corrupt(paths)
    if corrupt:
        listed = "\n  ".join(corrupt[:_LISTED]) + (f"\n  ... and {len(corrupt) - _LISTED} more"
                                                   if len(corrupt) > _LISTED else "")
        if on_corrupt == "fail":
            raise DataError(f"{len(corrupt)} image(s) in {folder} cannot be decoded:\n  {listed}\n"
                            "Fix or remove them, or open the folder with on_corrupt='skip'.")
        warnings.warn(f"Skipped {len(corrupt)} image(s) in {folder} that cannot be decoded "
                      f"(listed in source.corrupt):\n  {listed}", stacklevel=3)
        bad = set(corrupt)
        kept = [i for i, p in enumerate(paths) if p not in bad]
        paths = [paths[i] for i in kept]
        labels = [labels[i] for i in kept] if labels else []
        if not paths:
            raise DataError(f"None of the images in {folder} can be decoded.")

    has_labels = bool(class_names)
    columns = {"path": tf.constant(paths, tf.string), "index": tf.range(len(paths), dtype=tf.int64)}
    if has_labels:
        columns["label"] = tf.constant(labels, tf.int64)

    def encoded() -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(columns)

    def decode(record: dict) -> dict:
        record = dict(record)
        record["image"] = decode_file(record.pop("path"))
        return record

    return Source(name=f"folder:{folder}", split=split, num_examples=len(paths),
                  class_names=class_names, has_labels=has_labels, has_masks=False, has_boxes=False,
                  encoded=encoded, decode=decode, shuffle_buffer=len(paths), corrupt=tuple(corrupt))

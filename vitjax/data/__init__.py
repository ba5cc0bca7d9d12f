"""Datasets and input pipelines: TFDS and image-folder sources, exact preprocessing, the
procedural `vitjax_scenes` dataset, training augmentation and the sharded loaders."""

from vitjax.data import scenes  # noqa: F401  (registers the 'vitjax_scenes' TFDS builder)

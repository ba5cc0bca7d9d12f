"""vitjax.data.preprocess and vitjax.data.subsets against the originals' rules.

The oracle is torchvision's transforms written out with PIL and NumPy float64 (torchvision itself
has no CPU build here): `Resize(int)` = PIL `Image.resize` at torchvision's truncated size,
`CenterCrop` = Python's `round` offsets with zero padding, `ToTensor` + `Normalize` in float64.
Images are real photographs and graphics shipped with matplotlib, cut to several shapes.
"""

from __future__ import annotations

import dataclasses

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from vitjax.data import preprocess as pp
from vitjax.data import subsets
from vitjax.data.tf_env import import_tf
from vitjax.models.registry import lookup

tf = import_tf()

PIL_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}
ONE_LEVEL = 1 / 255  # PIL rounds each pass to uint8; the tolerance is one grey level


def _sample(name: str) -> np.ndarray:
    with Image.open(matplotlib.cbook.get_sample_data(name)) as image:
        return np.asarray(image.convert("RGB"))


HOPPER = _sample("grace_hopper.jpg")  # 600 x 512 photograph
IMAGES = {
    "portrait": HOPPER,
    "landscape": HOPPER[150:387],  # 237 x 512
    "odd": HOPPER[11:312, 13:470],  # 301 x 457
    "small": HOPPER[200:291, 150:283],  # 91 x 133: every target upsamples it
    "graphic": _sample("logo2.png"),  # 130 x 542, flat colours and sharp edges (overshoot)
    "square": _sample("Minduka_Present_Blue_Pack.png"),  # 128 x 128
}


# ---- the torchvision oracle ---------------------------------------------------------------------


def pil_resize(image: np.ndarray, size_wh, method: str) -> np.ndarray:
    """`Image.resize` as Pillow <= 12 does it (the versions the papers ran): width pass, then height.

    Pillow 13 may run the height pass first (python-pillow/Pillow#9549); resizing one axis at a
    time makes the oracle independent of that choice. Each single-axis call is one PIL pass.
    """
    pil = Image.fromarray(image)
    if method == "nearest":
        return np.asarray(pil.resize(size_wh, PIL_FILTERS[method]))
    pil = pil.resize((size_wh[0], pil.size[1]), PIL_FILTERS[method])
    return np.asarray(pil.resize(size_wh, PIL_FILTERS[method]))


def tv_resize(image: np.ndarray, size: int, method: str) -> np.ndarray:
    """torchvision `Resize(size)` on a PIL image."""
    h, w = image.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return pil_resize(image, (new_w, new_h), method)


def tv_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision `CenterCrop(size)`: zero-pad if too small, then `int(round(...))` offsets."""
    h, w = image.shape[:2]
    if size > h or size > w:
        ph, pw = max(size - h, 0), max(size - w, 0)
        pad = [(ph // 2, (ph + 1) // 2), (pw // 2, (pw + 1) // 2)] + [(0, 0)] * (image.ndim - 2)
        image = np.pad(image, pad)
        h, w = image.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image[top : top + size, left : left + size]


def tv_normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """`ToTensor` + `Normalize` in float64 (channels last)."""
    return (image.astype(np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)


def timm_eval(image: np.ndarray, recipe) -> np.ndarray:
    """timm `transforms_imagenet_eval(img_size=crop, crop_pct, interpolation, mean, std)`."""
    resized = tv_resize(image, int(np.floor(recipe.crop / recipe.crop_pct)), recipe.interpolation)
    return tv_normalize(tv_center_crop(resized, recipe.crop), recipe.mean, recipe.std)


def assert_within_one_level(ours, oracle, std):
    """Normalised images agree to one grey level (scaled back to [0, 1] units by std)."""
    ours = np.asarray(ours, np.float64)
    assert ours.shape == oracle.shape
    error = np.abs(ours - oracle) * np.asarray(std)
    assert error.max() <= ONE_LEVEL + 1e-6, f"max error {error.max() * 255:.3f} grey levels"


# ---- resizing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bicubic", "bilinear", "lanczos"])
@pytest.mark.parametrize("name", list(IMAGES))
@pytest.mark.parametrize("size", [256, 97])
def test_resize_shorter_matches_pil(name, size, method):
    image = IMAGES[name]
    expected = tv_resize(image, size, method).astype(int)
    ours = pp.resize_shorter(tf.constant(image), size, method).numpy().astype(int)
    assert ours.shape == expected.shape  # torchvision's truncated long side
    # PIL's own integer arithmetic, so PIL's very pixels (stricter than one grey level).
    np.testing.assert_array_equal(ours, expected)
    # Both sides scale alike here, so every Pillow version agrees on the pass order.
    direct = Image.fromarray(image).resize(expected.shape[1::-1], PIL_FILTERS[method])
    np.testing.assert_array_equal(ours, np.asarray(direct))


@pytest.mark.parametrize("shape", [(600, 512), (37, 300), (1000, 19), (256, 218), (7, 7)])
def test_nearest_picks_the_same_pixels_as_pil(shape):
    # Non-integer scales up and down, including ties where PIL's float accumulation decides.
    out = np.asarray(Image.fromarray(HOPPER).resize(shape[::-1], Image.Resampling.NEAREST))
    np.testing.assert_array_equal(pp.resize(tf.constant(HOPPER), shape, "nearest").numpy(), out)
    mask = HOPPER[..., 0]
    out = np.asarray(Image.fromarray(mask).resize(shape[::-1], Image.Resampling.NEAREST))
    np.testing.assert_array_equal(pp.resize(tf.constant(mask), shape, "nearest").numpy(), out)


def test_resize_to_the_same_size_is_identity_and_one_axis_touches_one_axis():
    image = IMAGES["odd"]
    np.testing.assert_array_equal(pp.resize(image, image.shape[:2], "lanczos").numpy(), image)
    # Only the width changes: PIL does one horizontal pass; rows stay independent.
    expected = pil_resize(image, (200, image.shape[0]), "bicubic")
    np.testing.assert_array_equal(pp.resize(image, (image.shape[0], 200), "bicubic").numpy(), expected)


@pytest.mark.parametrize("method", ["bicubic", "bilinear", "lanczos", "nearest"])
def test_resize_in_graph_mode_with_unknown_shapes(method):
    image = IMAGES["small"]
    signature = [tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((2,), tf.int32)]
    graph = tf.function(lambda image, size: pp.resize(image, size, method), input_signature=signature)
    for size in ((40, 300), (91, 50)):
        expected = pil_resize(image, size[::-1], method)
        np.testing.assert_array_equal(graph(image, tf.constant(size)).numpy(), expected)


def test_resize_refuses_floats_and_unknown_methods():
    with pytest.raises(TypeError, match="uint8"):
        pp.resize(tf.zeros((4, 4, 3)), (2, 2))
    with pytest.raises(ValueError, match="bicubic"):
        pp.resize(tf.zeros((4, 4, 3), tf.uint8), (2, 2), "area")


# ---- cropping, normalising, padding --------------------------------------------------------------


@pytest.mark.parametrize("shape", [(9, 12), (10, 13), (11, 11), (12, 15), (5, 8), (3, 14)])
def test_center_crop_offsets_and_padding_match_torchvision(shape):
    # Odd surpluses give x.5 offsets, which Python rounds half to even (1.5 -> 2, 2.5 -> 2);
    # crops larger than a side pad it with zeros as torchvision does.
    image = np.arange(np.prod(shape) * 3, dtype=np.int32).reshape(*shape, 3) % 251 + 1
    for size in (4, 6, 7):
        np.testing.assert_array_equal(pp.center_crop(tf.constant(image), size).numpy(),
                                      tv_center_crop(image, size))


def test_normalize_is_totensor_then_normalize():
    image = IMAGES["small"]
    recipe = lookup("vit_base_patch16_clip_224.openai").preprocess
    ours = pp.normalize(tf.constant(image), recipe.mean, recipe.std).numpy()
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, tv_normalize(image, recipe.mean, recipe.std), rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(237, 512), (16, 16), (1, 31), (301, 457)])
def test_pad_to_multiple_is_losts_zero_padding(shape):
    # LOST main_lost.py: torch.zeros of the ceil-multiple size, image pasted top-left, after
    # normalisation (so the padding is 0 in model units).
    image = HOPPER[: shape[0], : shape[1]]
    normalised = tv_normalize(image, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).astype(np.float32)
    padded = np.zeros((int(np.ceil(shape[0] / 16) * 16), int(np.ceil(shape[1] / 16) * 16), 3), np.float32)
    padded[: shape[0], : shape[1]] = normalised
    ours = pp.pad_to_multiple(pp.normalize(image, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), 16).numpy()
    np.testing.assert_allclose(ours, padded, rtol=0, atol=1e-5)
    assert ours.shape == padded.shape and not np.any(ours[shape[0]:]) and not np.any(ours[:, shape[1]:])


@pytest.mark.parametrize("name", ["portrait", "landscape", "odd", "small", "graphic", "square"])
def test_resize_longer_and_pad_matches_teaching_matters_spair(name):
    # vit_analysis run_kp_analysis.py::resize, written out with PIL and a NumPy canvas.
    image, size = IMAGES[name], 224
    h, w = image.shape[:2]
    canvas = np.zeros((size, size, 3), np.uint8)
    if h <= w:
        resized = pil_resize(image, (size, int(np.around(size * h / w))), "lanczos")
        new_h = resized.shape[0]
        canvas[(size - new_h) // 2 : (size + new_h) // 2] = resized
    else:
        resized = pil_resize(image, (int(np.around(size * w / h)), size), "lanczos")
        new_w = resized.shape[1]
        canvas[:, (size - new_w) // 2 : (size + new_w) // 2] = resized
    pasted = np.zeros((size, size), bool)
    top, left = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    pasted[top : top + resized.shape[0], left : left + resized.shape[1]] = True
    ours = pp.resize_longer_and_pad(tf.constant(image), size).numpy()
    np.testing.assert_array_equal(ours, canvas)
    assert not np.any(ours[~pasted])  # the padding is exactly black, on the original's side


# ---- whole eval transforms ------------------------------------------------------------------------


RECIPES = [
    "deit_small_patch16_224.fb_in1k",  # crop_pct 0.875, bicubic, ImageNet statistics
    "vit_small_patch16_224.augreg_in21k_ft_in1k",  # crop_pct 0.9, mean/std 0.5
    "beit_base_patch16_224.in22k_ft_in22k_in1k",  # BEiT: 0.9, mean/std 0.5
    "vit_base_patch16_clip_224.openai",  # crop_pct 1.0, CLIP statistics
    "resnet50.tv_in1k",  # bilinear
    "resnet50.a1_in1k",  # crop_pct 0.95
]


@pytest.mark.parametrize("model", RECIPES)
@pytest.mark.parametrize("name", ["portrait", "landscape", "small", "graphic"])
def test_eval_transform_matches_timm(model, name):
    recipe = lookup(model).preprocess
    ours = pp.eval_transform(recipe)(tf.constant(IMAGES[name])).numpy()
    assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
    assert_within_one_level(ours, timm_eval(IMAGES[name], recipe), recipe.std)


def test_eval_transform_at_another_image_size_scales_the_resize():
    recipe = lookup("deit_small_patch16_224.fb_in1k").preprocess
    ours = pp.eval_transform(recipe, image_size=96)(tf.constant(IMAGES["odd"])).numpy()
    expected = timm_eval(IMAGES["odd"], dataclasses.replace(recipe, crop=96))  # resize int(96 / 0.875) = 109
    assert ours.shape == (96, 96, 3)
    assert_within_one_level(ours, expected, recipe.std)


TEACHING_MATTERS = ["dino_vits16", "vit_base_patch16_clip_224.openai", "beit_base_patch16_224.in22k_ft_in22k_in1k"]


@pytest.mark.parametrize("model", TEACHING_MATTERS)
def test_teaching_matters_transform(model):
    # meta_utils/preproc.py::standard_transform: Resize(224, BICUBIC), CenterCrop(224), the
    # model's own mean/std, whatever the model's own crop_pct is.
    recipe = lookup(model).preprocess
    image = IMAGES["odd"]
    expected = tv_normalize(tv_center_crop(tv_resize(image, 224, "bicubic"), 224), recipe.mean, recipe.std)
    ours = pp.teaching_matters_transform(recipe)(tf.constant(image)).numpy()
    assert_within_one_level(ours, expected, recipe.std)


def test_cl_vs_mim_transform_is_timm_0_5_defaults():
    # timm 0.5.4 transforms_imagenet_eval(img_size=224, mean, std): crop_pct 0.875, bilinear.
    recipe = pp.CL_VS_MIM_PREPROCESS
    image = IMAGES["landscape"]
    resized = pil_resize(image, (int(256 * 512 / 237), 256), "bilinear")
    expected = tv_normalize(tv_center_crop(resized, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert_within_one_level(pp.eval_transform(recipe)(tf.constant(image)).numpy(), expected, recipe.std)


def test_eval_transform_runs_in_tf_data_with_unknown_shapes():
    recipe = lookup("vit_small_patch16_224.augreg_in21k_ft_in1k").preprocess
    names = ["portrait", "landscape", "small"]
    dataset = tf.data.Dataset.from_generator(
        lambda: (IMAGES[n] for n in names), output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    ).map(pp.eval_transform(recipe)).batch(3)
    batch = next(iter(dataset)).numpy()
    assert dataset.element_spec.shape.as_list() == [None, 224, 224, 3]
    for image, name in zip(batch, names):
        assert_within_one_level(image, timm_eval(IMAGES[name], recipe), recipe.std)


def test_lost_and_spair_compose_in_tf_data():
    recipe = lookup("dino_vits16").preprocess
    lost = tf.data.Dataset.from_generator(
        lambda: iter([IMAGES["odd"]]), output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    ).map(lambda image: pp.pad_to_multiple(pp.normalize(image, recipe.mean, recipe.std), 16))
    assert next(iter(lost)).shape == (304, 464, 3)
    spair = tf.data.Dataset.from_generator(
        lambda: iter([IMAGES["graphic"]]), output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    ).map(lambda image: pp.resize_longer_and_pad(image, 224))
    assert next(iter(spair)).shape == (224, 224, 3)


# ---- subsets ---------------------------------------------------------------------------------------


def test_imagenet50_files_first_hundred_sorted_names(tmp_path):
    rng = np.random.default_rng(0)
    expected = []
    for label, wnid in enumerate(sorted(subsets.IMAGENET_50)):
        # A few full classes (more than 100 files) and small ones, to keep the test quick.
        count = 103 if label in (0, 17, 49) else 3
        numbers = rng.permutation(np.arange(1, 140))[:count]  # unpadded numbers: '10' sorts before '9'
        names = [f"{wnid}_{n}.JPEG" for n in numbers]
        (tmp_path / wnid).mkdir()
        for name in names:  # created in random order
            (tmp_path / wnid / name).touch()
        expected += [(str(tmp_path / wnid / name), label) for name in sorted(names)[:100]]
    (tmp_path / "n01440764").mkdir()  # tench: a class outside ImageNet-50
    (tmp_path / "n01440764" / "n01440764_1.JPEG").touch()
    # A non-image among the first 100 names is dropped after the cut, as in their code.
    first = sorted(subsets.IMAGENET_50)[0]
    (tmp_path / first / "README.txt").touch()  # 'R' < 'n': sorts first
    expected.remove(max((e for e in expected if e[1] == 0), key=lambda e: e[0]))

    files = subsets.imagenet50_files(str(tmp_path))
    assert len(subsets.IMAGENET_50) == 50 and len(set(subsets.IMAGENET_50)) == 50
    assert files == expected and len(files) == 99 + 100 + 100 + 47 * 3
    assert {label for _, label in files} == set(range(50))


def test_imagenet50_files_names_missing_classes(tmp_path):
    (tmp_path / subsets.IMAGENET_50[0]).mkdir()
    (tmp_path / subsets.IMAGENET_50[0] / "a.JPEG").touch()
    with pytest.raises(FileNotFoundError, match=f"49 of its classes: {subsets.IMAGENET_50[1]}"):
        subsets.imagenet50_files(str(tmp_path))


def test_subsample_by_hand():
    # Classes in order of first appearance; the first int(count * ratio) of each, in order.
    labels = [1, 1, 0, 1, 0, 0, 0, 1, 2]
    assert subsets.subsample(labels, ratio=0.5) == [0, 1, 2, 4]  # class 2 has int(0.5) = 0
    # ImageFolder order with Imagenette-like class sizes: 387 // 64 = 6, 357 // 64 = 5, 419 // 64 = 6.
    counts = [387, 357, 419]
    labels = np.repeat(np.arange(3), counts)
    expected = [0, 1, 2, 3, 4, 5] + [387, 388, 389, 390, 391] + [744, 745, 746, 747, 748, 749]
    assert subsets.subsample(labels) == expected

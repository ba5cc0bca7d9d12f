"""vitjax.models.posemb against its oracles: torch's F.interpolate and timm's rel-pos resize."""

import importlib.util
import itertools
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from vitjax.models.posemb import Resample, resample_grid, resample_posemb, resize_rel_pos_bias_table

GRIDS = [((14, 14), (16, 16)), ((14, 14), (10, 10)), ((37, 37), (16, 16)), ((7, 5), (9, 11)),
         ((4, 4), (6, 6)), ((6, 6), (4, 4)), ((16, 16), (37, 37)), ((5, 7), (3, 12))]
METHODS = [Resample(mode, aa, offset) for mode, aa, offset in
           itertools.product(("bicubic", "bilinear"), (False, True), (None, 0.1))]


def _torch_interpolate(grid, new_size, method):
    """The oracle: torch's F.interpolate on an NHWC grid, called the way the sources call it."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(grid).permute(0, 3, 1, 2)
    (gh, gw), (nh, nw) = grid.shape[1:3], new_size
    if method.offset is None:
        kw = dict(size=new_size)
    else:
        kw = dict(scale_factor=((nh + method.offset) / gh, (nw + method.offset) / gw))
    out = torch.nn.functional.interpolate(
        x, mode=method.mode, antialias=method.antialias, align_corners=False, **kw)
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("method", METHODS, ids=str)
@pytest.mark.parametrize("old,new", GRIDS, ids=str)
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)], ids=["f32", "f64"])
def test_matches_torch_interpolate(old, new, method, dtype, tol):
    grid = np.random.default_rng(0).standard_normal((2, *old, 24)).astype(dtype)
    expected = _torch_interpolate(grid, new, method)
    with jax.enable_x64(dtype == np.float64):
        out = resample_grid(grid, new, method)
        assert out.dtype == dtype
    assert out.shape == expected.shape
    np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=tol)


@pytest.mark.parametrize("method", [m for m in METHODS if m.offset is not None], ids=str)
@pytest.mark.parametrize("old,new", [((14, 14), (14, 14)), ((14, 9), (14, 12))], ids=str)
def test_offset_at_same_size_matches_torch(method, old, new):
    """With an offset, plain bicubic still resamples an axis of unchanged size; the others copy it."""
    grid = np.random.default_rng(1).standard_normal((1, *old, 8)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(resample_grid(grid, new, method)),
                               _torch_interpolate(grid, new, method), rtol=0, atol=1e-5)


def test_same_size_without_offset_is_identity():
    grid = jax.numpy.asarray(np.random.default_rng(2).standard_normal((1, 14, 14, 8)), np.float32)
    assert resample_grid(grid, (14, 14), Resample()) is grid


def test_offset_that_misses_the_size_raises():
    grid = np.zeros((1, 14, 14, 4), np.float32)
    with pytest.raises(ValueError, match="scale_factor"):
        resample_grid(grid, (16, 16), Resample(offset=1.2))  # floor(17.2) = 17 != 16


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="mode"):
        resample_grid(np.zeros((1, 4, 4, 2), np.float32), (4, 4), Resample(mode="nearest"))


def test_jit_matches_eager():
    grid = np.random.default_rng(3).standard_normal((1, 14, 14, 16)).astype(np.float32)
    method = Resample("bicubic", antialias=True, offset=0.1)
    jitted = jax.jit(resample_grid, static_argnums=(1, 2))(grid, (16, 16), method)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(resample_grid(grid, (16, 16), method)),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jitted), _torch_interpolate(grid, (16, 16), method),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_prefix", [0, 1, 5])
def test_resample_posemb_keeps_prefix(num_prefix):
    rng = np.random.default_rng(4)
    posemb = rng.standard_normal((1, num_prefix + 7 * 5, 12)).astype(np.float32)
    method = Resample("bicubic")
    out = np.asarray(resample_posemb(posemb, num_prefix, (7, 5), (9, 11), method))
    assert out.shape == (1, num_prefix + 9 * 11, 12)
    np.testing.assert_array_equal(out[:, :num_prefix], posemb[:, :num_prefix])
    grid = posemb[:, num_prefix:].reshape(1, 7, 5, 12)
    np.testing.assert_allclose(out[:, num_prefix:].reshape(1, 9, 11, 12),
                               _torch_interpolate(grid, (9, 11), method), rtol=0, atol=1e-5)


def test_resample_posemb_rejects_wrong_length():
    with pytest.raises(ValueError):
        resample_posemb(np.zeros((1, 1 + 15, 4), np.float32), 1, (4, 4), (6, 6), Resample())


def _timm_resize():
    """timm's own resize; timm imports torchvision, which tests/shims stands in for."""
    pytest.importorskip("torch")
    if importlib.util.find_spec("torchvision") is None:
        sys.path.insert(0, str(Path(__file__).parent / "shims"))
    return pytest.importorskip("timm.layers.pos_embed_rel").resize_rel_pos_bias_table


@pytest.mark.parametrize("old,new", [((4, 4), (6, 6)), ((14, 14), (24, 24)), ((14, 14), (7, 7)),
                                     ((4, 5), (6, 7)), ((4, 4), (4, 6))], ids=str)
def test_rel_pos_bias_table_matches_timm(old, new):
    torch = pytest.importorskip("torch")
    timm_resize = _timm_resize()
    heads = 6
    rows = (2 * old[0] - 1) * (2 * old[1] - 1) + 3
    table = np.random.default_rng(5).standard_normal((rows, heads)).astype(np.float32)
    new_shape = ((2 * new[0] - 1) * (2 * new[1] - 1) + 3, heads)
    expected = timm_resize(torch.from_numpy(table), new_window_size=new, new_bias_shape=new_shape,
                           old_window_size=old).numpy()
    out = resize_rel_pos_bias_table(table, old, new)
    assert out.shape == expected.shape and out.dtype == table.dtype
    np.testing.assert_array_equal(out[-3:], table[-3:])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_rel_pos_bias_table_same_grid_is_unchanged():
    table = np.arange(7 * 7 + 3, dtype=np.float32).reshape(-1, 1)
    assert resize_rel_pos_bias_table(table, (4, 4), (4, 4)) is table

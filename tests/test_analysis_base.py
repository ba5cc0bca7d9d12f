"""The bounded Buffer that analyses needing all features keep, and the report's JSON conversion."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.analysis.base import Buffer
from vitjax.report.html import Figure, to_json, write_report


def test_buffer_keeps_valid_rows_in_order_up_to_capacity():
    buffer = Buffer(capacity=5, shape=(2,))
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    valid = np.array([True, False, True, True, False, True])
    state = jax.jit(buffer.append)(buffer.init(), rows, valid)
    np.testing.assert_array_equal(Buffer.rows(state), rows[valid])
    state = buffer.append(state, rows + 100, np.ones(6, bool))  # only one slot left
    np.testing.assert_array_equal(Buffer.rows(state), np.concatenate([rows[valid], rows[:1] + 100]))


def test_buffer_merge_equals_appending_the_concatenation():
    buffer = Buffer(capacity=7, shape=(3,))
    a, b = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    va, vb = np.array([1, 1, 0, 1], bool), np.array([0, 1, 1, 1], bool)
    merged = buffer.merge(buffer.append(buffer.init(), a, va), buffer.append(buffer.init(), b, vb))
    whole = buffer.append(buffer.init(), np.concatenate([a, b]), np.concatenate([va, vb]))
    np.testing.assert_array_equal(Buffer.rows(merged), Buffer.rows(whole))
    assert int(merged["count"]) == 6


def test_report_writes_json_with_nonfinite_as_null_and_every_figure(tmp_path):
    metrics = {"m": {"curve": jnp.array([1.0, jnp.nan]), "n": np.int64(3), "x": math.inf}}
    index = write_report(tmp_path, "t", metrics, [Figure("a.png", "caption <a>", "attention")])
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"m": {"curve": [1.0, None], "n": 3, "x": None}}
    page = index.read_text()
    assert "a.png" in page and "caption &lt;a&gt;" in page and "<h2>attention</h2>" in page
    assert to_json((np.float32(2.5),)) == [2.5]


def test_every_registered_analysis_inits_under_jit_as_eagerly():
    """The protocol says init is pure and jittable: for every analysis, its state built inside
    jax.jit equals the eager one (a ViT with a class token, so every analysis can run)."""
    import vitjax
    from vitjax.analysis import registry
    from vitjax.analysis.base import PairAnalysis

    model, params = vitjax.create_model("vit_scenes_patch8_64", key=jax.random.key(0))
    images = jnp.zeros((2, 64, 64, 3))
    for name, cls in registry.ANALYSES.items():
        analysis = cls()
        spec = jax.eval_shape(lambda p, x, a=analysis: model.apply({"params": p}, x, capture=tuple(a.taps) or "tokens"),
                              params, images)
        specs = (spec, spec) if isinstance(analysis, PairAnalysis) else (spec,)
        eager, traced = analysis.init(*specs), jax.jit(lambda a=analysis: a.init(*specs))()
        assert jax.tree.structure(eager) == jax.tree.structure(traced), name
        for x, y in zip(jax.tree.leaves(eager), jax.tree.leaves(traced)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


def test_saved_figures_wrap_long_titles_inside_the_image(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitjax.report.html import save_figure

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1])
    ax.set_title("vit_scenes_patch8_64_attention_distance_units_pixels: attention distance (pixels)")
    save_figure(fig, tmp_path, "long.png", "caption", "attention")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    box = ax.title.get_window_extent(FigureCanvasAgg(fig).get_renderer())  # the saved layout (fig is closed)
    assert "\n" in ax.title.get_text()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox)


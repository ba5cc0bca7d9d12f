"""Feature analyses (CKA, Fourier, feature variance, singular values, token similarity) against
float64 NumPy implementations of the papers' formulas written here, on small random features;
streaming, sharding and invalid rows; a tiny ViT and a tiny ResNet under jit; the figures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vitjax
from vitjax.analysis.similarity import CKA, CKABetween
from vitjax.analysis.spectral import FeatureVariance, Fourier, SingularValues, TokenSimilarity
from vitjax.capture import Output, TokenLayout
from vitjax.models.resnet import ResNet, ResNetConfig
from vitjax.parallel import batch_sharding, make_mesh
from vitjax.report import figures_features

RNG = np.random.default_rng(0)
WITH_REGISTERS = TokenLayout(1, 0, 2, (4, 4), (8, 8))  # [cls][reg][reg][16 patches]


@pytest.fixture(autouse=True)
def fresh_rng():
    """Every test draws from RNG as if it ran first, so its data does not depend on test order
    (xdist's split or -k); a test run alone sees what it sees in the suite."""
    global RNG
    RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- fake outputs and the runner


def make_output(layers: list[dict], layout: TokenLayout) -> Output:
    first = next(iter(layers[0].values()))
    return Output(jnp.zeros((first.shape[0], 1)), jnp.asarray(first), None, None,
                  tuple({k: jnp.asarray(v) for k, v in layer.items()} for layer in layers), layout)


def rows(tree, start, stop):
    return jax.tree_util.tree_map(lambda x: x[start:stop], tree)


_JITTED = {}


def jitted_update(analysis):
    """One jitted update per analysis (options are hashable), so equal shapes compile once."""
    return _JITTED.setdefault(analysis, jax.jit(analysis.update))


def run(analysis, outputs, valid, splits=None):
    """Init, then one jitted update per slice of the batch axis at `splits`, then finalize.
    `outputs` is one Output, or a tuple (a, b) for a pair analysis."""
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    state = analysis.init(*jax.eval_shape(lambda: outputs))
    bounds = [0, *(splits or []), len(valid)]
    update = jitted_update(analysis)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        batch = {"valid": jnp.asarray(valid[start:stop])}
        state = update(state, *rows(outputs, start, stop), batch)
    return analysis.finalize(state), state


def assert_metrics_close(a: dict, b: dict, rtol=1e-6, atol=1e-7):
    assert a.keys() == b.keys()
    for key in a:
        if np.asarray(a[key]).dtype.kind in "fc":
            np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------- CKA oracles (Teaching Matters' loop)


def tm_hsic(K, L):
    """Teaching Matters' `_HSIC`: the unbiased estimator with explicit ones vectors."""
    n = K.shape[0]
    ones = np.ones((n, 1))
    result = np.trace(K @ L)
    result += (ones.T @ K @ ones @ ones.T @ L @ ones).item() / ((n - 1) * (n - 2))
    result -= (ones.T @ K @ L @ ones).item() * 2 / (n - 2)
    return result / (n * (n - 3))


def tm_kernel(X, scaled):
    X = X.reshape(X.shape[0], -1).astype(np.float64)
    K = X @ X.T
    if scaled:
        K = K - K.min()
        K = K / K.max()
    np.fill_diagonal(K, 0.0)
    return K


def tm_cka(features_a, features_b, n=8, scaled=True):
    """CKA matrix between two lists of (B, ...) features: HSIC terms averaged over batches of n
    before the ratio, as `cka_main.CKA.compare` accumulates them."""
    batches = len(features_a[0]) // n
    h = np.zeros((len(features_a), len(features_b), 3))
    for b in range(batches):
        part = slice(b * n, (b + 1) * n)
        for i, fa in enumerate(features_a):
            K = tm_kernel(fa[part], scaled)
            h[i, :, 0] += tm_hsic(K, K) / batches
            for j, fb in enumerate(features_b):
                L = tm_kernel(fb[part], scaled)
                h[i, j, 1] += tm_hsic(K, L) / batches
                h[i, j, 2] += tm_hsic(L, L) / batches
    return h[:, :, 1] / (np.sqrt(h[:, :, 0]) * np.sqrt(h[:, :, 2]))


def random_blocks(batch, blocks, taps, layout, width=6, shift=0.5):
    tokens = layout.num_tokens
    return [{tap: (RNG.normal(size=(batch, tokens, width)) + shift).astype(np.float32) for tap in taps}
            for _ in range(blocks)]


def poison(layers, valid):
    """Invalid rows set to NaN: an analysis that lets them in fails loudly."""
    for layer in layers:
        for value in layer.values():
            value[~valid] = np.nan
    return layers


TOKEN_SLICES = {"all": slice(None), "cls": slice(0, 1), "patches": slice(3, None)}  # WITH_REGISTERS has 3 prefix


@pytest.mark.parametrize("estimator", ["teaching_matters", "linear"])
@pytest.mark.parametrize("tokens", ["all", "cls", "patches"])
def test_cka_matches_teaching_matters_loop(tokens, estimator):
    valid = np.arange(32) < 27  # minibatches 0-2 complete, the 4th holds padding: skipped
    layers = poison(random_blocks(32, 3, ("norm1", "norm2"), WITH_REGISTERS), valid)
    metrics, _ = run(CKA(tokens=tokens, estimator=estimator), make_output(layers, WITH_REGISTERS), valid, [16])
    features = [layer[tap][:24, TOKEN_SLICES[tokens]] for layer in layers for tap in ("norm1", "norm2")]
    expected = tm_cka(features, features, scaled=estimator == "teaching_matters")
    np.testing.assert_allclose(metrics["cka"], expected, rtol=2e-5, atol=2e-6)
    assert int(metrics["minibatches"]) == 3
    assert list(metrics["layers"]) == ["0.norm1", "0.norm2", "1.norm1", "1.norm2", "2.norm1", "2.norm2"]


def test_min_max_scaling_reweights_minibatches_but_keeps_one_minibatch_cka():
    layers = random_blocks(16, 2, ("tokens",), WITH_REGISTERS)
    layers[1]["tokens"][8:] *= 30  # the second minibatch has a much larger kernel
    output = make_output(layers, WITH_REGISTERS)
    one = np.arange(16) < 8
    tm_one, _ = run(CKA(taps=("tokens",)), output, one)
    linear_one, _ = run(CKA(taps=("tokens",), estimator="linear"), output, one)
    # atol too: a near-zero CKA (0.0017 in one draw) differs between the two float32 estimators
    # by a few 1e-6.
    np.testing.assert_allclose(tm_one["cka"], linear_one["cka"], rtol=1e-5, atol=1e-5)
    tm_two, _ = run(CKA(taps=("tokens",)), output, np.ones(16, bool))
    linear_two, _ = run(CKA(taps=("tokens",), estimator="linear"), output, np.ones(16, bool))
    assert abs(tm_two["cka"][0, 1] - linear_two["cka"][0, 1]) > 1e-3


@pytest.mark.parametrize("estimator", ["teaching_matters", "linear"])
def test_cka_is_one_under_orthogonal_transforms_and_isotropic_scaling(estimator):
    x = (RNG.normal(size=(24, 7, 6)) + 0.3).astype(np.float32)
    q, _ = np.linalg.qr(RNG.normal(size=(6, 6)))
    unrelated = RNG.normal(size=x.shape).astype(np.float32)
    layers = [{"tokens": x}, {"tokens": (3.5 * x @ q).astype(np.float32)}, {"tokens": unrelated}]
    layout = TokenLayout(1, 0, 0, (2, 3), (1, 1))
    metrics, _ = run(CKA(taps=("tokens",), estimator=estimator), make_output(layers, layout), np.ones(24, bool))
    np.testing.assert_allclose(np.diag(metrics["cka"]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(metrics["cka"][0, 1], 1.0, rtol=1e-5)
    assert metrics["cka"][0, 2] < 0.9  # the property could fail: unrelated features are not similar


def test_cka_streaming_batches_merge_and_eight_devices_equal_one_update():
    valid = np.arange(64) < 60
    layers = poison(random_blocks(64, 2, ("norm1", "norm2"), WITH_REGISTERS), valid)
    output = make_output(layers, WITH_REGISTERS)
    analysis = CKA()
    whole, _ = run(analysis, output, valid)
    for splits in ([8, 16, 24, 32, 40, 48, 56], [16, 32, 48]):  # runner batches of 8 and 16
        assert_metrics_close(run(analysis, output, valid, splits)[0], whole)
    _, first = run(analysis, rows(output, 0, 32), valid[:32])
    _, second = run(analysis, rows(output, 32, 64), valid[32:])
    assert_metrics_close(analysis.finalize(analysis.merge(first, second)), whole)
    sharding = batch_sharding(make_mesh())
    assert len(sharding.mesh.devices.ravel()) == 8
    sharded = jax.device_put((output, {"valid": jnp.asarray(valid)}), sharding)
    state = jitted_update(analysis)(analysis.init(jax.eval_shape(lambda: output)), *sharded)
    assert_metrics_close(analysis.finalize(state), whole)


def test_cka_rejects_batches_that_minibatches_do_not_tile_and_missing_class_tokens():
    output = make_output(random_blocks(12, 1, ("norm1", "norm2"), WITH_REGISTERS), WITH_REGISTERS)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        run(CKA(), output, np.ones(12, bool))
    no_class = TokenLayout(0, 0, 0, (4, 4), (8, 8))
    with pytest.raises(ValueError, match="class token"):
        CKA(tokens="cls").init(make_output(random_blocks(8, 1, ("norm1", "norm2"), no_class), no_class))
    with pytest.raises(ValueError, match="taps"):
        CKA(taps=("attn",))


def test_cka_between_a_vit_and_a_resnet_like_model():
    valid = np.arange(24) < 20
    vit = poison(random_blocks(24, 2, ("tokens",), WITH_REGISTERS), valid)
    stages = poison([{"tokens": RNG.normal(size=(24, n, d)).astype(np.float32)} for n, d in ((16, 4), (4, 8))], valid)
    resnet_layout = TokenLayout(0, 0, 0, (2, 2), (16, 16))
    pair = (make_output(vit, WITH_REGISTERS), make_output(stages, resnet_layout))
    metrics, _ = run(CKABetween(taps=("tokens",), tokens="patches"), pair, valid, [8])
    expected = tm_cka([b["tokens"][:16, 3:] for b in vit], [s["tokens"][:16] for s in stages])
    np.testing.assert_allclose(metrics["cka"], expected, rtol=2e-5, atol=2e-6)
    assert metrics["cka"].shape == (2, 2) and list(metrics["layers_b"]) == ["0.tokens", "1.tokens"]
    within, _ = run(CKA(taps=("tokens",)), pair[0], valid)
    between, _ = run(CKABetween(taps=("tokens",)), (pair[0], pair[0]), valid)
    np.testing.assert_allclose(between["cka"], within["cka"], rtol=1e-6)


# ---------------------------------------------------------------- Park & Kim oracles


def pk_fourier(latent, prefix, grid):
    """fourier_analysis.ipynb on one latent (B, N, C): drop the prefix, b c h w, log(|fft2| + 1e-6),
    roll by (h/2, w/2), mean over batch and channels, half-diagonal from the centre, minus DC.
    Square grids use `.diag()[h//2:]` literally; non-square ones step along both axes from the centre."""
    h, w = grid
    x = latent[:, prefix:].astype(np.float64).reshape(len(latent), h, w, -1).transpose(0, 3, 1, 2)
    f = np.log(np.abs(np.fft.fft2(x)) + 1e-6)
    f = np.roll(f, (int(h / 2), int(w / 2)), axis=(2, 3)).mean(axis=(0, 1))
    if h == w:
        curve = f.diagonal()[int(h / 2):]
    else:
        curve = np.array([f[h // 2 + t, w // 2 + t] for t in range(min(h - h // 2, w - w // 2))])
    return curve - curve[0]


def pk_variance(latent, prefix, grid):
    """featuremap_variance.ipynb: torch's (unbiased) var over (h, w), then mean over batch and channels."""
    x = latent[:, prefix:].astype(np.float64).reshape(len(latent), *grid, -1)
    return x.var(axis=(1, 2), ddof=1).mean()


def residual_stream(batch, blocks, layout, width=5):
    """A random residual stream: the hidden states and the taps a ViT block records of them."""
    x = RNG.normal(size=(batch, layout.num_tokens, width))
    hidden, layers = [x], []
    for _ in range(blocks):
        attn, mlp = RNG.normal(size=(2, *x.shape)) * RNG.uniform(0.2, 2.0, size=(2, 1, 1, width))
        mid = x + attn
        x = mid + mlp
        hidden += [mid, x]
        layers.append({"attn_branch": attn.astype(np.float32), "mlp_branch": mlp.astype(np.float32),
                       "tokens": x.astype(np.float32)})
    return hidden, layers


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_fourier_and_variance_match_park_and_kim_on_the_residual_stream(grid):
    layout = TokenLayout(1, 0, 2, grid, (8, 8))
    valid = np.arange(12) < 10
    hidden, layers = residual_stream(12, 3, layout)
    output = make_output(poison(layers, valid), layout)
    fourier, _ = run(Fourier(), output, valid, [4])
    variance, _ = run(FeatureVariance(), output, valid, [4])
    kept = [h[:10] for h in hidden]
    expected = np.array([pk_fourier(h, 3, grid) for h in kept])
    np.testing.assert_allclose(fourier["log_amplitude"], expected, atol=2e-5)
    np.testing.assert_allclose(fourier["high_frequency"], expected[:, -1], atol=2e-5)
    assert list(fourier["layers"][:3]) == ["embed", "0.attn", "0.mlp"] and fourier["is_msa"].tolist() == [
        False, True, False, True, False, True, False]
    steps = np.arange(expected.shape[1])
    np.testing.assert_allclose(fourier["frequency"][0], 2 * steps / grid[0])
    for branch in ("attn_branch", "mlp_branch"):
        branch_expected = np.array([pk_fourier(layer[branch][:10], 3, grid) for layer in layers])
        # float32 FFTs of small random branch maps: the log of a near-zero amplitude magnifies
        # rounding (seen: 9e-5), so the branches get a looser absolute tolerance than the stream.
        np.testing.assert_allclose(fourier[f"{branch}_log_amplitude"], branch_expected, atol=3e-4)
        np.testing.assert_allclose(variance[f"{branch}_variance"],
                                   [pk_variance(layer[branch][:10], 3, grid) for layer in layers], rtol=1e-5)
    np.testing.assert_allclose(variance["variance"], [pk_variance(h, 3, grid) for h in kept], rtol=1e-5)


@pytest.mark.parametrize("grid", [(14, 14), (7, 10), (5, 3), (1, 1)])
def test_log_amplitude_is_the_whole_fft2_spectrum(grid):
    """The real-FFT half and its mirrored columns give every entry of numpy's full fft2 spectrum
    (the Park & Kim curve reads only the diagonal, so this checks the mirrored half too)."""
    from vitjax.analysis.spectral import log_amplitude

    x = np.random.default_rng(1).normal(size=(2, *grid, 6))
    expected = np.log(np.abs(np.fft.fft2(x, axes=(1, 2))) + 1e-6).mean(-1)
    np.testing.assert_allclose(np.asarray(log_amplitude(jnp.asarray(x, jnp.float32))), expected, atol=1e-4)


def test_fourier_streaming_merge_and_eight_devices_equal_one_update():
    valid = np.arange(16) < 13
    _, layers = residual_stream(16, 2, WITH_REGISTERS)
    output = make_output(poison(layers, valid), WITH_REGISTERS)
    for analysis in (Fourier(), FeatureVariance(), SingularValues(), TokenSimilarity()):
        whole, _ = run(analysis, output, valid)
        assert_metrics_close(run(analysis, output, valid, [8])[0], whole, rtol=1e-6, atol=1e-6)
        _, first = run(analysis, rows(output, 0, 8), valid[:8])
        _, second = run(analysis, rows(output, 8, 16), valid[8:])
        assert_metrics_close(analysis.finalize(analysis.merge(first, second)), whole, rtol=1e-6, atol=1e-6)
        sharded = jax.device_put((output, {"valid": jnp.asarray(valid)}), batch_sharding(make_mesh()))
        state = jitted_update(analysis)(analysis.init(jax.eval_shape(lambda: output)), *sharded)
        assert_metrics_close(analysis.finalize(state), whole, rtol=1e-6, atol=1e-6)


def test_singular_values_and_token_similarity_match_numpy():
    valid = np.arange(8) < 6
    layers = poison(random_blocks(8, 2, ("tokens",), WITH_REGISTERS, width=10, shift=1.0), valid)
    output = make_output(layers, WITH_REGISTERS)
    for tokens, keep in (("patches", slice(3, None)), ("all", slice(None))):
        similarity, _ = run(TokenSimilarity(tokens=tokens), output, valid, [4])
        for center in (True, False):
            spectra, _ = run(SingularValues(tokens=tokens, center=center), output, valid, [4])
            for block, layer in enumerate(layers):
                stacked_tokens = layer["tokens"][:6, keep].astype(np.float64).reshape(-1, 10)
                if center:
                    stacked_tokens = stacked_tokens - stacked_tokens.mean(0)
                sigma = np.linalg.svd(stacked_tokens, compute_uv=False)
                np.testing.assert_allclose(spectra["spectrum"][block], sigma / sigma[0], rtol=1e-4, atol=1e-6)
                p = sigma / sigma.sum()
                np.testing.assert_allclose(spectra["effective_rank"][block], np.exp(-(p * np.log(p)).sum()), rtol=1e-5)
        for block, layer in enumerate(layers):
            x = layer["tokens"][:6, keep].astype(np.float64)
            u = x / np.linalg.norm(x, axis=-1, keepdims=True)
            cos = np.einsum("bid,bjd->bij", u, u)
            n = x.shape[1]
            off_diagonal = cos[:, ~np.eye(n, dtype=bool)].mean(1)
            np.testing.assert_allclose(similarity["token_similarity"][block], off_diagonal.mean(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- real models under jit, and figures


@pytest.fixture(scope="module")
def tiny_vit():
    model, params = vitjax.create_model("vit_tiny_patch16_224", key=jax.random.key(0), image_size=32, patch_size=8,
                                        depth=2, width=32, num_heads=2, mlp_dim=64, num_registers=1)
    return model, params


def test_all_feature_analyses_in_one_jitted_pass_of_a_tiny_vit(tiny_vit, tmp_path):
    model, params = tiny_vit
    analyses = [CKA(), Fourier(), FeatureVariance(), SingularValues(), TokenSimilarity()]
    taps = frozenset().union(*(a.taps for a in analyses))
    images = jax.random.normal(jax.random.key(1), (16, 32, 32, 3))
    valid = jnp.arange(16) < 14

    @jax.jit
    def step(states, images, valid):
        output = model.apply({"params": params}, images, capture=taps)
        return [a.update(s, output, {"image": images, "valid": valid}) for a, s in zip(analyses, states)]

    spec = jax.eval_shape(lambda x: model.apply({"params": params}, x, capture=taps), images)
    states = [a.init(spec) for a in analyses]
    states = step(states, images[:8], valid[:8])
    states = step(states, images[8:], valid[8:])
    metrics = {a.name: a.finalize(s) for a, s in zip(analyses, states)}

    output = jax.jit(lambda x: model.apply({"params": params}, x, capture=taps))(images[:14])
    layers = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in output.layers]
    # Hidden states by an independent route: after-attention = previous block output + attention branch.
    embed = layers[0]["tokens"] - layers[0]["mlp_branch"] - layers[0]["attn_branch"]
    hidden, previous = [embed], embed
    for layer in layers:
        hidden += [previous + layer["attn_branch"], layer["tokens"]]
        previous = layer["tokens"]
    np.testing.assert_allclose(metrics["fourier"]["log_amplitude"], [pk_fourier(h, 2, (4, 4)) for h in hidden],
                               atol=1e-4)
    np.testing.assert_allclose(metrics["feature_variance"]["variance"], [pk_variance(h, 2, (4, 4)) for h in hidden],
                               rtol=1e-4)
    features = [layer[tap][:8] for layer in layers for tap in ("norm1", "norm2")]  # one complete minibatch
    np.testing.assert_allclose(metrics["cka"]["cka"], tm_cka(features, features), rtol=1e-4, atol=1e-5)

    for name, values in metrics.items():
        figures = getattr(figures_features, f"plot_{name}")(values, tmp_path, "tiny_vit")
        for figure in figures:
            assert (tmp_path / figure.path).stat().st_size > 1000
    between, _ = run(CKABetween(), (rows(output, 0, 8), rows(output, 0, 8)), np.ones(8, bool))
    assert figures_features.plot_cka_between(between, tmp_path, "a_vs_b")


def test_fourier_on_a_tiny_resnet_uses_each_stage_grid(tmp_path):
    model = ResNet(ResNetConfig(image_size=32, layers=(1, 1, 1), width=4, num_classes=0))
    # Random params of the right shapes (positive BatchNorm variances): Flax's initialisers take
    # ~30 s to compile for a ResNet on a loaded 2-core CPU, and the values do not matter here.
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: np.abs(RNG.normal(size=s.shape)).astype(np.float32) + 0.5 if path[-1].key == "var"
        else (RNG.normal(size=s.shape) * 0.3).astype(np.float32), shapes)
    images = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
    analysis = Fourier(taps=("tokens",))
    output = jax.jit(lambda x: model.apply({"params": params}, x, capture="tokens"))(images)
    state = jax.jit(analysis.update)(analysis.init(jax.eval_shape(lambda: output)), output,
                                     {"valid": jnp.ones(4, bool)})
    metrics = analysis.finalize(state)
    stages = [np.asarray(layer["tokens"]) for layer in output.layers]
    grids = [(8, 8), (4, 4), (2, 2)]
    assert [s.shape[1] for s in stages] == [g[0] * g[1] for g in grids]
    for i, (stage, grid) in enumerate(zip(stages, grids)):
        expected = pk_fourier(stage, 0, grid)
        np.testing.assert_allclose(metrics["log_amplitude"][i, : len(expected)], expected, atol=1e-4)
        assert np.isnan(metrics["log_amplitude"][i, len(expected):]).all()
        if len(expected) > 1:
            assert metrics["high_frequency"][i] == pytest.approx(expected[-1], abs=1e-4)
        else:  # a 2 x 2 map: only the DC term lies on the half-diagonal
            assert np.isnan(metrics["high_frequency"][i])
    assert not metrics["is_msa"].any()
    assert len(figures_features.plot_fourier(metrics, tmp_path, "tiny_resnet")) == 2

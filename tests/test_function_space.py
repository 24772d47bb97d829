"""Function-space diversity: SVGD and FunctionSpaceEntropy against independent references, and the
diversity metrics against brute-force pair loops."""

import numpy as np
import pytest
import tensorflow as tf

import hyperkeras
from hyperkeras import metrics, targets
from hyperkeras.generators import HyperGANGenerator
from hyperkeras.models import Hypernetwork
from hyperkeras.objectives import SVGD, FunctionSpaceEntropy, LatentGAN, rbf_kernel, svgd_direction


# ---------------------------------------------------------------------------------------------- NumPy references
def numpy_svgd(x, grad_logp, h=None, repulsion=1.0):
    """Liu & Wang (2016) eq. 8 written out pair by pair, float64; h by the median heuristic med²/log K."""
    x = np.asarray(x, np.float64)
    k = len(x)
    d2 = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(k)] for i in range(k)])
    if h is None:
        off = d2[~np.eye(k, dtype=bool)]
        h = np.median(off) / max(np.log(k), 1.0)
    phi = np.zeros_like(x)
    for i in range(k):
        for j in range(k):
            kern = np.exp(-d2[j, i] / h)
            grad_k = -2.0 / h * (x[j] - x[i]) * kern  # ∇_{x_j} k(x_j, x_i)
            phi[i] += kern * grad_logp[j] + repulsion * grad_k
    return phi / k, h


def numpy_kl_entropy(samples, dim):
    """ψ(N) + (d/N) Σ log ε_i (Deutsch eq. 14), brute force."""
    from scipy.special import digamma

    s = np.asarray(samples, np.float64)
    n = len(s)
    eps = [min(np.linalg.norm(s[i] - s[j]) for j in range(n) if j != i) for i in range(n)]
    return digamma(n) + dim * np.mean(np.log(eps))


# ---------------------------------------------------------------------------------------------- SVGD
@pytest.mark.parametrize("bandwidth", [None, 0.7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_svgd_direction_matches_numpy(bandwidth, dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3))
    g = rng.normal(size=(6, 3))
    want, h = numpy_svgd(x, g, bandwidth)
    got = svgd_direction(tf.constant(x, dtype), tf.constant(g, dtype), bandwidth=bandwidth).numpy()
    tol = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    _, got_h = rbf_kernel(tf.constant(x, dtype), bandwidth)
    np.testing.assert_allclose(float(got_h), h, rtol=tol)


def test_svgd_particles_reach_a_gaussian():
    """Particles following φ with ∇ log p of N(2, 0.5²) end with that mean and spread (the analytic answer)."""
    rng = np.random.default_rng(1)
    x = tf.constant(rng.uniform(-6, -4, size=(100, 1)), tf.float32)
    for _ in range(1500):
        x = x + 0.05 * svgd_direction(x, -(x - 2.0) / 0.25)
    assert abs(float(tf.reduce_mean(x)) - 2.0) < 0.05
    assert abs(float(tf.math.reduce_std(x)) - 0.5) < 0.08


def test_svgd_with_identity_kernel_is_plain_training():
    """A tiny bandwidth makes k the identity: with no repulsion, the generator's gradient is that of the
    plain task loss, in weight and in function space."""
    target = hyperkeras.TargetNetwork(targets.build_model("mlp", input_shape=(8,), hidden=(6,), num_classes=3, seed=0))
    x = np.random.default_rng(0).normal(size=(12, 8)).astype("float32")
    y = np.arange(12) % 3

    def grads(regs, shared):
        gen = HyperGANGenerator.from_target(target, noise_dim=4, code_dim=3, mixer_units=(8,), generator_units=(8,))
        gen.build((None, 4))
        model = Hypernetwork(target, gen, regs, num_networks=4, shared_batch=shared, seed=3)
        noise = model.sample_noise(4, 5)
        with tf.GradientTape() as tape:
            loss = model.compute_losses(x, y, noise=noise)["loss"]
        return model.generator_variables, tape.gradient(loss, model.generator_variables)

    for space, shared in (("weight", False), ("weight", True), ("function", True)):
        tf.keras.utils.set_random_seed(0)
        v_svgd, g_svgd = grads([SVGD(space, repulsion=0.0, bandwidth=1e-12)], shared)
        tf.keras.utils.set_random_seed(0)
        v_plain, g_plain = grads([], shared)
        for a, b, va, vb in zip(g_svgd, g_plain, v_svgd, v_plain):
            np.testing.assert_allclose(va.numpy(), vb.numpy())  # the same initial generator
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_svgd_weight_space_gradient_is_phi_through_the_generator(weight_decay):
    """The generator's gradient equals −Σ_k φ_k · ∂θ_k/∂w with φ from the NumPy reference and ∇ log p_k from
    per-network tapes on plain Keras models (`to_keras_model`), plus the Gaussian prior's −weight_decay · θ_k."""
    import keras

    target = hyperkeras.TargetNetwork(targets.build_model("mlp", input_shape=(5,), hidden=(4,), num_classes=2, seed=0))
    x = np.random.default_rng(2).normal(size=(8, 5)).astype("float32")
    y = np.arange(8) % 2
    gen = HyperGANGenerator.from_target(target, noise_dim=3, code_dim=2, mixer_units=(6,), generator_units=(6,))
    gen.build((None, 3))
    k = 4
    svgd = SVGD("weight", repulsion=0.5, weight_decay=weight_decay)
    model = Hypernetwork(target, gen, [svgd], num_networks=k, shared_batch=True, seed=1)
    noise = model.sample_noise(k, 9)
    variables = model.generator_variables
    with tf.GradientTape() as tape:
        loss = model.compute_losses(x, y, noise=noise)["loss"]
    got = tape.gradient(loss, variables)

    params = model.generate(noise)
    flat = target.flatten(params).numpy().astype(np.float64)
    grad_logp = []
    for i in range(k):  # ∇θ log p(θ_i) = −∇ mean cross-entropy of network i, from a plain Keras model
        net = target.to_keras_model(params, index=i)
        with tf.GradientTape() as t:
            ce = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, net(x), from_logits=True))
        g = t.gradient(ce, net.trainable_variables)
        by_name = {v.path: gv for v, gv in zip(net.trainable_variables, g)}
        mine = {
            s.name: next(gv for path, gv in by_name.items() if path.endswith(s.name))[None] for s in target.param_specs
        }
        grad_logp.append(-target.flatten(mine).numpy()[0] - weight_decay * flat[i])
    phi, _ = numpy_svgd(flat, np.array(grad_logp), repulsion=0.5)
    with tf.GradientTape() as tape:
        theta = target.flatten(model.generate(noise))
        surrogate = -tf.reduce_sum(tf.constant(phi, tf.float32) * theta)
    want = tape.gradient(surrogate, variables)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-3, atol=2e-5)


# ---------------------------------------------------------------------------------------------- function-space entropy
def test_function_space_entropy_on_hand_made_predictions():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 4, 3)).astype("float32")  # K=5 networks, 4 examples, 3 classes
    log_probs = tf.nn.log_softmax(logits).numpy()
    probs = np.exp(log_probs.astype(np.float64))
    probs /= probs.sum(-1, keepdims=True)
    for space, features in (("log_probs", log_probs), ("probs", probs)):
        reg = FunctionSpaceEntropy(weight=2.0, features=space, entropy_dim=7)
        terms = reg.terms(None, {}, {}, predictions=tf.constant(log_probs))
        want = numpy_kl_entropy(features.reshape(5, -1), dim=7)
        np.testing.assert_allclose(float(terms.metrics["function_entropy"]), want, rtol=1e-4)
        np.testing.assert_allclose(float(terms.loss), -2.0 * want, rtol=1e-4)
        # a probe of the first 2 examples
        probe = FunctionSpaceEntropy(features=space, entropy_dim=7, probe_size=2).terms(
            None, {}, {}, predictions=tf.constant(log_probs)
        )
        np.testing.assert_allclose(
            float(probe.metrics["function_entropy"]), numpy_kl_entropy(features[:, :2].reshape(5, -1), dim=7), rtol=1e-4
        )


def test_function_space_entropy_probe_pass_equals_keras_models():
    """With a batch shared out, every network runs on the probe: the same value as from plain Keras models."""
    target = hyperkeras.TargetNetwork(targets.build_model("mlp", input_shape=(6,), hidden=(5,), num_classes=3, seed=0))
    x = np.random.default_rng(4).normal(size=(10, 6)).astype("float32")
    gen = HyperGANGenerator.from_target(target, noise_dim=4, code_dim=3, mixer_units=(8,), generator_units=(8,))
    gen.build((None, 4))
    reg = FunctionSpaceEntropy(probe_size=3)
    model = Hypernetwork(target, gen, [reg], num_networks=4, shared_batch=False, seed=0)
    noise = model.sample_noise(4, 1)
    out = model.compute_losses(x, np.arange(10) % 3, noise=noise)
    params = model.generate(noise)
    preds = np.stack([tf.nn.softmax(target.to_keras_model(params, index=i)(x[:3])).numpy() for i in range(4)])
    want = numpy_kl_entropy(preds.reshape(4, -1), dim=4)
    np.testing.assert_allclose(float(out["function_entropy"]), want, rtol=1e-4)


def test_mixup_probe_and_its_entropy():
    """Mixup probes are convex combinations of the named pairs; the entropy term on them equals the NumPy
    estimator on plain Keras models' probabilities for the same probe."""
    from hyperkeras.objectives.function_space import mixup_probe

    x = np.random.default_rng(9).normal(size=(10, 6)).astype("float32")
    seed = tf.constant([3, 4], tf.int32)
    probe = mixup_probe(x, 4, seed).numpy()
    for r in range(4):
        a, b = x[r], x[(r + 4) % 10]
        lam = (probe[r] - b) / (a - b)
        np.testing.assert_allclose(lam, lam[0], rtol=1e-4, atol=1e-5)  # one λ per example
        assert 0.0 <= lam[0] <= 1.0
    target = hyperkeras.TargetNetwork(targets.build_model("mlp", input_shape=(6,), hidden=(5,), num_classes=3, seed=0))
    gen = HyperGANGenerator.from_target(target, noise_dim=4, code_dim=3, mixer_units=(8,), generator_units=(8,))
    gen.build((None, 4))
    params = gen.generate(target, gen.sample_noise(4, 1))
    params = params[0] if isinstance(params, tuple) else params  # (params, aux)
    reg = FunctionSpaceEntropy(probe="mixup", probe_size=4, entropy_dim=4)
    got = reg.terms(target, params, {}, seed=seed, inputs=tf.constant(x)).metrics["function_entropy"]
    preds = np.stack([tf.nn.softmax(target.to_keras_model(params, index=i)(probe)).numpy() for i in range(4)])
    np.testing.assert_allclose(float(got), numpy_kl_entropy(preds.reshape(4, -1), dim=4), rtol=1e-4)
    with pytest.raises(ValueError, match="probe must be"):
        FunctionSpaceEntropy(probe="white")


def test_regularizer_errors_and_serialisation(tmp_path):
    import keras

    target = hyperkeras.TargetNetwork(targets.build_model("mlp", input_shape=(6,), hidden=(5,), num_classes=3, seed=0))

    def gen():
        return HyperGANGenerator.from_target(target, noise_dim=4, code_dim=3, mixer_units=(8,), generator_units=(8,))

    with pytest.raises(ValueError, match="shared_batch=True"):
        Hypernetwork(target, gen(), [SVGD("function")], num_networks=4, shared_batch=False)
    with pytest.raises(ValueError, match="at most one update rule"):
        Hypernetwork(target, gen(), [SVGD("weight"), SVGD("function", name="svgd2")], num_networks=4)
    with pytest.raises(ValueError, match="space"):
        SVGD("parameter")
    with pytest.raises(ValueError, match="weight_decay"):
        SVGD("function", weight_decay=0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        SVGD("weight", weight_decay=-1.0)
    with pytest.raises(ValueError, match="probe_size"):
        FunctionSpaceEntropy(probe_size=0)
    with pytest.raises(ValueError, match="SVGD needs num_networks >= 2"):
        Hypernetwork(target, gen(), [SVGD("weight")], num_networks=1)

    x = np.random.default_rng(5).normal(size=(16, 6)).astype("float32")
    y = np.arange(16) % 3
    for regs in (
        [SVGD("function", repulsion=0.3)],
        [FunctionSpaceEntropy(0.1, probe_size=4), LatentGAN(discriminator_units=(8,))],
        [SVGD("weight", weight_decay=1e-3), FunctionSpaceEntropy(0.1, probe="mixup", probe_size=4)],
    ):
        model = Hypernetwork(target, gen(), regs, num_networks=4, seed=2)
        model.compile(optimizer="adam")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        path = str(tmp_path / "m.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        assert [type(r).__name__ for r in loaded.regularizers] == [type(r).__name__ for r in regs]
        assert loaded.regularizers[0].get_config() == model.regularizers[0].get_config()
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- diversity metrics
def test_disagreement_and_pairwise_kl_against_pair_loops():
    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.ones(4), size=(7, 30))  # 7 networks, 30 examples, 4 classes
    preds = probs.argmax(-1)
    pairs = [(i, j) for i in range(7) for j in range(7) if i != j]
    want_dis = np.mean([np.mean(preds[i] != preds[j]) for i, j in pairs])
    want_kl = np.mean([np.mean(np.sum(probs[i] * (np.log(probs[i]) - np.log(probs[j])), -1)) for i, j in pairs])
    assert metrics.disagreement(preds) == pytest.approx(want_dis, rel=1e-12)
    assert metrics.disagreement(probs) == pytest.approx(want_dis, rel=1e-12)
    assert metrics.pairwise_kl(probs) == pytest.approx(want_kl, rel=1e-10)
    assert metrics.pairwise_kl(probs.astype(np.float32)) == pytest.approx(want_kl, rel=1e-5)
    # hand-made: two networks that always disagree; identical networks
    assert metrics.disagreement([[0, 1, 2], [1, 2, 0]]) == 1.0
    assert metrics.disagreement([[0, 1, 2], [0, 1, 2], [0, 1, 2]]) == 0.0
    assert metrics.pairwise_kl(np.stack([probs[0]] * 3)) == pytest.approx(0.0, abs=1e-12)
    p, q = np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]])
    kl = 0.5 * (np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p)))
    assert metrics.pairwise_kl(np.stack([p, q])) == pytest.approx(kl)
    with pytest.raises(ValueError, match="at least 2 networks"):
        metrics.disagreement([[0, 1, 2]])
    with pytest.raises(ValueError, match="rank 3"):
        metrics.pairwise_kl(probs[0])


# ---------------------------------------------------------------------------------------------- mean–variance ensembles
def test_gaussian_nll_and_mixture_against_scipy_and_numpy():
    import keras
    from scipy import stats

    from hyperkeras import baselines

    rng = np.random.default_rng(7)
    out = rng.normal(size=(6, 2)).astype("float32")  # one target: mean, raw variance
    y = rng.normal(size=(6, 1)).astype("float32")
    var = np.log1p(np.exp(out[:, 1].astype(np.float64))) + 1e-6
    want = -np.mean(stats.norm.logpdf(y[:, 0], loc=out[:, 0], scale=np.sqrt(var)))
    assert float(baselines.gaussian_nll(y, out)) == pytest.approx(want, rel=1e-5)

    def net(mean_w, raw_b):  # x -> [mean_w·x, raw_b]: a known mean and variance
        inp = keras.Input((1,))
        m = keras.layers.Dense(2)
        model = keras.Model(inp, m(inp))
        m.set_weights([np.array([[mean_w, 0.0]], np.float32), np.array([0.0, raw_b], np.float32)])
        return model

    x = np.linspace(-1, 1, 5, dtype=np.float32)[:, None]
    models = [net(1.0, 0.0), net(3.0, 1.0)]
    mu, sd = baselines.mean_variance_predict(models, x)
    means = np.stack([x[:, 0], 3 * x[:, 0]])
    variances = np.stack([np.full(5, np.log(2.0)), np.full(5, np.log1p(np.e))]) + 1e-6
    want_mu = means.mean(0)
    want_var = (variances + means**2).mean(0) - want_mu**2
    np.testing.assert_allclose(mu[:, 0], want_mu, rtol=1e-6)
    np.testing.assert_allclose(sd[:, 0], np.sqrt(want_var), rtol=1e-5)


def test_mean_variance_ensemble_learns_the_noise_level():
    """On y = x + ε with ε ~ N(0, 0.5²) the ensemble's predicted standard deviation is near 0.5."""
    from hyperkeras import baselines

    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, size=(512, 1)).astype("float32")
    y = x + 0.5 * rng.normal(size=x.shape).astype("float32")
    models = baselines.mean_variance_ensemble(
        "hypergan_regression",
        x,
        y,
        num_models=2,
        steps=600,
        batch_size=64,
        learning_rate=3e-3,
        build_kwargs={"outputs": 2, "hidden": 16},
    )
    mu, sd = baselines.mean_variance_predict(models, np.array([[-0.5], [0.0], [0.5]], np.float32))
    np.testing.assert_allclose(mu[:, 0], [-0.5, 0.0, 0.5], atol=0.15)
    np.testing.assert_allclose(sd[:, 0], 0.5, atol=0.1)
    with pytest.raises(ValueError, match="2·D = 2 outputs"):
        baselines.mean_variance_ensemble("hypergan_regression", x, y, num_models=1, steps=1)


def test_function_space_entropy_space_is_a_deprecated_name_of_features():
    """0.1 configs (``space``) still load: the same regulariser, with a DeprecationWarning."""
    new = FunctionSpaceEntropy(features="log_probs", probe_size=3)
    with pytest.warns(DeprecationWarning, match="use features="):
        old = FunctionSpaceEntropy.from_config({**new.get_config(), "features": "probs", "space": "log_probs"})
    assert old.features == "log_probs" and old.get_config()["features"] == "log_probs"

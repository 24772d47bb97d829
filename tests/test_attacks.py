"""FGSM / PGD: against a hand-written GradientTape FGSM, finite differences, the ε-ball and pixel range."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras import attacks, ensembles


@pytest.fixture(scope="module")
def target():
    model = hk.targets.build_model("mlp", input_shape=(6,), hidden=(12,), num_classes=3, activation="tanh", seed=0)
    return hk.TargetNetwork(model)


def _params(target, k, seed=0):
    rng = np.random.RandomState(seed)
    return {s.name: tf.constant(rng.randn(k, *s.shape).astype("float32")) for s in target.param_specs}


def _data(n=10, seed=1):
    rng = np.random.RandomState(seed)
    return rng.rand(n, 6).astype("float32"), rng.randint(0, 3, n)


def _ensemble_nll(target, params, x, y):
    """Independent NumPy value of -log mean_k softmax_k(x)[y] from per-network keras models."""
    k = params[target.param_specs[0].name].shape[0]
    logits = np.stack([target.to_keras_model(params, i)(x).numpy() for i in range(k)]).astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return -np.log(p.mean(0)[np.arange(len(y)), y])


def test_fgsm_single_keras_model_matches_gradient_tape(target):
    model = target.to_keras_model(_params(target, 1), 0)
    x, y = _data()
    eps = 0.1
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(y, model(xt), from_logits=True))
    expected = np.clip(x + eps * np.sign(tape.gradient(loss, xt).numpy()), 0.0, 1.0)
    adv = attacks.fgsm(model, x, y, eps=eps)
    np.testing.assert_allclose(adv, expected, atol=1e-6)
    assert np.all(np.abs(adv - x) <= eps + 1e-6) and adv.min() >= 0.0 and adv.max() <= 1.0
    assert attacks.loss(model, adv, y).mean() > attacks.loss(model, x, y).mean()


@pytest.mark.parametrize("kind", ["mean_probs", "fused_logits"])
def test_chunked_ensemble_gradient_matches_finite_differences(target, kind):
    params = _params(target, 5)
    members = ensembles.as_members(params, target=target)
    x, y = _data(4)
    g_full = attacks.input_gradient(members, x, y, kind=kind)
    g_chunked = attacks.input_gradient(members, x, y, kind=kind, chunk_size=2)
    np.testing.assert_allclose(g_chunked, g_full, atol=1e-6)
    d = np.random.RandomState(3).randn(*x.shape).astype("float32")
    h = 1e-3
    fd = (
        attacks.loss(members, x + h * d, y, kind=kind).sum() - attacks.loss(members, x - h * d, y, kind=kind).sum()
    ) / (2 * h)
    assert float(np.sum(g_full * d)) == pytest.approx(float(fd), rel=2e-2, abs=1e-3)
    if kind == "mean_probs":
        np.testing.assert_allclose(attacks.loss(members, x, y), _ensemble_nll(target, params, x, y), atol=1e-5)


def test_pgd_on_ensemble_increases_loss_within_the_ball(target):
    params = _params(target, 4)
    x, y = _data(12)
    eps = 0.05
    adv = attacks.pgd(params, x, y, eps=eps, step_size=0.01, steps=10, target=target, chunk_size=3, batch_size=5)
    assert adv.shape == x.shape and adv.dtype == np.float32
    assert np.all(np.abs(adv - x) <= eps + 1e-6) and adv.min() >= 0.0 and adv.max() <= 1.0
    clean = _ensemble_nll(target, params, x, y)
    attacked = _ensemble_nll(target, params, adv, y)
    assert attacked.mean() > clean.mean()
    fgsm_adv = attacks.fgsm(params, x, y, eps=eps, target=target)
    assert _ensemble_nll(target, params, fgsm_adv, y).mean() > clean.mean()
    # pixel range clipping: points at the border stay inside
    corner = np.ones_like(x)
    out = attacks.pgd(params, corner, y, eps=0.3, steps=3, target=target)
    assert out.max() <= 1.0 and out.min() >= 0.7 - 1e-6


def test_attack_deep_ensemble_list_and_generator(target):
    params = _params(target, 3)
    models = [target.to_keras_model(params, i) for i in range(3)]
    x, y = _data(6)
    a = attacks.fgsm(models, x, y, eps=0.1)
    b = attacks.fgsm(params, x, y, eps=0.1, target=target)
    np.testing.assert_allclose(a, b, atol=1e-6)

    class Gen:
        def __init__(self):
            self.target = target

        def sample(self, n, seed):
            return target.unflatten(tf.random.stateless_normal([n, target.num_params], seed=[seed, 0]))

    adv = attacks.pgd(Gen(), x, y, eps=0.1, steps=3, n=4, seed=2)
    members = ensembles.as_members(Gen(), n=4, seed=2)
    assert attacks.loss(members, adv, y).mean() > attacks.loss(members, x, y).mean()


def test_gradient_uses_each_networks_own_batchnorm_statistics():
    """The traced gradient once ran every network on the wrapped model's statistics, not the per-network
    `state` that the ensemble's own predictions (`Members.outputs`) use."""
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5), keras.layers.BatchNormalization(), keras.layers.Dense(3)]
    )
    bn_target = hk.TargetNetwork(model)
    params = _params(bn_target, 3)
    rng = np.random.RandomState(2)
    state = bn_target.calibrate_state(params, rng.rand(64, 6).astype("float32") * 3)
    members = ensembles.TargetMembers(bn_target, params, state=state)
    x, y = _data(5)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logp = ensembles.log_probs(members.outputs(xt), members.output)
        picked = tf.reduce_sum(logp * tf.one_hot(y, 3), -1)  # [K, B]: each network's log p(y)
        loss = -tf.reduce_sum(tf.reduce_logsumexp(picked, axis=0))
    np.testing.assert_allclose(attacks.input_gradient(members, x, y), tape.gradient(loss, xt).numpy(), atol=1e-5)


def test_bad_inputs(target):
    params = _params(target, 2)
    x, y = _data(3)
    with pytest.raises(ValueError, match="valid pixel range"):
        attacks.fgsm(params, x * 3, y, eps=0.1, target=target)
    with pytest.raises(ValueError, match="eps"):
        attacks.fgsm(params, x, y, eps=-1.0, target=target)
    with pytest.raises(ValueError, match="y must be integer labels"):
        attacks.pgd(params, x, y[:2], eps=0.1, target=target)
    with pytest.raises(ValueError, match="steps"):
        attacks.pgd(params, x, y, eps=0.1, steps=0, target=target)
    with pytest.raises(ValueError, match="loss must be"):
        attacks.fgsm(params, x, y, eps=0.1, target=target, loss="hinge")


def test_mc_dropout_fused_logits_value_and_gradient_see_the_same_masks():
    """One input unit behind Dropout(0.5): a pass either drops it (logits = bias, zero input gradient)
    or keeps it. Value and gradient must come from the same passes (they once used two forward passes,
    so the gradient saw other masks than the value)."""
    from hyperkeras import ensembles
    from hyperkeras.attacks import _Gradient

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dropout(0.5), keras.layers.Dense(2, name="out")])
    model.get_layer("out").set_weights([np.array([[3.0, -3.0]], "float32"), np.array([0.5, -0.5], "float32")])
    members = ensembles.as_members(ensembles.MCDropout(model), n=1)
    grad = _Gradient(members, "fused_logits", chunk_size=None)
    x, y = tf.constant([[1.0]]), tf.constant([1])
    bias_only = float(tf.nn.sparse_softmax_cross_entropy_with_logits(y, tf.constant([[0.5, -0.5]]))[0])
    kept = dropped = 0
    for _ in range(30):
        value, g = grad(x, y)
        if abs(float(value[0]) - bias_only) < 1e-6:
            dropped += 1
            assert float(g[0, 0]) == 0.0
        else:
            kept += 1
            assert float(g[0, 0]) != 0.0
    assert kept and dropped


def test_pgd_until_fooled_stops_each_example_once_the_ensemble_is_fooled():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="out")])
    rng = np.random.RandomState(0)
    model.get_layer("out").set_weights([rng.randn(4, 3).astype("float32"), np.zeros(3, "float32")])
    x = rng.rand(16, 4).astype("float32")
    y = model(x).numpy().argmax(1)
    full = attacks.pgd([model], x, y, eps=0.5, steps=20, random_start=False, loss="fused_logits")
    early = attacks.pgd([model], x, y, eps=0.5, steps=20, random_start=False, loss="fused_logits", until_fooled=True)
    fooled_full = model(full).numpy().argmax(1) != y
    fooled_early = model(early).numpy().argmax(1) != y
    np.testing.assert_array_equal(fooled_early, fooled_full)  # the same examples end up fooled ...
    assert fooled_early.any()
    moved_less = np.abs(early - x).max(1) <= np.abs(full - x).max(1) + 1e-6
    assert moved_less.all() and (np.abs(early - x).max(1) < np.abs(full - x).max(1) - 1e-3)[fooled_early].any()
    np.testing.assert_allclose(early[~fooled_early], full[~fooled_early])  # ... the others take every step


def test_deutsch_fgsm_curve_against_numpy():
    rng = np.random.RandomState(3)
    nets = []
    for _ in range(4):
        m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="out")])
        m.get_layer("out").set_weights([rng.randn(5, 4).astype("float32"), rng.randn(4).astype("float32") * 0.1])
        nets.append(m)
    x = rng.rand(40, 5).astype("float32")
    y = nets[0](x).numpy().argmax(1)
    y[:10] = (y[:10] + 1) % 4  # ten examples the attacked network gets wrong: dropped
    res = attacks.deutsch_fgsm_curve([nets[0]], nets[1:], x, y, [0.0, 0.3], seed=5)
    assert res["examples"] == 30 and res["ensemble_size"] == 3
    xk, yk = x[10:], y[10:]
    y_adv = (yk + np.random.RandomState(5).randint(1, 4, size=30)) % 4
    w, b = nets[0].get_layer("out").get_weights()
    z = xk @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(4)[y_adv]) @ w.T  # ∇ₓ CE(x, y') of a linear softmax model
    xa = np.clip(xk - 0.3 * np.sign(grad), 0, 1)
    single = (xa @ w + b).argmax(1)
    votes = np.stack([m(xa.astype("float32")).numpy().argmax(1) for m in nets[1:]])
    majority = np.array([np.bincount(v, minlength=4).argmax() for v in votes.T])
    row = res["curve"][1]
    assert row["single_success"] == pytest.approx(np.mean(single == y_adv))
    assert row["ensemble_success"] == pytest.approx(np.mean(majority == y_adv))
    assert res["curve"][0]["single_success"] == 0.0

"""OutlierEntropy against NumPy, finite differences and per-network Keras tapes; the conformance kit; and
FunctionSpaceEntropy with the probe kinds of hyperkeras.probes."""

import numpy as np
import pytest
import tensorflow as tf

import hyperkeras
from hyperkeras import probes, targets
from hyperkeras.data import load_arrays
from hyperkeras.objectives import FunctionSpaceEntropy, OutlierEntropy, StepInputs, outlier_entropy
from hyperkeras.testing import run_regularizer_test

SEED = tf.constant([5, 6], tf.int32)


class LinearTarget:
    """A tiny target whose outputs we control: network k maps flattened x to logits x·W_k + b_k."""

    output_kind = "logits"

    def apply(self, params, x, training=False):
        if x.shape.rank == 5:  # per-network images [K, P, H, W, C]: network k sees x[k]
            flat = tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], -1])
            return tf.einsum("kbd,kdc->kbc", flat, params["w"]) + params["b"][:, None, :]
        flat = tf.reshape(x, [tf.shape(x)[0], -1])
        return tf.einsum("bd,kdc->kbc", flat, params["w"]) + params["b"][:, None, :]

    def as_logits(self, outputs):
        return outputs


def linear_params(k, d, c, dtype, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w": tf.constant(scale * rng.normal(size=(k, d, c)), dtype),
        "b": tf.constant(0.5 * rng.normal(size=(k, c)), dtype),
    }


def numpy_entropy(logits, mode):
    """Entropy (nats) of [K, P, C] logits, float64: H(mean_k softmax) or mean_k H(softmax), mean over P."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if mode == "mean":
        q = p.mean(0)
        return float(np.mean(-np.sum(q * np.log(q), -1)))
    return float(np.mean(-np.sum(p * np.log(p), -1)))


@pytest.fixture(scope="module")
def digits():
    x, y = load_arrays("digits", "train")
    return x[:64], y[:64]


# ---------------------------------------------------------------------------------------------- the value
def test_outlier_entropy_on_hand_made_logits():
    big = 30.0  # near one-hot
    disagree = tf.constant([[[big, 0.0]], [[0.0, big]]])  # K=2 networks, sure of different classes
    log_probs = tf.nn.log_softmax(disagree)
    assert float(outlier_entropy(log_probs, "mean")) == pytest.approx(np.log(2), abs=1e-6)
    assert float(outlier_entropy(log_probs, "members")) == pytest.approx(0.0, abs=1e-6)
    uniform = tf.nn.log_softmax(tf.zeros([3, 4, 5]))
    for mode in ("mean", "members"):
        assert float(outlier_entropy(uniform, mode)) == pytest.approx(np.log(5), abs=1e-6)
    z = np.random.default_rng(1).normal(size=(4, 7, 3)) * 2
    for mode in ("mean", "members"):
        got = float(outlier_entropy(tf.nn.log_softmax(tf.constant(z, tf.float64)), mode))
        assert got == pytest.approx(numpy_entropy(z, mode), rel=1e-12)


@pytest.mark.parametrize("kind", probes.PROBE_KINDS)
@pytest.mark.parametrize("mode", ["mean", "members"])
def test_loss_equals_numpy(kind, mode, digits):
    x = tf.constant(digits[0])
    params = linear_params(3, 64, 4, tf.float32, scale=2.0)
    reg = OutlierEntropy(weight=0.7, probe=kind, probe_size=16, mode=mode)
    terms = reg.compute(StepInputs(LinearTarget(), params, {}, training=True, seed=SEED, inputs=x))
    p = probes.make_probes(kind, x, 16, SEED).numpy().reshape(16, -1).astype(np.float64)
    logits = np.einsum("bd,kdc->kbc", p, params["w"].numpy()) + params["b"].numpy()[:, None, :]
    want = numpy_entropy(logits, mode)
    assert float(terms.metrics["outlier_entropy"]) == pytest.approx(want, rel=1e-5)
    assert float(terms.loss) == pytest.approx(-0.7 * want, rel=1e-5)
    assert terms.own_loss is None and terms.loss.dtype == tf.float32


@pytest.mark.parametrize("kind", probes.PROBE_KINDS)
def test_own_probes_equal_numpy(kind, digits):
    """mode="own": the probe_size probes are shared out; network k is scored on its own block of them."""
    x = tf.constant(digits[0])
    k, size = 3, 15
    params = linear_params(k, 64, 4, tf.float32, scale=2.0)
    terms = OutlierEntropy(weight=0.4, probe=kind, probe_size=size, mode="own").compute(
        StepInputs(LinearTarget(), params, {}, training=True, seed=SEED, inputs=x)
    )
    p = probes.make_probes(kind, x, size, SEED).numpy().reshape(k, size // k, -1).astype(np.float64)
    logits = np.einsum("kbd,kdc->kbc", p, params["w"].numpy()) + params["b"].numpy()[:, None, :]
    want = numpy_entropy(logits, "members")
    assert float(terms.metrics["outlier_entropy"]) == pytest.approx(want, rel=1e-5)
    assert float(terms.loss) == pytest.approx(-0.4 * want, rel=1e-5)
    # not the "members" value, where every network sees the same probes
    same = OutlierEntropy(weight=0.4, probe=kind, probe_size=size, mode="members").compute(
        StepInputs(LinearTarget(), params, {}, training=True, seed=SEED, inputs=x)
    )
    assert abs(float(same.loss) - float(terms.loss)) > 1e-4


# ---------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("mode", ["mean", "members"])
def test_gradient_matches_finite_differences_float64(mode):
    x = tf.constant(np.random.default_rng(2).uniform(0, 1, size=(8, 5)), tf.float64)  # flat features
    params = linear_params(3, 5, 4, tf.float64, scale=1.5)
    reg = OutlierEntropy(weight=1.3, probe="smooth_noise", probe_size=6, mode=mode)

    def loss(p):
        return reg.compute(StepInputs(LinearTarget(), p, {}, seed=SEED, inputs=x)).loss

    with tf.GradientTape() as tape:
        tape.watch(params)
        value = loss(params)
    assert value.dtype == tf.float64
    grads = tape.gradient(value, params)
    eps = 1e-6
    for name, v in params.items():
        flat = v.numpy().ravel()
        fd = np.zeros_like(flat)
        for i in range(flat.size):
            up, down = flat.copy(), flat.copy()
            up[i] += eps
            down[i] -= eps
            f_up = float(loss({**params, name: tf.constant(up.reshape(v.shape))}))
            f_down = float(loss({**params, name: tf.constant(down.reshape(v.shape))}))
            fd[i] = (f_up - f_down) / (2 * eps)
        np.testing.assert_allclose(grads[name].numpy().ravel(), fd, rtol=1e-6, atol=1e-9, err_msg=name)


def test_gradient_matches_per_network_keras_tapes(digits):
    """The generated params' gradient equals that of K standalone Keras models holding the same weights,
    with the entropy of their mean prediction written out independently."""
    x = tf.constant(digits[0])
    target = hyperkeras.TargetNetwork(targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(12,), seed=0))
    k = 3
    rng = np.random.default_rng(3)
    own = target.get_params()
    params = {
        n: tf.constant(np.repeat(v, k, 0) + 0.3 * rng.normal(size=(k, *v.shape[1:])), tf.float32)
        for n, v in own.items()
    }
    reg = OutlierEntropy(weight=0.5, probe="augment", probe_size=20)
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = reg.compute(StepInputs(target, params, {}, seed=SEED, inputs=x)).loss
    grads = tape.gradient(loss, params)

    probe = probes.make_probes("augment", x, 20, SEED)
    models = [target.to_keras_model(params, index=i) for i in range(k)]
    with tf.GradientTape() as tape:
        mean = sum(tf.nn.softmax(m(probe, training=False)) for m in models) / k
        ref = -0.5 * tf.reduce_mean(-tf.reduce_sum(mean * tf.math.log(mean), axis=-1))
    ref_grads = tape.gradient(ref, [m.trainable_variables for m in models])
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    for j, spec in enumerate(target.param_specs):
        want = np.stack([ref_grads[i][j].numpy() for i in range(k)])
        np.testing.assert_allclose(grads[spec.name].numpy(), want, rtol=1e-4, atol=1e-6, err_msg=spec.name)


def test_own_probes_gradient_matches_standalone_outlier_exposure_members(digits):
    """mode="own" gives generated network k the term a deep-ensemble member gets from OutlierExposure: the
    entropy of its own prediction on its own probes; checked against K standalone Keras models' tapes."""
    x = tf.constant(digits[0])
    target = hyperkeras.TargetNetwork(targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(12,), seed=0))
    k, size = 4, 8
    rng = np.random.default_rng(4)
    params = {
        n: tf.constant(np.repeat(v, k, 0) + 0.3 * rng.normal(size=(k, *v.shape[1:])), tf.float32)
        for n, v in target.get_params().items()
    }
    reg = OutlierEntropy(weight=0.5, probe="smooth_noise", probe_size=size, mode="own")
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = reg.compute(StepInputs(target, params, {}, seed=SEED, inputs=x)).loss
    grads = tape.gradient(loss, params)

    probe = probes.make_probes("smooth_noise", x, size, SEED)
    models = [target.to_keras_model(params, index=i) for i in range(k)]
    share = size // k
    with tf.GradientTape() as tape:
        entropies = []
        for i, m in enumerate(models):
            p = tf.nn.softmax(m(probe[i * share : (i + 1) * share], training=False))
            entropies.append(tf.reduce_mean(-tf.reduce_sum(p * tf.math.log(p), axis=-1)))
        ref = -0.5 * tf.add_n(entropies) / k
    ref_grads = tape.gradient(ref, [m.trainable_variables for m in models])
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    for j, spec in enumerate(target.param_specs):
        want = np.stack([ref_grads[i][j].numpy() for i in range(k)])
        np.testing.assert_allclose(grads[spec.name].numpy(), want, rtol=1e-4, atol=1e-6, err_msg=spec.name)


# ---------------------------------------------------------------------------------------------- contract
@pytest.mark.parametrize(
    "reg",
    [
        OutlierEntropy(weight=0.1),
        OutlierEntropy(weight=0.2, probe="noise", mode="members", probe_size=8),
        OutlierEntropy(weight=0.1, mode="own", probe_size=12),
    ],
    ids=["smooth_noise-mean", "noise-members", "smooth_noise-own"],
)
def test_conformance(reg, digits):
    model = run_regularizer_test(reg, *digits)
    assert any(key.endswith("outlier_entropy") for key in model.history.history)


def test_config_round_trip_and_refusals(digits):
    reg = OutlierEntropy(weight=0.3, probe="augment", probe_size=9, mode="members", probe_options={"rotation": 30.0})
    clone = OutlierEntropy.from_config(reg.get_config())
    assert (clone.weight, clone.probe, clone.probe_size, clone.mode, clone.probe_options) == (
        0.3,
        "augment",
        9,
        "members",
        {"rotation": 30.0},
    )
    with pytest.raises(ValueError, match="probe must be one of"):
        OutlierEntropy(probe="batch")
    with pytest.raises(ValueError, match="mode must be one of"):
        OutlierEntropy(mode="max")
    with pytest.raises(ValueError, match="weight must be >= 0"):
        OutlierEntropy(weight=-1)
    with pytest.raises(ValueError, match="probe_size must be a positive int"):
        OutlierEntropy(probe_size=0)
    with pytest.raises(ValueError, match="classification"):
        OutlierEntropy().setup(None, None, 4, task="regression")
    with pytest.raises(ValueError, match="probe_size must be a multiple of K"):
        OutlierEntropy(mode="own", probe_size=6).setup(None, None, 4)
    with pytest.raises(ValueError, match="probe_size must be a multiple of K"):
        OutlierEntropy(mode="own", probe_size=6).compute(
            StepInputs(
                LinearTarget(), linear_params(4, 64, 2, tf.float32), {}, seed=SEED, inputs=tf.constant(digits[0])
            )
        )
    with pytest.raises(ValueError, match="step.inputs"):
        OutlierEntropy().compute(StepInputs(LinearTarget(), linear_params(2, 3, 2, tf.float32), {}, seed=SEED))


def test_probe_options_reach_the_probe(digits):
    x = tf.constant(digits[0])
    params = linear_params(2, 64, 3, tf.float32)
    step = StepInputs(LinearTarget(), params, {}, seed=SEED, inputs=x)
    a = OutlierEntropy(probe="smooth_noise", probe_options={"octaves": 1}).compute(step).loss
    b = OutlierEntropy(probe="smooth_noise", probe_options={"octaves": 3}).compute(step).loss
    assert float(a) != float(b)


# ---------------------------------------------------------------------------------------------- FunctionSpaceEntropy
def _kl_entropy(features, dim):
    from scipy.special import digamma

    s = np.asarray(features, np.float64)
    n = len(s)
    eps = [min(np.linalg.norm(s[i] - s[j]) for j in range(n) if j != i) for i in range(n)]
    return digamma(n) + dim * np.mean(np.log(eps))


@pytest.mark.parametrize("kind", probes.PROBE_KINDS)
def test_function_space_entropy_on_every_probe_kind(kind, digits):
    x = tf.constant(digits[0])
    params = linear_params(5, 64, 4, tf.float32, scale=2.0)
    reg = FunctionSpaceEntropy(weight=0.5, probe=kind, probe_size=12, entropy_dim=3)
    reg._dim = 3  # what setup() sets
    terms = reg.compute(StepInputs(LinearTarget(), params, {}, seed=SEED, inputs=x))
    p = probes.make_probes(kind, x, 12, SEED).numpy().reshape(12, -1).astype(np.float64)
    logits = np.einsum("bd,kdc->kbc", p, params["w"].numpy()) + params["b"].numpy()[:, None, :]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    want = _kl_entropy(probs.reshape(5, -1), 3)
    assert float(terms.metrics["function_entropy"]) == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert float(terms.loss) == pytest.approx(-0.5 * want, rel=1e-4, abs=1e-4)


def test_function_space_entropy_mixup_unchanged(digits):
    """probe='mixup' still compares the networks on `mixup_probe(inputs, probe_size or 32, seed)`."""
    from hyperkeras.objectives.function_space import mixup_probe, network_predictions

    x = tf.constant(digits[0])
    params = linear_params(4, 64, 3, tf.float32)
    for size in (None, 10):
        reg = FunctionSpaceEntropy(probe="mixup", probe_size=size, entropy_dim=2)
        reg._dim = 2
        got = reg.compute(StepInputs(LinearTarget(), params, {}, seed=SEED, inputs=x))
        mixed = mixup_probe(x, size or 32, SEED)
        preds = tf.exp(network_predictions(LinearTarget(), params, mixed, "classification"))
        want = _kl_entropy(tf.reshape(preds, [4, -1]).numpy(), 2)
        assert float(got.metrics["function_entropy"]) == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_function_space_entropy_refuses_unknown_probe():
    with pytest.raises(ValueError, match="probe must be one of"):
        FunctionSpaceEntropy(probe="gaussian")


def test_function_space_entropy_conformance_with_smooth_noise(digits):
    run_regularizer_test(FunctionSpaceEntropy(weight=0.1, probe="smooth_noise", probe_size=8), *digits)


def _mlp(seed):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(6, activation="tanh"),
            keras.layers.Dense(3),
        ]
    )


def test_outlier_exposure_step_against_an_independent_tape():
    """One SGD step of baselines.OutlierExposure = one step on CE − weight·H computed by hand (NumPy entropy of
    the model's softmax on the same probes, gradient by a separate tape), at float32."""
    import keras

    from hyperkeras.baselines import OutlierExposure

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 4, 4, 1)).astype("float32")
    y = rng.integers(0, 3, size=8).astype("int32")
    weight, lr = 0.7, 0.1
    reference = _mlp(1)
    model = OutlierExposure(_mlp(1), weight=weight, probe="smooth_noise", probe_size=5, seed=11)
    model.build((None, 4, 4, 1))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=loss)

    probes_x = probes.make_probes("smooth_noise", tf.constant(x), 5, tf.constant([11, 0], tf.int32))
    logits = reference(probes_x).numpy().astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    h_numpy = float(np.mean(-(p * np.log(p)).sum(-1)))
    np.testing.assert_allclose(float(model.outlier_entropy(tf.constant(x), 0)), h_numpy, rtol=1e-5)

    with tf.GradientTape() as tape:
        ce = loss(y, reference(x, training=True))
        probe_logits = reference(probes_x, training=False)
        q = tf.nn.softmax(probe_logits)
        h = tf.reduce_mean(-tf.reduce_sum(q * tf.math.log(q), -1))
        total = ce - weight * h
    grads = tape.gradient(total, reference.trainable_variables)
    expected = [v.numpy() - lr * g.numpy() for v, g in zip(reference.trainable_variables, grads)]
    logs = model.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["outlier_entropy"], h_numpy, rtol=1e-5)
    for got, want in zip(model.model.trainable_variables, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_outlier_exposure_refuses_bad_arguments():
    from hyperkeras.baselines import OutlierExposure

    with pytest.raises(TypeError, match="keras.Model"):
        OutlierExposure("deutsch_mnist")
    with pytest.raises(ValueError, match="weight"):
        OutlierExposure(_mlp(0), weight=-1.0)
    with pytest.raises(ValueError, match="probe must be"):
        OutlierExposure(_mlp(0), probe="gaussian_blobs")
    with pytest.raises(ValueError, match="probe_size"):
        OutlierExposure(_mlp(0), probe_size=0)

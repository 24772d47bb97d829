"""TargetNetwork on any Keras model: random architectures against the plain Keras model holding the same
weights, both paths (reference `stateless_call` and the chain fast path) against each other, state,
randomness, and the errors for what it cannot run."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hyperkeras as hk
from hyperkeras import ensembles

SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _random_params(target, k, seed=0, scale=0.3):
    rng = np.random.RandomState(seed)
    return {s.name: tf.constant(rng.randn(k, *s.shape).astype("float32") * scale) for s in target.param_specs}


# ---------------------------------------------------------------------- random architectures
_ACTS = ["relu", "tanh", "linear", "softmax", "gelu", "sigmoid"]


@st.composite
def architectures(draw):
    """A functional model of the supported layer set: chains and residual/concat graphs, with and
    without BatchNormalization, Dropout and softmax heads. Returns (model, has_dropout)."""
    image = draw(st.booleans())
    names = iter(f"l{i}" for i in range(100))
    inp = keras.Input(
        (draw(st.integers(5, 8)), draw(st.integers(5, 8)), draw(st.integers(1, 3)))
        if image
        else (draw(st.integers(3, 7)),)
    )
    h, dropout = inp, False
    for _ in range(draw(st.integers(1, 4))):
        block = draw(st.sampled_from(["weighted", "bn", "dropout", "residual", "concat", "pool", "act", "ln"]))
        width = draw(st.integers(2, 5))
        act = draw(st.sampled_from(_ACTS))
        weighted = (
            (
                lambda n, a=act: keras.layers.Conv2D(
                    n, draw(st.sampled_from([1, 2, 3])), padding="same", activation=a, name=next(names)
                )
            )
            if image
            else (lambda n, a=act: keras.layers.Dense(n, activation=a, name=next(names)))
        )
        if block == "weighted":
            h = weighted(width)(h)
        elif block == "bn":
            h = keras.layers.BatchNormalization(momentum=draw(st.sampled_from([0.0, 0.9])), name=next(names))(h)
        elif block == "dropout":
            h = keras.layers.Dropout(0.5, name=next(names))(h)
            dropout = True
        elif block == "residual":
            c = int(h.shape[-1])
            y = weighted(c)(h)
            y = keras.layers.BatchNormalization(name=next(names))(y)
            h = keras.layers.Add(name=next(names))([h, y])
        elif block == "concat":
            h = keras.layers.Concatenate(name=next(names))([weighted(width)(h), weighted(width)(h)])
        elif block == "pool" and image and h.shape[1] >= 2 and h.shape[2] >= 2:
            h = keras.layers.MaxPooling2D(2, name=next(names))(h)
        elif block == "act":
            h = keras.layers.Activation(act, name=next(names))(h)
        elif block == "ln":
            h = keras.layers.LayerNormalization(name=next(names))(h)
    if image:
        h = (keras.layers.Flatten if draw(st.booleans()) else keras.layers.GlobalAveragePooling2D)(name=next(names))(h)
    out = keras.layers.Dense(
        draw(st.integers(2, 4)), activation=draw(st.sampled_from([None, "softmax"])), name=next(names)
    )(h)
    return keras.Model(inp, out), dropout


@SETTINGS
@given(
    arch=architectures(),
    k=st.integers(1, 3),
    b=st.integers(1, 10),
    shared=st.booleans(),
    training=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_random_architectures_equal_their_keras_models(arch, k, b, shared, training, seed):
    model, dropout = arch
    training = training and not dropout  # with dropout active the masks are random: tested below
    rng = np.random.RandomState(seed)
    paths = [hk.TargetNetwork(model, fast_path=False)]
    for setting in ("auto", True):
        fast = hk.TargetNetwork(model, fast_path=setting)
        if fast.takes_fast_path(training):
            paths.append(fast)
    target = paths[0]
    params = _random_params(target, k, seed)
    shape = (b, *target.input_shape) if shared else (k, b, *target.input_shape)
    x = rng.randn(*shape).astype("float32")
    for t in paths:
        out = t.apply(params, x, training=training).numpy()
        assert out.shape == (k, b, *target.output_shape)
        for i in range(k):
            net = target.to_keras_model(params, i)
            ref = net(x if shared else x[i], training=training).numpy()
            np.testing.assert_allclose(out[i], ref, rtol=1e-4, atol=1e-4, err_msg=f"fast={t.has_fast_path} network {i}")


@SETTINGS
@given(arch=architectures(), shared=st.booleans(), seed=st.integers(0, 1000))
def test_random_architectures_gradients_equal_per_network_tapes(arch, shared, seed):
    """Every path's gradients (the fast path's with convolution gradients as forward convolutions) against
    Keras's own tape on each plain network."""
    model, _ = arch
    k, b = 2, 4
    targets = [hk.TargetNetwork(model, fast_path=setting) for setting in (False, "auto", True)]
    target = targets[0]
    params = {n: tf.Variable(v) for n, v in _random_params(target, k, seed).items()}
    rng = np.random.RandomState(seed)
    x = rng.randn(*((b,) if shared else (k, b)), *target.input_shape).astype("float32")
    w = tf.constant(np.random.RandomState(seed + 1).randn(k, b, *target.output_shape).astype("float32"))
    refs = []
    for i in range(k):
        net = target.to_keras_model({n: v.numpy() for n, v in params.items()}, i)
        with tf.GradientTape() as tape:
            ref_loss = tf.reduce_sum(net(x if shared else x[i], training=False) * w[i])
        refs.append(tape.gradient(ref_loss, net.trainable_variables))
    for t in targets:
        if t is not target and not t.takes_fast_path():
            continue
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(t.apply(params, x) * w)
        grads = tape.gradient(loss, params)
        for i in range(k):
            for spec, g in zip(target.param_specs, refs[i]):
                np.testing.assert_allclose(
                    grads[spec.name][i].numpy(), g.numpy(), rtol=1e-3, atol=1e-4, err_msg=f"{t.fast_path} {spec.name}"
                )


# ---------------------------------------------------------------------- the fast path against the reference
def test_default_path_gradients_through_a_conv_chain_equal_keras_tapes():
    """Per-network batches take the plan by default, whose convolution gradients are forward convolutions:
    a chain of SAME convolutions (odd kernels: allow-listed; a strided and an even one: not) against Keras's
    tape on each plain network, gradients w.r.t. every weight and the input."""
    inp = keras.Input((12, 10, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(5, 5, padding="same", activation="tanh", name="c2")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Conv2D(3, (1, 3), padding="same", name="c3")(h)
    h = keras.layers.Conv2D(4, 2, padding="same", name="c4")(h)
    h = keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="relu", name="c5")(h)
    out = keras.layers.Dense(3, name="out")(keras.layers.Flatten(name="flat")(h))
    model = keras.Model(inp, out)
    target = hk.TargetNetwork(model)
    assert target.takes_fast_path(training=True)
    k, b = 3, 5
    params = {n: tf.Variable(v) for n, v in _random_params(target, k, seed=7).items()}
    x = tf.constant(np.random.RandomState(8).randn(k, b, 12, 10, 2).astype("float32"))
    w = tf.constant(np.random.RandomState(9).randn(k, b, 3).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.sin(target.apply(params, x, training=True)) * w)
    grads = tape.gradient(loss, [params, x])
    for i in range(k):
        net = target.to_keras_model({n: v.numpy() for n, v in params.items()}, i)
        xi = x[i]
        with tf.GradientTape() as tape:
            tape.watch(xi)
            ref_loss = tf.reduce_sum(tf.sin(net(xi, training=True)) * w[i])
        ref = tape.gradient(ref_loss, [net.trainable_variables, xi])
        for spec, g in zip(target.param_specs, ref[0]):
            scale = float(np.abs(g.numpy()).max())
            np.testing.assert_allclose(grads[0][spec.name][i].numpy(), g.numpy(), rtol=0, atol=1e-5 * scale + 1e-7)
        np.testing.assert_allclose(grads[1][i].numpy(), ref[1].numpy(), rtol=0, atol=1e-5 * float(np.abs(ref[1]).max()))


@pytest.mark.parametrize("name", ["deutsch_mnist", "hypergan_mnist"])
@pytest.mark.parametrize("fill", ["nan", "inf", "partial_nan"])
@pytest.mark.parametrize("shared", [True, False])
def test_fast_path_gives_what_the_reference_gives_for_non_finite_inputs(name, fill, shared):
    """fast_path=True, shared batch: the plan's moved pools are exact for finite values only, and a finite
    check hands other inputs to the reference. The default ("auto") runs the model's own op order: no check."""
    model = hk.targets.build_model(name, seed=0)
    fast, ref = hk.TargetNetwork(model, fast_path=True), hk.TargetNetwork(model, fast_path=False)
    default = hk.TargetNetwork(model)
    assert default.takes_fast_path()
    params = _random_params(ref, 3, scale=0.1)
    x = np.random.RandomState(0).rand(*(() if shared else (3,)), 4, 28, 28, 1).astype("float32")
    images = x if shared else x[1]
    if fill == "partial_nan":
        images[1, 3:9, 5:7] = np.nan
    else:
        images[:2] = np.nan if fill == "nan" else np.inf
    b = ref.apply(params, x).numpy()
    for a in (fast.apply(params, x).numpy(), default.apply(params, x).numpy()):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a[np.isfinite(b)], b[np.isfinite(b)], rtol=1e-5, atol=1e-5)
    k = 0 if shared else 1
    if fill != "partial_nan":
        assert not np.isfinite(b[k, :2]).all()
    # The plain Keras model is the final word.
    np.testing.assert_array_equal(np.isnan(b[k]), np.isnan(ref.to_keras_model(params, k)(images).numpy()))


def test_softmax_first_layer_does_not_mix_networks():
    """Regression: the wide first layer once applied softmax across all K networks' channels."""
    models = []
    for s in range(3):
        models.append(
            keras.Sequential(
                [
                    keras.Input((6,)),
                    keras.layers.Dense(
                        3, activation="softmax", kernel_initializer=keras.initializers.GlorotUniform(seed=s)
                    ),
                ]
            )
        )
    x = np.random.RandomState(0).randn(5, 6).astype("float32")
    pred = ensembles.predict(models, x)
    np.testing.assert_allclose(pred.mean_probs.sum(-1), 1.0, rtol=1e-5)
    expected = np.mean([m(x).numpy() for m in models], axis=0)
    np.testing.assert_allclose(pred.mean_probs, expected, rtol=1e-5, atol=1e-6)
    target = hk.TargetNetwork(models[0], fast_path=True)
    params = ensembles.stack_params(models)
    np.testing.assert_allclose(target.apply(params, x).numpy().sum(-1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------------- params and inputs
def test_numpy_params_integer_inputs_and_tf_function():
    inp = keras.Input((7,), dtype="int32")
    h = keras.layers.Embedding(20, 4, name="emb")(inp)
    h = keras.layers.GRU(5, name="gru")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(h))
    target = hk.TargetNetwork(model)
    assert [s.name for s in target.plain_specs] == [
        "emb/embeddings",
        "gru/gru_cell/kernel",
        "gru/gru_cell/recurrent_kernel",
        "gru/gru_cell/bias",
    ]
    params = {n: t.numpy() for n, t in _random_params(target, 2).items()}  # NumPy arrays
    ids = np.random.RandomState(0).randint(0, 20, size=(3, 7)).astype("int32")
    out = target.apply(params, ids).numpy()
    mapped = hk.TargetNetwork(model, unroll_limit=0)
    dyn = tf.function(
        lambda p, x: mapped.apply(p, x),
        input_signature=[
            {s.name: tf.TensorSpec([None, *s.shape]) for s in target.param_specs},
            tf.TensorSpec([None, 7], tf.int32),
        ],
    )
    np.testing.assert_allclose(dyn(params, ids).numpy(), out, rtol=1e-5, atol=1e-6)
    for i in range(2):
        np.testing.assert_allclose(out[i], target.to_keras_model(params, i)(ids).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="int32"):
        target.apply(params, ids.astype("float32"))


def test_names_are_stable_across_keras_save_and_load(tmp_path):
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3, name="c")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inp, keras.layers.Dense(2, name="d")(h))
    path = str(tmp_path / "m.keras")
    model.save(path)
    a, b = hk.TargetNetwork(model), hk.TargetNetwork(keras.models.load_model(path))
    assert (
        [s.name for s in a.param_specs]
        == [s.name for s in b.param_specs]
        == ["c/kernel", "c/bias", "bn/gamma", "bn/beta", "d/kernel", "d/bias"]
    )
    assert [s.name for s in a.state_specs] == ["bn/moving_mean", "bn/moving_variance"]


# ---------------------------------------------------------------------- the stacked dense tail
def _op_types(target, params, x, training):
    graph = tf.function(lambda: target.apply(params, x, training=training)).get_concrete_function().graph
    return [op.type for op in graph.get_operations()]


def _deutsch_like():
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="c")(inp)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(5, activation="tanh", name="d1")(h)
    h = keras.layers.Dropout(0.5, name="drop")(h)
    h = keras.layers.LeakyReLU(0.2, name="leaky")(h)
    return keras.Model(inp, keras.layers.Dense(4, activation="softmax", name="d2")(h))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("setting", ["auto", True])
def test_trailing_dense_layers_run_stacked_and_equal_keras(shared, setting):
    """After the Flatten, both Dense layers (and the inactive dropout and the activation between them)
    run as one batched matmul each for all K networks, with each network's own Keras result."""
    model = _deutsch_like()
    target = hk.TargetNetwork(model, fast_path=setting)
    rng = np.random.RandomState(1)

    def inputs(k):
        return _random_params(target, k, seed=3), rng.randn(*((6, 8, 8, 1) if shared else (k, 6, 8, 8, 1)))

    def matmuls(k, training):  # (batched, plain) matrix products in the traced graph
        ops = _op_types(target, *inputs(k), training=training)
        return ops.count("BatchMatMulV2"), ops.count("MatMul")

    # one batched product per Dense layer, whatever K (a shared input's first convolution may be a
    # matmul on patches: the same number of them for any K)
    assert matmuls(2, False) == matmuls(5, False) and matmuls(5, False)[0] == 2
    params, x = inputs(4)
    x = x.astype("float32")
    out = target.apply(params, x).numpy()
    for i in range(4):
        ref = target.to_keras_model(params, i)(x if shared else x[i]).numpy()
        np.testing.assert_allclose(out[i], ref, rtol=1e-5, atol=1e-6)
    # with the dropout active (fast_path=True trains through the plan), the tail starts after it: d1 runs
    # once per network
    if setting is True:
        (b2, m2), (b5, m5) = matmuls(2, True), matmuls(5, True)
        assert b2 == b5 == 1 and m5 - m2 == 3


def test_dense_on_sequences_stays_per_network():
    """A Dense on a per-network [B, T, d] input is no matrix product of stacked matrices: no stacked tail."""
    inp = keras.Input((5, 3))
    h = keras.layers.Dense(4, activation="relu", name="d1")(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="d2")(h))
    target = hk.TargetNetwork(model)
    params = _random_params(target, 3, seed=4)
    x = np.random.RandomState(2).randn(3, 7, 5, 3).astype("float32")
    assert "BatchMatMulV2" not in _op_types(target, params, x, training=False)
    out = target.apply(params, x).numpy()
    for i in range(3):
        np.testing.assert_allclose(out[i], target.to_keras_model(params, i)(x[i]).numpy(), rtol=1e-5, atol=1e-6)


def test_stacked_tail_gradients_equal_per_network_tapes():
    model = _deutsch_like()
    target = hk.TargetNetwork(model)
    k = 3
    params = {n: tf.Variable(v) for n, v in _random_params(target, k, seed=5).items()}
    x = np.random.RandomState(3).randn(k, 6, 8, 8, 1).astype("float32")
    y = np.random.RandomState(4).randint(0, 4, (k, 6))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, target.apply(params, x)))
    grads = tape.gradient(loss, params)
    for i in range(k):
        net = target.to_keras_model({n: v.numpy() for n, v in params.items()}, i)
        with tf.GradientTape() as tape:
            ref_loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y[i], net(x[i])))
        ref = dict(zip([w.path for w in net.trainable_weights], tape.gradient(ref_loss, net.trainable_weights)))
        for name, g in grads.items():
            np.testing.assert_allclose(g[i].numpy(), ref[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


# ---------------------------------------------------------------------- state
def _bn_model(momentum=0.9):
    inp = keras.Input((5,))
    h = keras.layers.Dense(4, name="d1")(inp)
    h = keras.layers.BatchNormalization(momentum=momentum, name="bn")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="d2")(keras.layers.ReLU()(h)))


def test_training_updates_each_networks_own_state_like_keras():
    model = _bn_model()
    target = hk.TargetNetwork(model)
    params = _random_params(target, 3)
    state = target.initial_state(3)
    x = np.random.RandomState(0).randn(6, 5).astype("float32")
    out, new = target.apply(params, x, training=True, state=state, return_state=True)
    for i in range(3):
        net = target.to_keras_model(params, i)
        np.testing.assert_allclose(out[i].numpy(), net(x, training=True).numpy(), rtol=1e-5, atol=1e-5)
        bn = net.get_layer("bn")
        np.testing.assert_allclose(new["bn/moving_mean"][i].numpy(), bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            new["bn/moving_variance"][i].numpy(), bn.moving_variance.numpy(), rtol=1e-5, atol=1e-6
        )
    assert not np.allclose(new["bn/moving_mean"][0], new["bn/moving_mean"][1])  # networks keep their own state


def test_calibrate_state_is_each_networks_precise_batch_norm():
    model = _bn_model(momentum=0.99)
    target = hk.TargetNetwork(model)
    params = _random_params(target, 2)
    data = np.random.RandomState(1).randn(50, 5).astype("float32")
    state = target.calibrate_state(params, data, batch_size=20)  # batches of 20, 20, 10
    for i in range(2):
        h = [data[j : j + 20] @ params["d1/kernel"][i].numpy() + params["d1/bias"][i].numpy() for j in (0, 20, 40)]
        np.testing.assert_allclose(state["bn/moving_mean"][i], np.mean([b.mean(0) for b in h], 0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            state["bn/moving_variance"][i], np.mean([b.var(0) for b in h], 0), rtol=1e-4, atol=1e-5
        )
        net = target.to_keras_model(params, i, state=state)
        np.testing.assert_allclose(
            target.apply(params, data, state=state)[i].numpy(), net(data).numpy(), rtol=1e-5, atol=1e-5
        )
    ds = tf.data.Dataset.from_tensor_slices((data, np.zeros(50))).batch(20)
    again = target.calibrate_state(params, ds)
    np.testing.assert_allclose(again["bn/moving_mean"], state["bn/moving_mean"], rtol=1e-6)


# ---------------------------------------------------------------------- randomness
@pytest.mark.parametrize("fast_path", [False, True])
def test_dropout_draws_an_independent_mask_per_network(fast_path):
    model = keras.Sequential(
        [
            keras.Input((200,)),
            keras.layers.Dropout(0.5, name="drop"),
            keras.layers.Dense(200, use_bias=False, name="id"),
        ]
    )
    target = hk.TargetNetwork(model, fast_path=fast_path)
    params = {"id/kernel": tf.repeat(tf.eye(200)[None], 4, axis=0)}  # four identical networks
    x = np.ones((2, 200), "float32")
    out = target.apply(params, x, training=True, seed=3).numpy()
    masks = out != 0
    assert 0.35 < masks.mean() < 0.65
    for i in range(4):
        for j in range(i):
            assert (masks[i] != masks[j]).mean() > 0.3, (i, j)
    np.testing.assert_array_equal(out, target.apply(params, x, training=True, seed=3).numpy())
    assert (target.apply(params, x, training=True, seed=4).numpy() != out).any()
    np.testing.assert_array_equal(target.apply(params, x).numpy(), np.ones((4, 2, 200)))


# ---------------------------------------------------------------------- models of other kinds, and errors
class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d1 = keras.layers.Dense(4, activation="relu", name="d1")
        self.d2 = keras.layers.Dense(2, name="d2")

    def call(self, x, training=False):
        return self.d2(self.d1(x))


class _WeightsInCall(keras.layers.Layer):
    def call(self, x):
        return x * self.add_weight(shape=(x.shape[-1],), initializer="ones")


def test_subclassed_models_and_clear_errors():
    sub = _Subclassed()
    sub.build((None, 3))
    target = hk.TargetNetwork(sub)
    assert target.input_shape == (3,) and target.output_shape == (2,)
    params = _random_params(target, 2)
    x = np.random.RandomState(0).randn(4, 3).astype("float32")
    out = target.apply(params, x).numpy()
    for i in range(2):
        h = np.maximum(x @ params["d1/kernel"][i].numpy() + params["d1/bias"][i].numpy(), 0)
        np.testing.assert_allclose(
            out[i], h @ params["d2/kernel"][i].numpy() + params["d2/bias"][i].numpy(), rtol=1e-5, atol=1e-5
        )

    a, b = keras.Input((3,)), keras.Input((3,))
    with pytest.raises(ValueError, match="one input and one output"):
        hk.TargetNetwork(keras.Model([a, b], keras.layers.Add()([keras.layers.Dense(2)(a), keras.layers.Dense(2)(b)])))
    bad = keras.Sequential([keras.layers.Dense(3, name="d"), _WeightsInCall(name="bad")])
    with pytest.raises(ValueError, match="new elements of state|creates variables every time"):
        bad.build((None, 3))  # Keras itself refuses a layer that makes weights in call() ...
        hk.TargetNetwork(bad)  # ... and so does TargetNetwork, should Keras let it through
    with pytest.raises(ValueError, match="built"):
        hk.TargetNetwork(keras.Sequential([keras.layers.Dense(3)]))
    with pytest.raises(ValueError, match=r"state\['bn/moving_mean'\] has shape"):
        t = hk.TargetNetwork(_bn_model())
        t.apply(
            _random_params(t, 2),
            np.zeros((3, 5), "float32"),
            state={"bn/moving_mean": np.zeros((2, 7)), "bn/moving_variance": np.ones((2, 4))},
        )
    with pytest.raises(ValueError, match="fast_path"):
        hk.TargetNetwork(_bn_model(), fast_path="sometimes")


def test_apply_under_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    model = _bn_model()
    target = hk.TargetNetwork(model)
    params = _random_params(target, 2)
    x = np.random.RandomState(0).randn(4, 5).astype("float32")
    out = strategy.run(tf.function(lambda p, x: target.apply(p, x, training=True)), args=(params, x))
    out = strategy.experimental_local_results(out)[0].numpy()
    for i in range(2):
        np.testing.assert_allclose(
            out[i], target.to_keras_model(params, i)(x, training=True).numpy(), rtol=1e-5, atol=1e-5
        )


def test_deep_ensemble_of_batchnorm_models_uses_each_models_own_statistics():
    models = []
    for s in range(3):
        m = _bn_model()
        rng = np.random.RandomState(s)
        m.get_layer("bn").moving_mean.assign(rng.randn(4).astype("float32"))
        m.get_layer("bn").moving_variance.assign(rng.rand(4).astype("float32") + 0.5)
        m.set_weights([rng.randn(*w.shape).astype("float32") if w.ndim > 1 else w for w in m.get_weights()])
        models.append(m)
    x = np.random.RandomState(9).randn(7, 5).astype("float32")
    members = ensembles.as_members(models)
    assert isinstance(members, ensembles.TargetMembers) and members.state is not None
    pred = ensembles.predict(members, x, chunk_size=2)  # a padded last chunk too
    expected = np.mean([tf.nn.softmax(m(x)).numpy() for m in models], axis=0)
    np.testing.assert_allclose(pred.mean_probs, expected, rtol=1e-5, atol=1e-6)


def test_weightless_layers_the_old_chain_parser_refused_simply_work():
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Rescaling(0.5, offset=0.1, name="rescale")(inp)
    h = keras.layers.GaussianNoise(0.3, name="noise")(h)
    h = keras.layers.Conv2D(3, 3, padding="same", name="c")(h)
    h = keras.layers.SpatialDropout2D(0.5, name="sdrop")(h)
    h = keras.layers.UpSampling2D(2, name="up")(h)
    h = keras.layers.Lambda(lambda t: t * 2.0 - 1.0, name="lam")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inp, keras.layers.Dense(2, name="d")(h))
    target = hk.TargetNetwork(model)
    params = _random_params(target, 3)
    x = np.random.RandomState(0).randn(4, 6, 6, 2).astype("float32")
    out = target.apply(params, x).numpy()
    for i in range(3):
        np.testing.assert_allclose(out[i], target.to_keras_model(params, i)(x).numpy(), rtol=1e-5, atol=1e-5)
    same = {n: tf.repeat(v[:1], 3, axis=0) for n, v in params.items()}
    noisy = target.apply(same, x, training=True, seed=1).numpy()
    assert not np.allclose(noisy[0], noisy[1]) and not np.allclose(noisy[1], noisy[2])  # own noise per network


def _frozen_bn_model(second_bn):
    """Dense -> frozen BatchNorm (trainable=False, moving statistics of its own) [-> trainable BatchNorm] -> Dense."""
    inp = keras.Input((5,))
    h = keras.layers.Dense(4, name="d1")(inp)
    frozen = keras.layers.BatchNormalization(momentum=0.9, name="frozen")
    h = frozen(h)
    if second_bn:
        h = keras.layers.BatchNormalization(momentum=0.9, name="bn")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="d2")(h))
    frozen.moving_mean.assign([0.5, -0.3, 0.2, 0.1])
    frozen.moving_variance.assign([2.0, 0.5, 1.5, 0.8])
    frozen.gamma.assign([1.5, 0.7, 1.0, 2.0])
    frozen.trainable = False  # Keras runs it in inference mode and never updates it
    return model


@pytest.mark.parametrize("second_bn", [False, True])
def test_calibrate_state_keeps_a_frozen_batch_norm_as_keras_does(second_bn):
    model = _frozen_bn_model(second_bn)
    target = hk.TargetNetwork(model)
    params = _random_params(target, 2, scale=0.5)
    data = np.random.RandomState(1).randn(50, 5).astype("float32")
    state = target.calibrate_state(params, data, batch_size=20)  # batches of 20, 20, 10
    frozen = model.get_layer("frozen")
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(state[f"frozen/{name}"], np.stack([getattr(frozen, name).numpy()] * 2))
    for i in range(2):
        net = target.to_keras_model(params, i)  # the frozen layer's own statistics
        if second_bn:  # the trainable one: the mean batch statistics of its inputs (the frozen layer's outputs)
            h = keras.Model(net.inputs, net.get_layer("bn").input)(data).numpy()
            batches = [h[j : j + 20] for j in (0, 20, 40)]
            np.testing.assert_allclose(
                state["bn/moving_mean"][i], np.mean([b.mean(0) for b in batches], 0), rtol=1e-4, atol=1e-5
            )
            np.testing.assert_allclose(
                state["bn/moving_variance"][i], np.mean([b.var(0) for b in batches], 0), rtol=1e-4, atol=1e-5
            )
            net = target.to_keras_model(params, i, state=state)
        np.testing.assert_allclose(
            target.apply(params, data, state=state)[i].numpy(), net(data).numpy(), rtol=1e-5, atol=1e-5
        )

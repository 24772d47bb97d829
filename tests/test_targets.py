"""TargetNetwork against the plain Keras model holding the same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk


def _random_params(target, k, seed=0, scale=0.1):
    rng = np.random.RandomState(seed)
    return {s.name: tf.constant(rng.randn(k, *s.shape).astype("float32") * scale) for s in target.param_specs}


def _assign(model, target, params, k):
    for spec in target.param_specs:
        layer = model.get_layer(spec.layer)
        getattr(layer, spec.role).assign(params[spec.name][k])


def _mixed_model():
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(6, 3, strides=2, padding="valid", name="c1")(inp)
    h = keras.layers.LeakyReLU(0.2, name="lrelu")(h)
    h = keras.layers.AveragePooling2D(2, name="avg")(h)
    h = keras.layers.Conv2D(4, 2, padding="same", dilation_rate=2, activation="tanh", name="c2")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dropout(0.3, name="drop")(h)
    h = keras.layers.Dense(7, use_bias=False, name="d1")(h)
    h = keras.layers.Activation("elu", name="act")(h)
    h = keras.layers.ReLU(name="relu")(h)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    return keras.Model(inp, out)


def test_deutsch_target_has_table1_weight_count():
    target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist"))
    assert target.num_params == 20018
    assert [(l.num_filters, l.filter_size) for l in target.layers] == [(32, 26), (16, 801), (8, 785), (10, 9)]
    assert [s.name for s in target.param_specs][:2] == ["conv1/kernel", "conv1/bias"]


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", ["deutsch_mnist", "hypergan_mnist", "mlp", "mixed"])
@pytest.mark.parametrize("layout", ["shared", "per_network"])
def test_apply_matches_keras_model(name, layout, fast_path):
    if name == "mixed":
        model = _mixed_model()
    elif name == "mlp":
        model = hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(16, 12), dropout=0.5)
    elif name == "hypergan_mnist":  # conv, LeakyReLU layer, max-pool, dropout (pool runs first)
        model = hk.targets.build_model(name, dropout=0.3)
    else:
        model = hk.targets.build_model(name)
    target = hk.TargetNetwork(model, fast_path=fast_path)
    k, b = 3, 13  # 13 images: the wide first layer runs in slices of 8, the last one padded
    params = _random_params(target, k)
    rng = np.random.RandomState(1)
    if layout == "shared":
        x = rng.rand(b, *target.input_shape).astype("float32")
    else:
        x = rng.rand(k, b, *target.input_shape).astype("float32")
    out = target.apply(params, x).numpy()
    assert out.shape == (k, b) + target.output_shape
    for i in range(k):
        _assign(model, target, params, i)
        ref = model(x if layout == "shared" else x[i], training=False).numpy()
        np.testing.assert_allclose(out[i], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("layout", ["shared", "per_network"])
def test_map_fn_path_and_tf_function_match_unrolled(layout, fast_path):
    model = hk.targets.build_model("deutsch_mnist")
    unrolled = hk.TargetNetwork(model, fast_path=fast_path)
    mapped = hk.TargetNetwork(model, unroll_limit=0, fast_path=fast_path)
    k = 13  # two groups of 10 networks in the map_fn path, the second padded
    params = _random_params(unrolled, k)
    shape = (11, 28, 28, 1) if layout == "shared" else (k, 2, 28, 28, 1)
    x = np.random.RandomState(2).rand(*shape).astype("float32")
    a = unrolled.apply(params, x).numpy()
    b = mapped.apply(params, x).numpy()
    c = tf.function(lambda p, x: unrolled.apply(p, x))(params, x).numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, c, atol=1e-5)
    dyn = tf.function(
        lambda p, x: unrolled.apply(p, x),
        input_signature=[  # K and batch unknown when traced
            {s.name: tf.TensorSpec([None, *s.shape]) for s in unrolled.param_specs},
            tf.TensorSpec([None] * (len(shape) - 3) + [28, 28, 1]),
        ],
    )
    np.testing.assert_allclose(dyn(params, x).numpy(), a, atol=1e-5)
    for i in (0, k - 1):
        _assign(model, unrolled, params, i)
        ref = model(x if layout == "shared" else x[i]).numpy()
        np.testing.assert_allclose(b[i], ref, atol=1e-5)


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("layout", ["shared", "per_network"])
def test_gradients_equal_per_network_keras_gradients(layout, fast_path):
    model = hk.targets.build_model("deutsch_mnist")
    target = hk.TargetNetwork(model, fast_path=fast_path)
    k = 2
    params = {n: tf.Variable(v) for n, v in _random_params(target, k).items()}
    rng = np.random.RandomState(3)
    x = rng.rand(*((11,) if layout == "shared" else (k, 5)), 28, 28, 1).astype("float32")
    y = rng.randint(0, 10, size=(k, x.shape[-4]))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        logits = target.apply(params, x)
        loss = tf.add_n([loss_fn(y[i], logits[i]) for i in range(k)])
    grads = tape.gradient(loss, params)
    for i in range(k):
        _assign(model, target, {n: v.numpy() for n, v in params.items()}, i)
        with tf.GradientTape() as tape:
            ref_loss = loss_fn(y[i], model(x if layout == "shared" else x[i]))
        ref = tape.gradient(ref_loss, model.trainable_variables)
        by_name = {f"{v.path.split('/')[-2]}/{v.name}": g for v, g in zip(model.trainable_variables, ref)}
        for spec in target.param_specs:
            np.testing.assert_allclose(grads[spec.name][i].numpy(), by_name[spec.name].numpy(), atol=1e-5)


def _first_conv_model(variant):
    """A conv-first model whose first layer takes the patch (matmul) path or, for "deep", the convolution."""
    conv, pool, cin, size = {
        "same_pool3": (dict(filters=5, kernel_size=3, padding="same", activation="relu"), 3, 2, 13),
        "valid_dilated_odd": (
            dict(filters=4, kernel_size=3, padding="valid", dilation_rate=2, activation="tanh"),
            2,
            1,
            15,
        ),
        "strided_no_pool": (
            dict(filters=6, kernel_size=2, strides=2, padding="same", activation="sigmoid"),
            None,
            3,
            11,
        ),
        "pool_not_foldable": (dict(filters=3, kernel_size=3, padding="same", activation="relu"), "overlap", 1, 10),
        "deep": (dict(filters=4, kernel_size=5, padding="same", activation="relu"), 2, 4, 12),
        "large_image": (dict(filters=2, kernel_size=3, padding="same", activation="relu"), 2, 1, 90),
    }[variant]
    layers = [keras.Input((size, size, cin)), keras.layers.Conv2D(name="c1", **conv)]
    if pool == "overlap":
        layers.append(keras.layers.MaxPooling2D(2, strides=1, name="p1"))
    elif pool:
        layers.append(keras.layers.MaxPooling2D(pool, name="p1"))
    layers += [keras.layers.Flatten(), keras.layers.Dense(3, name="d1")]
    return keras.Sequential(layers)


@pytest.mark.parametrize(
    "variant, path",
    [
        ("same_pool3", "patches"),
        ("valid_dilated_odd", "patches"),
        ("strided_no_pool", "patches"),
        ("pool_not_foldable", "images"),
        ("deep", "images"),
        ("large_image", "images"),
    ],
)
def test_first_convolution_as_patch_matmul_matches_keras(variant, path):
    model = _first_conv_model(variant)
    target = hk.TargetNetwork(model, fast_path=True)
    k, b = 3, 19  # three slices of 8 images, the last padded
    params = _random_params(target, k, scale=0.3)
    x = np.random.RandomState(4).rand(b, *target.input_shape).astype("float32")
    assert target._fast._prepare_shared(tf.constant(x), False)[3][0] == path
    xv = tf.Variable(x)
    with tf.GradientTape() as tape:
        out = target.apply(params, xv)
        loss = tf.reduce_sum(out * tf.constant(np.random.RandomState(5).randn(*out.shape).astype("float32")))
    gx = tape.gradient(loss, xv).numpy()
    ref_gx = np.zeros_like(x)
    for i in range(k):
        _assign(model, target, params, i)
        xi = tf.Variable(x)
        with tf.GradientTape() as tape:
            ref = model(xi)
            ref_loss = tf.reduce_sum(ref * tf.constant(np.random.RandomState(5).randn(*out.shape).astype("float32")[i]))
        ref_gx += tape.gradient(ref_loss, xi).numpy()
        # float32 sums of 4,050 terms, outputs up to ~50: 2e-6 of the largest (3.6e-5 seen on one CPU)
        np.testing.assert_allclose(out[i].numpy(), ref.numpy(), rtol=1e-5, atol=2e-6 * float(np.abs(ref).max()))
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fast_path", [True, False])
def test_dropout_only_in_training_and_seeded(fast_path):
    model = hk.targets.build_model("mlp", input_shape=(10,), hidden=(32,), dropout=0.5)
    target = hk.TargetNetwork(model, fast_path=fast_path)
    params = _random_params(target, 2)
    x = np.random.RandomState(0).rand(4, 10).astype("float32")
    a = target.apply(params, x, training=False)
    np.testing.assert_allclose(a.numpy(), target.apply(params, x).numpy())
    t1 = target.apply(params, x, training=True, seed=7).numpy()
    t2 = target.apply(params, x, training=True, seed=7).numpy()
    np.testing.assert_allclose(t1, t2)
    assert not np.allclose(t1, a.numpy())
    # In the map_fn path too, every network gets its own mask (same params for all 12 networks).
    same = {n: tf.repeat(v[:1], 12, axis=0) for n, v in params.items()}
    masked = hk.TargetNetwork(model, unroll_limit=0, fast_path=fast_path).apply(same, x, training=True, seed=7).numpy()
    assert len({m.tobytes() for m in masked}) == 12


def test_flatten_unflatten_and_filter_layout():
    target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist"))
    params = _random_params(target, 2)
    flat = target.flatten(params)
    assert flat.shape == (2, 20018)
    back = target.unflatten(flat)
    for n in params:
        np.testing.assert_array_equal(back[n].numpy(), params[n].numpy())
    filters = target.to_filters(params)
    k = params["conv2/kernel"].numpy()
    b = params["conv2/bias"].numpy()
    f = 5
    np.testing.assert_array_equal(filters["conv2"][1, f].numpy(), np.concatenate([k[1, ..., f].ravel(), [b[1, f]]]))
    again = target.from_filters(filters)
    for n in params:
        np.testing.assert_array_equal(again[n].numpy(), params[n].numpy())
    # The layout that gauge fixing relies on: dense1's kernel rows grouped by conv2's filters.
    d1 = target.layers[2]
    assert d1.input_channels == 16 and d1.ops_before == ("activation:relu", "MaxPooling2D", "Flatten")
    assert all(l.homogeneous_before for l in target.layers)


def test_to_keras_model_roundtrips_through_keras_file(tmp_path):
    target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist"))
    params = _random_params(target, 3)
    x = np.random.RandomState(4).rand(2, 28, 28, 1).astype("float32")
    net = target.to_keras_model(params, index=1)
    np.testing.assert_allclose(net(x).numpy(), target.apply(params, x)[1].numpy(), atol=1e-5)
    path = str(tmp_path / "net.keras")
    net.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), net(x).numpy(), atol=1e-6)
    with pytest.raises(IndexError):
        target.to_keras_model(params, index=3)


def test_bad_inputs_get_clear_errors():
    inp = keras.Input((4,))
    a = keras.layers.Dense(3, name="a")(inp)
    b = keras.layers.Dense(3, name="b")(inp)
    with pytest.raises(ValueError, match="one input and one output"):
        hk.TargetNetwork(keras.Model(inp, [a, b]))
    inp2 = keras.Input((4,))
    with pytest.raises(ValueError, match="one input and one output"):
        hk.TargetNetwork(keras.Model([inp, inp2], keras.layers.Add()([a, keras.layers.Dense(3)(inp2)])))
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(6,), hidden=(5,)))
    params = _random_params(target, 2)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 6\]"):
        target.apply(params, np.zeros((6,), "float32"))
    with pytest.raises(ValueError, match="example shape"):
        target.apply(params, np.zeros((3, 7), "float32"))
    with pytest.raises(ValueError, match="missing"):
        target.apply({"dense1/kernel": params["dense1/kernel"]}, np.zeros((3, 6), "float32"))
    bad = dict(params, **{"dense1/kernel": tf.zeros([2, 6, 4])})
    with pytest.raises(ValueError, match=r"dense1/kernel.*expected \[K, 6, 5\]"):
        target.apply(bad, np.zeros((3, 6), "float32"))
    with pytest.raises(ValueError, match="per-network batches"):
        target.apply(params, np.zeros((3, 4, 6), "float32"))
    with pytest.raises(ValueError, match=f"unflatten expects \\[K, {target.num_params}\\]"):
        target.unflatten(tf.zeros([2, 3]))
    with pytest.raises(ValueError, match="unknown target"):
        hk.targets.build_model("nope")


# ---------------------------------------------------------------------- layer losses, per-network counts
def _regularised_model():
    """Kernel, bias and activity regularisers, a BatchNormalization in between."""
    inp = keras.Input((5,))
    h = keras.layers.Dense(
        4, name="d1", kernel_regularizer=keras.regularizers.L2(0.1), activity_regularizer=keras.regularizers.L1(0.05)
    )(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="d2", bias_regularizer=keras.regularizers.L2(0.2))(h))


def _keras_losses(net, x, training):
    """The sum of `net.losses` after calling the plain Keras model on `x`."""
    net(x, training=training)
    return float(sum(float(v) for v in net.losses))


class _FixedGenerator(hk.generators.Generator):
    """Generates the same K networks whatever the noise (so that the test knows their weights)."""

    def __init__(self, params, **kwargs):
        super().__init__(**kwargs)
        self.noise_dim, self.params = 2, params

    def build(self, input_shape=None):
        self.built = True

    def generate(self, target, noise, training=False):
        return self.params


@pytest.mark.parametrize("unroll_limit", [128, 0])
@pytest.mark.parametrize("layout", ["shared", "per_network"])
def test_layer_losses_are_those_of_each_networks_keras_model(layout, unroll_limit):
    target = hk.TargetNetwork(_regularised_model(), unroll_limit=unroll_limit)
    assert target.has_layer_losses
    k = 3
    params = _random_params(target, k, scale=0.5)
    rng = np.random.RandomState(1)
    x = rng.randn(*((7,) if layout == "shared" else (k, 7)), 5).astype("float32")
    for training in (False, True):
        out, losses = target.apply(params, x, training=training, return_losses=True)
        assert losses.shape == (k,)
        for i in range(k):
            net = target.to_keras_model(params, i)
            xi = x if layout == "shared" else x[i]
            np.testing.assert_allclose(out[i].numpy(), net(xi, training=training).numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(float(losses[i]), _keras_losses(net, xi, training), rtol=1e-5)


def test_fast_path_is_only_for_models_without_layer_losses():
    assert not hk.TargetNetwork(_regularised_model(), fast_path=True).has_fast_path
    plain = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(6,), hidden=(5,)), fast_path=True)
    assert plain.has_fast_path and not plain.has_layer_losses
    params = _random_params(plain, 2)
    x = np.random.RandomState(0).rand(3, 6).astype("float32")
    out, losses = plain.apply(params, x, return_losses=True)
    np.testing.assert_array_equal(losses.numpy(), [0.0, 0.0])
    np.testing.assert_array_equal(out.numpy(), plain.apply(params, x).numpy())


@pytest.mark.parametrize("unroll_limit", [128, 0])
def test_counts_run_each_network_on_its_real_examples_only(unroll_limit):
    target = hk.TargetNetwork(_regularised_model(), unroll_limit=unroll_limit)
    k, counts = 3, [4, 2, 0]
    params = _random_params(target, k, scale=0.5)
    x = np.random.RandomState(2).randn(k, 4, 5).astype("float32")
    x[1, 2:] = 100.0  # padding slots: they must not reach batch statistics or the activity regulariser
    state = target.initial_state(k)
    out, new, losses = target.apply(
        params, x, training=True, state=state, return_state=True, return_losses=True, counts=counts
    )
    for i in range(2):
        net = target.to_keras_model(params, i)
        xi = x[i, : counts[i]]
        np.testing.assert_allclose(out[i, : counts[i]].numpy(), net(xi, training=True).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out[i, counts[i] :].numpy(), 0.0)
        bn = net.get_layer("bn")
        np.testing.assert_allclose(new["bn/moving_mean"][i].numpy(), bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(losses[i]), _keras_losses(net, xi, True), rtol=1e-5)
    np.testing.assert_array_equal(out[2].numpy(), 0.0)  # no examples: an empty batch
    with pytest.raises(ValueError, match="per-network batches"):
        target.apply(params, x[0], counts=counts)
    with pytest.raises(tf.errors.InvalidArgumentError, match="counts must lie in"):
        target.apply(params, x, counts=[4, 5, 0])


@pytest.mark.parametrize("shared_batch", [True, False])
def test_hypernetwork_loss_adds_the_mean_layer_losses_of_the_networks(shared_batch):
    target = hk.TargetNetwork(_regularised_model())
    k = 3
    params = _random_params(target, k, scale=0.5)
    model = hk.models.Hypernetwork(target, _FixedGenerator(params), num_networks=k, shared_batch=shared_batch)
    rng = np.random.RandomState(3)
    x, y = rng.randn(10, 5).astype("float32"), rng.randint(0, 3, 10)  # K does not divide B: blocks of 4, 3, 3
    blocks = [x] * k if shared_batch else [x[:4], x[4:7], x[7:]]
    for training in (True, False):
        out = model.compute_losses(x, y, training=training)
        ref = np.mean([_keras_losses(target.to_keras_model(params, i), blocks[i], training) for i in range(k)])
        np.testing.assert_allclose(float(out["loss"] - out["task_loss"]), ref, rtol=1e-5)
        np.testing.assert_allclose(float(out["target_losses"]), ref, rtol=1e-5)


def test_hypernetwork_task_loss_with_per_network_blocks_uses_only_each_networks_examples():
    model_bn = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Dense(3, name="d2"),
        ]
    )
    target = hk.TargetNetwork(model_bn)
    k = 3
    params = _random_params(target, k, scale=0.5)
    model = hk.models.Hypernetwork(target, _FixedGenerator(params), num_networks=k, shared_batch=False)
    rng = np.random.RandomState(4)
    x, y = rng.randn(10, 5).astype("float32"), rng.randint(0, 3, 10)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    total = 0.0
    for i, (start, stop) in enumerate([(0, 4), (4, 7), (7, 10)]):  # split_indices' blocks
        total += float(loss_fn(y[start:stop], target.to_keras_model(params, i)(x[start:stop], training=True)))
    out = model.compute_losses(x, y, training=True)
    np.testing.assert_allclose(float(out["task_loss"]), total / len(x), rtol=1e-5)
    assert "target_losses" not in out  # the target has no layer losses


# ---------------------------------------------------------------------- mixed precision
@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_mixed_precision_unrolled_and_mapped_paths_give_the_keras_model_output(policy):
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, name="d1", activation="relu")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="d2")(h))
    unrolled = hk.TargetNetwork(model)
    mapped = hk.TargetNetwork(model, unroll_limit=4)
    k = 12  # two groups of 10 in the map_fn path
    params = _random_params(unrolled, k, scale=0.5)
    x = np.random.RandomState(5).randn(5, 6).astype("float32")
    a, b = unrolled.apply(params, x), mapped.apply(params, x)
    assert a.dtype == b.dtype == policy.split("_")[1]
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    for i in (0, k - 1):
        np.testing.assert_array_equal(b[i].numpy(), unrolled.to_keras_model(params, i)(x).numpy())
    (oa, sa), (ob, sb) = (
        t.apply(params, x, training=True, state=t.initial_state(k), return_state=True) for t in (unrolled, mapped)
    )
    np.testing.assert_array_equal(oa.numpy(), ob.numpy())
    for name in sa:
        assert sb[name].dtype == "float32"
        np.testing.assert_array_equal(sa[name].numpy(), sb[name].numpy())
    # The chain fast path computes in the params' dtype: not taken under mixed precision.
    assert not hk.TargetNetwork(
        hk.targets.build_model("mlp", input_shape=(6,), hidden=(5,)), fast_path=True
    ).has_fast_path


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_fast_path_refuses_values_other_than_auto_true_false(bad):
    model = hk.targets.build_model("mlp", input_shape=(6,), hidden=(5,))
    with pytest.raises(ValueError, match='fast_path must be "auto", True or False'):
        hk.TargetNetwork(model, fast_path=bad)
    assert hk.TargetNetwork(model).fast_path == "auto"

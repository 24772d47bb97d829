"""TargetNetwork against the plain Keras model holding the same weights."""
import numpy as np
import pytest
import tensorflow as tf
import keras

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
    dyn = tf.function(lambda p, x: unrolled.apply(p, x), input_signature=[  # K and batch unknown when traced
        {s.name: tf.TensorSpec([None, *s.shape]) for s in unrolled.param_specs},
        tf.TensorSpec([None] * (len(shape) - 3) + [28, 28, 1])])
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
        "valid_dilated_odd": (dict(filters=4, kernel_size=3, padding="valid", dilation_rate=2, activation="tanh"), 2, 1, 15),
        "strided_no_pool": (dict(filters=6, kernel_size=2, strides=2, padding="same", activation="sigmoid"), None, 3, 11),
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


@pytest.mark.parametrize("variant, path", [("same_pool3", "patches"), ("valid_dilated_odd", "patches"),
                                           ("strided_no_pool", "patches"), ("pool_not_foldable", "images"),
                                           ("deep", "images"), ("large_image", "images")])
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
        np.testing.assert_allclose(out[i].numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)  # float32 sums of 4,050 terms
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

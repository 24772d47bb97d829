"""Static hypernetwork layers: KernelGenerator against its formula, tiling, equivalence with Conv2D/Dense,
config round trips, `.keras` save/load with a shared generator, SavedModel export."""

import inspect
import os
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from hyperkeras.layers import HyperConv2D, HyperDense, KernelGenerator


def _randomize(layer, seed=0, scale=0.3):
    rng = np.random.RandomState(seed)
    layer.set_weights([rng.normal(0, scale, w.shape).astype("float32") for w in layer.get_weights()])


def _numpy_generator(z, w_in, b_in, w_out, b_out, in_tile, out_tile, kernel_size, d):
    """Ha et al. §3.1 written out per input channel: a_i = W_i z + B_i, K_i = W_out a_i + B_out."""
    out = np.zeros((len(z), *kernel_size, in_tile, out_tile))
    for t in range(len(z)):
        for i in range(in_tile):
            w_i = w_in[:, i * d : (i + 1) * d].T  # [d, N_z]
            a_i = w_i @ z[t] + b_in[i * d : (i + 1) * d]
            k_i = w_out.T @ a_i + b_out  # [kh·kw·out]
            out[t, ..., i, :] = k_i.reshape(*kernel_size, out_tile)
    return out


@pytest.mark.parametrize("kernel_size", [(2, 3), None])
def test_generator_matches_numpy_formula(kernel_size):
    gen = KernelGenerator(embedding_dim=5, in_tile=3, out_tile=4, kernel_size=kernel_size, hidden_dim=6)
    gen.build((None, 5))
    _randomize(gen)
    z = np.random.RandomState(1).normal(size=(7, 5)).astype("float32")
    ks = () if kernel_size is None else kernel_size
    expected = _numpy_generator(z, *gen.get_weights(), 3, 4, ks, 6)
    got = keras.ops.convert_to_numpy(gen(z))
    assert got.shape == (7, *ks, 3, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Leading axes are kept: [2, 7, N_z] -> [2, 7, *tile].
    got2 = keras.ops.convert_to_numpy(gen(np.stack([z, z])))
    np.testing.assert_allclose(got2[1], expected, rtol=1e-5, atol=1e-5)


def test_generator_default_init_gives_he_variance():
    gen = KernelGenerator(embedding_dim=64, in_tile=16, out_tile=16, kernel_size=3)
    z = np.random.RandomState(0).normal(size=(400, 64)).astype("float32")  # the layers' default embedding init
    var = float(np.var(keras.ops.convert_to_numpy(gen(z))))
    assert var == pytest.approx(2.0 / (3 * 3 * 16), rel=0.2)


def test_tiling_32x32_kernel_from_16x16_tiles():
    gen = KernelGenerator(embedding_dim=4, in_tile=16, out_tile=16, kernel_size=3)
    layer = HyperConv2D(32, 3, generator=gen)
    layer.build((None, 8, 8, 32))
    _randomize(gen, seed=2)
    assert tuple(layer.embeddings.shape) == (2, 2, 4)
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    assert kernel.shape == (3, 3, 32, 32)
    emb = layer.embeddings.numpy()
    for i in range(2):
        for j in range(2):
            tile = keras.ops.convert_to_numpy(gen(emb[i, j][None]))[0]
            np.testing.assert_allclose(
                kernel[:, :, 16 * i : 16 * (i + 1), 16 * j : 16 * (j + 1)], tile, rtol=1e-6, atol=1e-6
            )
    # The four tiles come from different embeddings, so they differ.
    assert not np.allclose(kernel[:, :, :16, :16], kernel[:, :, 16:, :16])


def test_tiling_crops_overhanging_channels():
    gen = KernelGenerator(embedding_dim=3, in_tile=16, out_tile=16, kernel_size=None)
    layer = HyperDense(24, generator=gen)
    layer.build((None, 20))
    assert tuple(layer.embeddings.shape) == (2, 2, 3)
    full = keras.ops.convert_to_numpy(gen(layer.embeddings))  # [2, 2, 16, 16]
    full = full.transpose(0, 2, 1, 3).reshape(32, 32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.kernel), full[:20, :24], rtol=1e-6)


CONV_CASES = [
    dict(strides=1, padding="same", activation="relu"),  # gradients as forward convolutions
    dict(strides=1, padding="valid"),
    dict(strides=2, padding="same", activation="relu"),
    dict(strides=(2, 1), padding="valid", use_bias=False),
    dict(dilation_rate=2, padding="same", activation="tanh"),
]


@pytest.mark.parametrize("kw", CONV_CASES)
def test_hyper_conv2d_equals_conv2d_with_same_kernel(kw):
    regs = dict(
        kernel_regularizer=keras.regularizers.L2(0.1),
        bias_regularizer=keras.regularizers.L1(0.2),
        activity_regularizer=keras.regularizers.L2(0.01),
        bias_initializer=keras.initializers.Constant(0.3),
    )
    hyper = HyperConv2D(20, 3, embedding_dim=8, tile_shape=(8, 16), **kw, **regs)
    x = np.random.RandomState(3).normal(size=(2, 9, 11, 12)).astype("float32")
    hyper.build(x.shape)
    plain = keras.layers.Conv2D(20, 3, **kw, **regs)
    plain.build(x.shape)
    if hyper.use_bias:
        np.testing.assert_allclose(hyper.bias.numpy(), plain.bias.numpy())  # same bias initializer
    plain.kernel.assign(keras.ops.convert_to_numpy(hyper.kernel))
    y_h, y_p = hyper(x), plain(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y_h), keras.ops.convert_to_numpy(y_p), rtol=1e-5, atol=1e-5)
    # Same regularization: kernel L2 on the (generated) kernel, bias L1, activity L2.
    np.testing.assert_allclose(
        sorted(float(v) for v in hyper.losses), sorted(float(v) for v in plain.losses), rtol=1e-5
    )
    assert len(hyper.losses) == 2 + hyper.use_bias
    assert hyper.compute_output_shape(x.shape) == tuple(y_p.shape)
    # Same gradients: w.r.t. the input, and w.r.t. the generator's weights = Keras's kernel gradient pulled
    # back through the kernel's assembly.
    x = tf.constant(x)
    w = tf.constant(np.random.RandomState(4).normal(size=y_p.shape).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss_h = tf.reduce_sum(tf.sin(hyper(x)) * w)
        loss_p = tf.reduce_sum(tf.sin(plain(x)) * w)
        kernel = hyper.kernel
    weights = hyper.generator.trainable_weights + [hyper.embeddings]
    got = tape.gradient(loss_h, [x] + weights)
    dk = tape.gradient(loss_p, plain.kernel)
    want = [tape.gradient(loss_p, x)] + tape.gradient(kernel, weights, output_gradients=dk)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=0, atol=2e-5 * float(np.abs(r.numpy()).max()))


@pytest.mark.parametrize("kw", [dict(), dict(activation="sigmoid", use_bias=False)])
def test_hyper_dense_equals_dense_with_same_kernel(kw):
    regs = dict(kernel_regularizer=keras.regularizers.L1L2(0.1, 0.2), bias_initializer="ones")
    hyper = HyperDense(10, embedding_dim=4, tile_shape=(4, 4), **kw, **regs)
    x = np.random.RandomState(4).normal(size=(3, 5, 7)).astype("float32")  # rank-3 input, like Dense
    hyper.build(x.shape)
    plain = keras.layers.Dense(10, **kw, **regs)
    plain.build(x.shape)
    plain.kernel.assign(keras.ops.convert_to_numpy(hyper.kernel))
    if hyper.use_bias:
        np.testing.assert_allclose(hyper.bias.numpy(), plain.bias.numpy())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(hyper(x)), keras.ops.convert_to_numpy(plain(x)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(float(hyper.losses[0]), float(plain.losses[0]), rtol=1e-5)


@pytest.mark.parametrize("cls,args", [(HyperConv2D, (16, 3)), (HyperDense, (16,)), (KernelGenerator, ())])
def test_config_round_trip(cls, args):
    layer = cls(*args, name="layer", **({} if cls is KernelGenerator else {"embedding_dim": 6, "activation": "relu"}))
    config = layer.get_config()
    params = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    assert params <= set(config), params - set(config)
    clone = cls.from_config(config)
    assert clone.get_config() == config or cls is not KernelGenerator
    if cls is KernelGenerator:
        return
    shape = (2, 6, 6, 16) if cls is HyperConv2D else (2, 16)
    x = np.random.RandomState(0).normal(size=shape).astype("float32")
    layer(x), clone(x)
    assert clone.generator is not layer.generator  # plain from_config (no sharing scope) makes a new generator
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(x)), keras.ops.convert_to_numpy(layer(x)), rtol=1e-6)


def _shared_model(shared=True):
    gen = KernelGenerator(embedding_dim=8, in_tile=8, out_tile=8, kernel_size=3, name="shared_gen")

    def g():
        return gen if shared else KernelGenerator(embedding_dim=8, in_tile=8, out_tile=8, kernel_size=3)

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = HyperConv2D(16, 3, padding="same", activation="relu", generator=g(), name="a")(x)
    x = HyperConv2D(16, 3, strides=2, padding="same", activation="relu", generator=g(), name="b")(x)
    x = HyperConv2D(8, 3, padding="valid", generator=g(), name="c")(x)
    x = keras.layers.Flatten()(x)
    outputs = HyperDense(5, embedding_dim=3, tile_shape=(8, 5), name="head")(x)
    return keras.Model(inputs, outputs), gen


def test_keras_save_load_keeps_generator_shared(tmp_path):
    model, gen = _shared_model()
    for w in model.weights:
        w.assign(np.random.RandomState(len(w.path)).normal(0, 0.2, w.shape).astype("float32"))
    x = np.random.RandomState(0).normal(size=(4, 8, 8, 3)).astype("float32")
    y = keras.ops.convert_to_numpy(model(x))
    n_weights = len(model.weights)
    path = str(tmp_path / "m.keras")
    model.save(path)

    # The file stores the shared generator's weights once.
    with zipfile.ZipFile(path) as z:
        z.extract("model.weights.h5", tmp_path)
    shapes = []
    with h5py.File(tmp_path / "model.weights.h5") as f:
        f.visititems(lambda n, o: shapes.append(o.shape) if isinstance(o, h5py.Dataset) else None)
    assert shapes.count(tuple(gen.input_kernel.shape)) == 1

    loaded = keras.saving.load_model(path)
    a, b, c = (loaded.get_layer(n) for n in "abc")
    assert a.generator is b.generator is c.generator
    assert loaded.get_layer("head").generator is not a.generator
    assert len(loaded.weights) == n_weights
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), y, rtol=1e-5, atol=1e-6)
    # One set of weights: changing the generator through one layer changes the others' kernels.
    before = keras.ops.convert_to_numpy(c.kernel)
    a.generator.output_bias.assign(a.generator.output_bias + 1.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(c.kernel), before + 1.0, rtol=1e-5)


def _outputs(model, x):
    return keras.ops.convert_to_numpy(model(x))


@pytest.mark.parametrize("sequential", [False, True])
def test_clone_model_keeps_generator_shared(tmp_path, sequential):
    if sequential:
        gen = KernelGenerator(embedding_dim=8, in_tile=8, out_tile=8, kernel_size=3)
        model = keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Conv2D(8, 3, padding="same", name="stem"),
                HyperConv2D(16, 3, padding="same", activation="relu", generator=gen, name="a"),
                HyperConv2D(16, 3, padding="same", activation="relu", generator=gen, name="b"),
                HyperConv2D(8, 3, padding="valid", generator=gen, name="c"),
                keras.layers.Flatten(),
                HyperDense(5, name="head"),
            ]
        )
    else:
        model, gen = _shared_model()
    for w in model.weights:
        w.assign(np.random.RandomState(len(w.path)).normal(0, 0.2, w.shape).astype("float32"))
    x = np.random.RandomState(0).normal(size=(4, 8, 8, 3)).astype("float32")
    expected = _outputs(model, x)

    clone = keras.models.clone_model(model)
    a, b, c = (clone.get_layer(n) for n in "abc")
    assert a.generator is b.generator is c.generator  # one generator, shared as in the original ...
    assert a.generator is not gen  # ... and a new one: the clone's weights are its own
    assert clone.get_layer("head").generator is not a.generator
    assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in model.weights]
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(_outputs(clone, x), expected, rtol=1e-5, atol=1e-6)
    # Independent of the original: changing the clone's generator changes the clone only.
    a.generator.output_bias.assign(a.generator.output_bias + 1.0)
    np.testing.assert_allclose(_outputs(model, x), expected, rtol=1e-6)
    assert not np.allclose(_outputs(clone, x), expected, atol=1e-3)

    # A second clone gets a generator of its own (not the first clone's).
    clone2 = keras.models.clone_model(model)
    assert clone2.get_layer("a").generator is clone2.get_layer("c").generator
    assert clone2.get_layer("a").generator is not a.generator

    # The clone saves and loads with its generator shared, and computes the same.
    clone.set_weights(model.get_weights())
    path = str(tmp_path / "clone.keras")
    clone.save(path)
    loaded = keras.saving.load_model(path)
    la, lb, lc = (loaded.get_layer(n) for n in "abc")
    assert la.generator is lb.generator is lc.generator
    assert len(loaded.weights) == len(model.weights)
    np.testing.assert_allclose(_outputs(loaded, x), expected, rtol=1e-5, atol=1e-6)


def test_layers_made_from_one_config_twice_do_not_share():
    gen = KernelGenerator(embedding_dim=4, in_tile=4, out_tile=4, kernel_size=3)
    layer = HyperConv2D(4, 3, generator=gen, name="conv")
    config = layer.get_config()
    first, second = HyperConv2D.from_config(config), HyperConv2D.from_config(config)
    assert first.generator is not second.generator and first.generator is not gen


def _private_generator_params(in_tile, out_tile, n_z, ksize):
    """Ha et al.'s two linear maps with hidden size N_z: W_i [N_z -> in_tile·N_z], W_out [N_z -> ksize·out_tile]."""
    return n_z * in_tile * n_z + in_tile * n_z + n_z * ksize * out_tile + ksize * out_tile


def test_private_generator_is_sized_from_the_layer_and_counted_in_summary():
    inputs = keras.Input((8, 8, 16))
    x = HyperConv2D(8, 3, padding="same", name="small")(inputs)
    x = HyperConv2D(8, 3, padding="same", embedding_dim=64, tile_shape=(16, 16), name="paper")(x)
    x = keras.layers.Flatten()(x)
    outputs = HyperDense(10, name="dense")(x)
    model = keras.Model(inputs, outputs)

    small = model.get_layer("small")
    # The largest N_z whose generator + embedding stay within half the 16·8·9 = 1,152 kernel weights: 3.
    assert _private_generator_params(16, 8, 4, 9) + 4 > 1152 / 2 >= _private_generator_params(16, 8, 3, 9) + 3
    assert (small.generator.in_tile, small.generator.out_tile, small.generator.embedding_dim) == (16, 8, 3)
    expected_small = _private_generator_params(16, 8, 3, 9) + 3 + 8  # generator + one embedding + bias
    assert small.count_params() == expected_small == 491
    # Explicit values are kept: the paper's 16×16 tiles and N_z = 64 (the 75,992 parameters
    # for an 8-filter conv, whose kernel has 8·3·3·8 = 576 weights here).
    paper = model.get_layer("paper")
    assert (paper.generator.in_tile, paper.generator.out_tile, paper.generator.embedding_dim) == (16, 16, 64)
    assert paper.count_params() == _private_generator_params(16, 16, 64, 9) + 64 + 8 == 75_992
    # 8·8·8 = 512 features in 32 tiles of 16 × 10: N_z = 10 is the largest within half of 5,120 kernel weights.
    assert _private_generator_params(16, 10, 11, 1) + 32 * 11 > 2560 >= _private_generator_params(16, 10, 10, 1) + 320
    dense = model.get_layer("dense")
    assert (dense.generator.in_tile, dense.generator.out_tile, dense.generator.embedding_dim) == (16, 10, 10)
    assert dense.count_params() == _private_generator_params(16, 10, 10, 1) + 32 * 10 + 10

    lines = []
    model.summary(print_fn=lambda line, **kw: lines.append(line))
    rows = {
        name: next(line for line in "\n".join(lines).splitlines() if f"{name} (Hyper" in line)
        for name in ("small", "paper", "dense")
    }
    assert "491" in rows["small"] and "75,992" in rows["paper"]
    assert f"{dense.count_params():,}" in rows["dense"]


@pytest.mark.parametrize("in_features, units", [(1024, 32), (32, 10), (100, 100), (16, 4096)])
def test_private_generator_dense_compresses_against_keras_dense(in_features, units):
    """Issue 24 item 7: HyperDense(32) on 1,024 inputs had 75,824 parameters where Dense has 32,800."""
    hyper = HyperDense(units)
    hyper.build((None, in_features))
    plain = keras.layers.Dense(units)
    plain.build((None, in_features))
    assert hyper.count_params() - units <= (plain.count_params() - units) / 2  # both have the bias
    n_z = hyper.generator.embedding_dim
    tiles = -(-in_features // hyper.generator.in_tile) * -(-units // hyper.generator.out_tile)
    bigger = _private_generator_params(hyper.generator.in_tile, hyper.generator.out_tile, n_z + 1, 1) + tiles * (
        n_z + 1
    )
    assert n_z == min(64, max(4, tiles)) or bigger > in_features * units / 2  # the largest that compresses 2x


def test_private_generator_config_before_build_round_trips():
    layer = HyperConv2D(8, 3, name="late")
    config = layer.get_config()
    assert config["generator"] is None and config["embedding_dim"] is None and config["tile_shape"] is None
    clone = HyperConv2D.from_config(config)
    x = np.random.RandomState(0).normal(size=(2, 6, 6, 3)).astype("float32")
    layer(x), clone(x)
    for lay in (layer, clone):  # a 3·8·9 = 216-weight kernel: no N_z compresses it, so the smallest, 1
        assert (lay.generator.in_tile, lay.generator.out_tile, lay.generator.embedding_dim) == (3, 8, 1)
    # Once built, the config holds the generator and its sizes explicitly (as configs always did).
    built = layer.get_config()
    assert (
        built["embedding_dim"] == 1
        and built["tile_shape"] == [3, 8]
        and built["generator"]["class_name"] == "KernelGenerator"
    )
    again = HyperConv2D.from_config(built)
    assert again.generator.tile_shape == layer.generator.tile_shape
    # A config written with the paper's sizes (and no generator) keeps them.
    paper = HyperConv2D.from_config({**config, "embedding_dim": 64, "tile_shape": [16, 16]})
    paper(x)
    assert paper.generator.tile_shape == (3, 3, 16, 16) and paper.generator.embedding_dim == 64


def test_shared_generator_gradient_is_sum_over_layers():
    model, gen = _shared_model()
    private, _ = _shared_model(shared=False)  # same network, one generator copy per layer
    for layer, copy in zip(model.layers, private.layers):
        copy.set_weights(layer.get_weights())
    gens = [private.get_layer(n).generator for n in "abc"]
    assert len({id(g) for g in gens}) == 3
    assert model.count_params() == private.count_params() - 2 * gen.count_params()
    x = np.random.RandomState(0).normal(size=(4, 8, 8, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(x)))
    g_shared = tape.gradient(loss, gen.output_kernel)
    with tf.GradientTape() as tape:
        loss2 = tf.reduce_sum(tf.square(private(x)))
    g_private = tape.gradient(loss2, [g.output_kernel for g in gens])
    np.testing.assert_allclose(float(loss), float(loss2), rtol=1e-5)
    np.testing.assert_allclose(g_shared.numpy(), sum(g.numpy() for g in g_private), rtol=1e-4, atol=1e-4)


def test_savedmodel_export(tmp_path):
    model, _ = _shared_model()
    x = np.random.RandomState(0).normal(size=(4, 8, 8, 3)).astype("float32")
    y = keras.ops.convert_to_numpy(model(x))
    path = os.path.join(tmp_path, "exported")
    model.export(path, format="tf_saved_model", verbose=False)
    restored = tf.saved_model.load(path)
    np.testing.assert_allclose(restored.serve(tf.constant(x)).numpy(), y, rtol=1e-5, atol=1e-6)


def test_bad_inputs_give_clear_errors():
    gen3 = KernelGenerator(embedding_dim=4, in_tile=4, out_tile=4, kernel_size=3)
    with pytest.raises(ValueError, match="kernel_size"):
        HyperConv2D(8, 5, generator=gen3)
    with pytest.raises(ValueError, match="embedding_dim"):
        HyperConv2D(8, 3, generator=gen3, embedding_dim=7)
    with pytest.raises(ValueError, match="tile_shape"):
        HyperConv2D(8, 3, generator=gen3, tile_shape=(8, 8))
    with pytest.raises(ValueError, match="kernel_size"):
        HyperDense(8, generator=gen3)
    with pytest.raises(TypeError, match="KernelGenerator"):
        HyperDense(8, generator=keras.layers.Dense(3))
    with pytest.raises(ValueError, match="filters"):
        HyperConv2D(0, 3)
    with pytest.raises(ValueError, match="padding"):
        HyperConv2D(8, 3, padding="full")
    with pytest.raises(ValueError, match="embedding_dim"):
        KernelGenerator(embedding_dim=0)
    with pytest.raises(ValueError, match="embedding_dim=4"):
        gen3.build((None, 5))
    with pytest.raises(ValueError, match="tile_shape"):
        HyperConv2D(8, 3, tile_shape=(8,))
    with pytest.raises(ValueError, match="tile_shape"):
        HyperDense(8, tile_shape=(8, 0))
    with pytest.raises(ValueError, match="embedding_dim"):
        HyperDense(8, embedding_dim=-1)

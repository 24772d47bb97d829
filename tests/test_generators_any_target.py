"""DeutschGenerator / EntropyHypernetwork and HyperGAN on targets beyond Conv/Dense chains (BatchNorm,
residual adds, Embedding + GRU, attention), and gauge fixing refusing the targets whose symmetries it
cannot prove."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras.generators import DeutschGenerator, LayerGenerator
from hyperkeras.models import EntropyHypernetwork, HyperGAN
from hyperkeras.objectives.gauge import check_gauge, gauge_penalty, gauge_transform


# ---------------------------------------------------------------------- tiny targets
def _bn():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Dense(3, name="out"),
        ],
        name="bn_mlp",
    )


def _residual():
    inp = keras.Input((6,))
    h = keras.layers.Dense(6, activation="relu", name="d1")(inp)
    h = keras.layers.Add(name="add")([inp, h])
    return keras.Model(inp, keras.layers.Dense(3, name="out")(h), name="residual")


def _gru():
    inp = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(20, 4, name="emb")(inp)
    h = keras.layers.GRU(6, name="gru")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="out")(h), name="gru")


def _attention():
    inp = keras.Input((4, 6))
    a = keras.layers.MultiHeadAttention(2, 3, name="mha")(inp, inp)
    h = keras.layers.LayerNormalization(name="ln")(keras.layers.Add(name="add")([inp, a]))
    h = keras.layers.GlobalAveragePooling1D(name="gap")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="out")(h), name="attention")


MODELS = {"bn": _bn, "residual": _residual, "gru": _gru, "attention": _attention}


def _data(target, n=16, seed=0):
    rng = np.random.RandomState(seed)
    if target.input_dtype.startswith("int"):
        x = rng.randint(0, 20, size=(n, *target.input_shape)).astype("int32")
    else:
        x = rng.randn(n, *target.input_shape).astype("float32")
    return x, rng.randint(0, 3, size=n).astype("int32")


def _deutsch(target, **kw):
    gen = DeutschGenerator.from_target(
        target, noise_dim=6, code_size=3, extractor_units=(16,), generator_units=(8,), seed=0
    )
    return EntropyHypernetwork(
        target, gen, gauge="none", lam=10.0, num_samples=4, seed=0, batchnorm_recalibration=2, **kw
    )


def _hypergan(target):
    return HyperGAN(
        target,
        noise_dim=8,
        code_dim=4,
        mixer_units=(16,),
        generator_units=(16,),
        discriminator_units=(8,),
        num_networks=3,
        seed=0,
    )


def _check_matches(target, params, k):
    assert sorted(params) == sorted(s.name for s in target.param_specs)
    for s in target.param_specs:
        assert tuple(params[s.name].shape) == (k, *s.shape), s.name
        assert params[s.name].dtype == tf.float32, s.name


# ---------------------------------------------------------------------- every weight is generated
@pytest.mark.parametrize("which", sorted(MODELS))
def test_generators_produce_every_weight_and_run(which):
    target = hk.TargetNetwork(MODELS[which]())
    assert which == "residual" or target.plain_specs
    x, _ = _data(target, n=5)

    model = _deutsch(target)
    params = model.sample(4, seed=1)
    _check_matches(target, params, 4)
    outputs = model.generator(model.sample_noise(2, seed=3))
    assert len(outputs) == len(target.layers) + len(target.plain_specs)
    _check_matches(target, model.generator.to_params(target, outputs), 2)
    assert np.all(np.isfinite(target.apply(params, x).numpy()))

    gan = _hypergan(target)
    owners = {s.layer for s in target.param_specs}
    assert len(gan.generators) == gan.mixer.num_codes == len(owners)
    assert tuple(gan.codes(gan.sample_noise(2)).shape) == (2, len(owners), 4)
    params = gan.sample(3, seed=2)
    _check_matches(target, params, 3)
    out = target.apply(params, x).numpy()
    assert out.shape == (3, 5, 3) and np.all(np.isfinite(out))
    # Generated networks differ in the weights outside the Conv/Dense layout too.
    for s in target.plain_specs:
        v = params[s.name].numpy()
        assert np.std(v[0] - v[1]) > 0, s.name


def test_fresh_generators_start_from_the_models_initial_values():
    target = hk.TargetNetwork(_bn())
    for params in (_deutsch(target).sample(8, seed=0), _hypergan(target).sample(8, seed=0)):
        gamma, beta = params["bn/gamma"].numpy(), params["bn/beta"].numpy()
        assert abs(gamma.mean() - 1.0) < 0.1 and np.abs(gamma - 1.0).max() < 1.0, gamma
        assert abs(beta.mean()) < 0.1, beta
        # Conv/Dense kernels keep their own scale (not offset by the model's initial kernel).
        assert np.std(params["d1/kernel"].numpy()) > 0

    # Embeddings: offset by the model's own initial table, spread at the Glorot scale of its shape.
    target = hk.TargetNetwork(_gru())
    table = target.model.get_layer("emb").embeddings.numpy()
    for params in (_deutsch(target).sample(8, seed=0), _hypergan(target).sample(8, seed=0)):
        emb = params["emb/embeddings"].numpy()
        spread = np.std(emb - table[None])
        assert 0 < spread < 3 * np.sqrt(2.0 / (20 + 4)), spread
    # A generator rebuilt from its config alone (no weights) starts its offsets at the values' mean:
    # BN γ = 1 without the model.
    gen = DeutschGenerator.from_target(
        hk.TargetNetwork(_bn()), noise_dim=6, code_size=3, extractor_units=(8,), generator_units=(8,)
    )
    clone = DeutschGenerator.from_config(gen.get_config())
    outs = clone(tf.random.uniform([4, 6], -1, 1))
    gamma = outs[2].numpy()
    assert [t["name"] for t in clone.plain_tensors] == ["bn/gamma", "bn/beta"]
    assert abs(gamma.mean() - 1.0) < 0.1


# ---------------------------------------------------------------------- training and saving
@pytest.mark.parametrize("which", ["bn", "gru", "attention"])
def test_short_fits_give_finite_losses(which):
    target = hk.TargetNetwork(MODELS[which]())
    x, y = _data(target, n=32)

    model = _deutsch(target)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    hist = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert all(np.isfinite(hist[k]).all() for k in ("loss", "task_loss", "entropy"))
    assert "gauge" not in hist  # gauge="none": no gauge penalty to report

    gan = _hypergan(target)
    gan.compile(optimizer=keras.optimizers.Adam(1e-3), discriminator_optimizer=keras.optimizers.Adam(1e-3))
    hist = gan.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert all(np.isfinite(hist[k]).all() for k in ("loss", "task_loss", "d_loss"))


def test_keras_round_trip_of_both_models(tmp_path):
    # Token ids -> embeddings (random initial values: the generators' offsets must come back from the
    # saved weights, not from the freshly initialised target that loading rebuilds) -> Dense -> BN.
    target = hk.TargetNetwork(
        keras.Sequential(
            [
                keras.Input((5,), dtype="int32"),
                keras.layers.Embedding(20, 4, name="emb"),
                keras.layers.Flatten(name="flat"),
                keras.layers.Dense(8, name="d1"),
                keras.layers.BatchNormalization(name="bn"),
                keras.layers.ReLU(name="relu"),
                keras.layers.Dense(3, name="out"),
            ]
        )
    )
    x, y = _data(target, n=8)

    model = _deutsch(target)
    model.compile(optimizer="adam")
    model.train_on_batch(x, y)  # weights and batch-norm statistics move away from their initial values
    model.save(tmp_path / "deutsch.keras")
    loaded = keras.models.load_model(tmp_path / "deutsch.keras")
    assert [t["name"] for t in loaded.generator.plain_tensors] == ["emb/embeddings", "bn/gamma", "bn/beta"]
    assert not np.allclose(
        loaded.target.model.get_layer("emb").embeddings.numpy(), target.model.get_layer("emb").embeddings.numpy()
    )
    a, b = model.sample(3, seed=4), loaded.sample(3, seed=4)
    for name in a:
        np.testing.assert_allclose(b[name].numpy(), a[name].numpy(), rtol=1e-5, atol=1e-6)

    gan = _hypergan(target)
    gan.compile(optimizer="adam", discriminator_optimizer="adam")
    gan.train_on_batch(x, y)
    gan.save(tmp_path / "gan.keras")
    loaded = keras.models.load_model(tmp_path / "gan.keras")
    a, b = gan.sample(3, seed=4), loaded.sample(3, seed=4)
    for name in a:
        np.testing.assert_allclose(b[name].numpy(), a[name].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), gan.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_layer_generator_with_scales_and_offsets_round_trips():
    gen = LayerGenerator(
        {"bn/gamma": (4,), "bn/beta": (4,)},
        None,
        (8,),
        scales={"bn/gamma": 0.5, "bn/beta": 0.5},
        offsets={"bn/gamma": 1.0, "bn/beta": 0.0},
    )
    gen.build((None, 3))
    gen.set_offsets({"bn/gamma": np.array([1.0, 2.0, 3.0, 4.0])})
    codes = tf.random.normal([5, 3])
    clone = LayerGenerator.from_config(gen.get_config())
    clone.build((None, 3))
    clone.set_weights(gen.get_weights())
    a, b = gen(codes), clone(codes)
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), rtol=1e-6)
    # offset + 0.5 · (output of the generator's Dense layers)
    raw = gen.out(gen.hidden[0](codes)).numpy()
    np.testing.assert_allclose(a["bn/gamma"].numpy(), np.array([1.0, 2.0, 3.0, 4.0]) + 0.5 * raw[:, :4], rtol=1e-5)
    with pytest.raises(ValueError, match="scales"):
        LayerGenerator({"a": (2,)}, scales={"b": 1.0})
    with pytest.raises(ValueError, match="no offset"):
        gen.set_offsets({"bn/beta_typo": np.zeros(4)})


def test_generator_must_match_the_targets_plain_tensors():
    target = hk.TargetNetwork(_bn())
    plain_free = DeutschGenerator([(l.num_filters, l.filter_size) for l in target.layers])
    with pytest.raises(ValueError, match="plain_specs"):
        EntropyHypernetwork(target, plain_free, gauge="none")
    with pytest.raises(ValueError, match="plain_tensors"):
        DeutschGenerator([(2, 3)], plain_tensors=[{"shape": [2]}])


# ---------------------------------------------------------------------- gauge fixing refuses what it cannot prove
def _chain(*middle, last=()):
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, name="d1"), *middle, keras.layers.Dense(3, name="out"), *last]
    )


@pytest.mark.parametrize(
    "model, pattern",
    [
        (_bn, r"layer 'bn' \(BatchNormalization\).*bn/gamma"),
        (_residual, r"single chain.*layer 'add' \(Add\)"),
        (_gru, r"layer 'emb' \(Embedding\)"),
        (
            lambda: _chain(keras.layers.ReLU(max_value=6.0, name="relu6")),
            r"'d1' and 'out'.*'relu6' \(ReLU\(max_value=6.0",
        ),
        (
            lambda: _chain(keras.layers.ReLU(threshold=0.5, name="thr")),
            r"'d1' and 'out'.*'thr' \(ReLU\(.*threshold=0.5",
        ),
        (
            lambda: _chain(keras.layers.ReLU(name="relu"), last=[keras.layers.Activation("sigmoid", name="sig")]),
            r"logits.*'sig' \(Activation\('sigmoid'\)\)",
        ),
        (
            lambda: _chain(keras.layers.ReLU(name="relu"), last=[keras.layers.ReLU(name="final_relu")]),
            r"logits.*'final_relu' \(ReLU",
        ),
        (
            lambda: _chain(keras.layers.ReLU(name="relu"), keras.layers.Reshape((5,), name="reshape")),
            r"'d1' and 'out'.*'reshape' \(Reshape\)",
        ),
    ],
)
def test_gauge_refuses_targets_it_cannot_prove(model, pattern):
    target = hk.TargetNetwork(model())
    params = target.unflatten(tf.random.normal([2, target.num_params]))
    for fn in (
        lambda: check_gauge(target),
        lambda: gauge_transform(target, params),
        lambda: gauge_penalty(target, params),
    ):
        with pytest.raises(ValueError, match=pattern):
            fn()
    for gauge in ("transform", "penalty"):
        with pytest.raises(ValueError, match=pattern):
            EntropyHypernetwork(target, gauge=gauge)


def test_gauge_accepts_plain_relu_and_softmax_after_logits():
    target = hk.TargetNetwork(
        _chain(
            keras.layers.ReLU(name="relu"),
            keras.layers.Dropout(0.1, name="drop"),
            last=[keras.layers.Softmax(name="probs")],
        )
    )
    check_gauge(target)
    EntropyHypernetwork(target, gauge="transform")


def test_gauge_transform_equals_numpy_on_deutsch_mnist():
    target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist"))
    rng = np.random.RandomState(0)
    params = {s.name: (rng.randn(2, *s.shape) * rng.uniform(0.01, 1.0)).astype("float32") for s in target.param_specs}
    fixed = gauge_transform(target, {k: tf.constant(v) for k, v in params.items()})
    # NumPy: filter i of layer l (kernel[..., i] and bias[i]) scaled to mean square 1; input channel i of
    # layer l+1 multiplied by the same factor; the logits' biases centred.
    ref = {k: v.astype(np.float64) for k, v in params.items()}
    layers = [("conv1", None), ("conv2", None), ("dense1", None), ("logits", None)]
    for (name, _), (nxt, _) in zip(layers[:-1], layers[1:]):
        kern, bias = ref[f"{name}/kernel"], ref[f"{name}/bias"]
        n = kern.shape[-1]
        ms = (np.sum(kern.reshape(2, -1, n) ** 2, axis=1) + bias**2) / (kern[0, ..., 0].size + 1)
        a = np.sqrt(ms)  # [2, n]
        ref[f"{name}/kernel"] = kern / a.reshape(2, *([1] * (kern.ndim - 2)), n)
        ref[f"{name}/bias"] = bias / a
        nk = ref[f"{nxt}/kernel"]
        shaped = nk.reshape(2, -1, n, nk.shape[-1]) * a[:, None, :, None]  # channels fastest after flatten
        ref[f"{nxt}/kernel"] = shaped.reshape(nk.shape)
    ref["logits/bias"] = ref["logits/bias"] - ref["logits/bias"].mean(1, keepdims=True)
    for name in ref:
        np.testing.assert_allclose(fixed[name].numpy(), ref[name], rtol=2e-4, atol=1e-5 * np.abs(ref[name]).max())
    assert np.all(gauge_penalty(target, fixed).numpy() < 1e-2)

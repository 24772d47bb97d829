"""HyperGAN: generators, model, losses (eqs. 3–5), the two defects of the original code, pretraining,
training, serialisation, and the paper's target sizes (Tables 5–6)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras.generators import LayerGenerator, Mixer
from hyperkeras.models import HyperGAN
from hyperkeras.objectives import LatentDiscriminator


def _small(task="classification", **kw):
    if task == "classification":
        target = hk.targets.build_model("mlp", input_shape=(64,), hidden=(16,), num_classes=10)
    else:
        target = hk.targets.build_model("hypergan_regression", hidden=8)
    args = dict(
        noise_dim=16,
        code_dim=8,
        mixer_units=(32,),
        generator_units=(32,),
        discriminator_units=(32,),
        num_networks=4,
        task=task,
        seed=1,
    )
    args.update(kw)
    return HyperGAN(target, **args)


def _softplus(v):
    return np.logaddexp(0.0, v)


# ---------------------------------------------------------------------- paper target sizes
def test_paper_targets_have_table_sizes():
    mnist = hk.TargetNetwork(hk.targets.build_model("hypergan_mnist"))
    shapes = {s.name: s.shape for s in mnist.param_specs}
    assert shapes["conv1/kernel"] == (5, 5, 1, 32)  # 32×1×5×5
    assert shapes["conv2/kernel"] == (5, 5, 32, 32)  # 32×32×5×5
    assert shapes["logits/kernel"] == (512, 10)  # linear 512×10
    assert mnist.num_params == 32 * 25 + 32 + 32 * 32 * 25 + 32 + 512 * 10 + 10 == 31594
    cifar = hk.TargetNetwork(hk.targets.build_model("hypergan_cifar10"))
    shapes = {s.name: s.shape for s in cifar.param_specs}
    assert shapes["conv1/kernel"] == (3, 3, 3, 16)
    assert shapes["conv2/kernel"] == (3, 3, 16, 32)
    assert shapes["conv3/kernel"] == (3, 3, 32, 64)
    assert shapes["linear1/kernel"] == (256, 128)
    assert shapes["logits/kernel"] == (128, 10)
    reg = hk.TargetNetwork(hk.targets.build_model("hypergan_regression"))
    assert [s.shape for s in reg.param_specs] == [(1, 100), (100,), (100, 1), (1,)]
    assert reg.model.get_layer("hidden").get_config()["activation"] == "relu"


# ---------------------------------------------------------------------- building blocks
def test_layers_shapes_and_generated_networks_match_plain_keras():
    model = _small()
    assert isinstance(model.mixer, Mixer) and isinstance(model.discriminator, LatentDiscriminator)
    assert all(isinstance(g, LayerGenerator) for g in model.generators)
    codes = model.codes(model.sample_noise(5, seed=2))
    assert tuple(codes.shape) == (5, len(model.target.layers), 8)
    assert tuple(model.discriminator(codes).shape) == (5, len(model.target.layers))
    params = model.sample(5, seed=2)
    assert {k: tuple(v.shape[1:]) for k, v in params.items()} == {s.name: s.shape for s in model.target.param_specs}
    x = np.random.RandomState(0).rand(7, 64).astype("float32")
    out = model.target.apply(params, x).numpy()
    for k in (0, 4):  # independent check: a plain Keras model holding network k's weights
        net = model.target.to_keras_model(params, index=k)
        np.testing.assert_allclose(out[k], net.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_generated_weights_start_at_he_scale():
    model = HyperGAN("hypergan_mnist", num_networks=2)
    # One He-scaled generator per Conv/Dense layer, nothing else (the target has no other weights).
    assert [g.name for g in model.generators] == ["generator_conv1", "generator_conv2", "generator_logits"]
    assert all(g.scales is None and g.offsets is None and not g.non_trainable_weights for g in model.generators)
    assert model.mixer.num_codes == 3
    params = model.sample(64, seed=0)
    for spec in model.target.layers:
        fan_in = spec.filter_size - 1
        std = float(np.std(params[spec.kernel.name].numpy()))
        assert 0.1 * np.sqrt(2.0 / fan_in) < std < 2.0 * np.sqrt(2.0 / fan_in), spec.name


def test_sample_is_deterministic_and_works_in_tf_function():
    model = _small()
    a = model.sample(3, seed=7)
    b = tf.function(lambda s: model.sample(3, s))(tf.constant(7))
    c = model.sample(3, seed=8)
    for name in a:
        np.testing.assert_array_equal(a[name].numpy(), b[name].numpy())
        assert not np.allclose(a[name].numpy(), c[name].numpy())
    noise = model.sample_noise(3, seed=7).numpy()
    expected = tf.random.stateless_normal([3, 16], seed=[7, 0]).numpy()
    np.testing.assert_array_equal(noise, expected)


# ---------------------------------------------------------------------- losses against NumPy
def test_losses_match_numpy_equations():
    model = _small(beta=0.5)
    model.compile()
    rng = np.random.RandomState(3)
    x = rng.rand(6, 64).astype("float32")
    y = rng.randint(0, 10, size=6)
    noise = rng.randn(4, 16).astype("float32")
    prior = rng.randn(4, 2, 8).astype("float32")
    terms = model.compute_losses(x, y, training=False, noise=noise, prior=prior)

    params = model.generate(noise)
    logits = np.stack([model.target.to_keras_model(params, k).predict(x, verbose=0) for k in range(4)])
    logp = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    ce = -np.mean(logp[:, np.arange(6), y])  # eq. 4, averaged over the 4 networks
    np.testing.assert_allclose(float(terms["task_loss"]), ce, rtol=1e-5)

    codes = model.codes(noise).numpy()
    lq = model.discriminator(codes).numpy()
    lp = model.discriminator(prior).numpy()
    d_q, d_p = 1 / (1 + np.exp(-lq)), 1 / (1 + np.exp(-lp))
    eq3 = -np.mean(np.sum(np.log(d_p) + np.log(1 - d_q), axis=1))  # eq. 3 summed over layers
    np.testing.assert_allclose(float(terms["d_loss"]), eq3, rtol=1e-5)
    adv = np.mean(np.sum(-np.log(d_q), axis=1))  # non-saturating −Σ log D(q_i)
    np.testing.assert_allclose(float(terms["adversarial"]), adv, rtol=1e-5)
    np.testing.assert_allclose(float(terms["loss"]), ce + 0.5 * adv, rtol=1e-5)


def test_regression_task_uses_mse():
    model = _small(task="regression")
    x = np.linspace(-1, 1, 5, dtype="float32")[:, None]
    y = (x**3).astype("float32")
    noise = np.random.RandomState(0).randn(4, 16).astype("float32")
    terms = model.compute_losses(x, y, training=False, noise=noise)
    params = model.generate(noise)
    pred = np.stack([model.target.to_keras_model(params, k).predict(x, verbose=0) for k in range(4)])
    np.testing.assert_allclose(float(terms["task_loss"]), np.mean((pred - y[None]) ** 2), rtol=1e-5)


# ---------------------------------------------------------------------- the original code's defects
def test_discriminator_loss_sends_no_gradient_into_mixer_or_generators():
    model = _small()
    model.compile()
    rng = np.random.RandomState(0)
    x, y = rng.rand(8, 64).astype("float32"), rng.randint(0, 10, 8)
    with tf.GradientTape(persistent=True) as tape:
        terms = model.compute_losses(x, y)

    def values(grads):  # an unconnected gradient (None) is exactly zero
        return [np.zeros(1) if g is None else g.numpy() for g in grads]

    d_into_g = values(tape.gradient(terms["d_loss"], model.generator_variables))
    d_into_d = values(tape.gradient(terms["d_loss"], model.discriminator_variables))
    adv_into_mixer = values(tape.gradient(terms["adversarial"], model.mixer.trainable_variables))
    assert len(d_into_g) == len(model.generator_variables) > 0
    assert all(np.all(g == 0.0) for g in d_into_g)
    assert any(np.any(g != 0.0) for g in d_into_d)  # D does learn from its loss ...
    assert any(np.any(g != 0.0) for g in adv_into_mixer)  # ... and the mixer from the adversarial term


def test_train_step_discriminator_update_leaves_mixer_untouched():
    model = _small()
    model.compile(optimizer=keras.optimizers.SGD(0.0), discriminator_optimizer=keras.optimizers.SGD(0.1))
    rng = np.random.RandomState(0)
    x, y = rng.rand(8, 64).astype("float32"), rng.randint(0, 10, 8)
    g_before = [v.numpy().copy() for v in model.generator_variables]
    d_before = [v.numpy().copy() for v in model.discriminator_variables]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert {"loss", "task_loss", "adversarial", "d_loss", "accuracy"} <= set(logs)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(g_before, model.generator_variables))
    assert not all(np.array_equal(a, v.numpy()) for a, v in zip(d_before, model.discriminator_variables))


def test_discriminator_outputs_logits_not_probabilities():
    disc = LatentDiscriminator((8,))
    z = 50.0 * np.random.RandomState(0).randn(256, 4).astype("float32")
    out = disc(z).numpy()
    assert out.min() < 0.0 or out.max() > 1.0  # a sigmoid output could never leave [0, 1]


# ---------------------------------------------------------------------- mixer pretraining
def test_pretrain_mixer_moves_mean_and_covariance_towards_standard_normal():
    model = _small(mixer_units=(32,), code_dim=8)
    noise = np.random.RandomState(5).randn(4000, 16).astype("float32")

    def distances():
        c = model.codes(noise).numpy().reshape(4000, -1)
        return np.sum(c.mean(0) ** 2), np.sum((np.cov(c, rowvar=False) - np.eye(c.shape[1])) ** 2)

    m0, c0 = distances()
    report = model.pretrain_mixer(steps=150, batch_size=512, learning_rate=3e-3, verbose=0)
    m1, c1 = distances()
    assert c1 < 0.3 * c0 and m1 < 0.3 * m0 + 1e-3
    assert report["cov_after"] < report["cov_before"]


# ---------------------------------------------------------------------- training
def test_short_fit_improves_sampled_network_accuracy():
    x, y = hk.data.load_arrays("digits", "train")
    xt, yt = hk.data.load_arrays("digits", "test")
    x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    model = _small(generator_units=(64,), num_networks=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), discriminator_optimizer=keras.optimizers.Adam(1e-3))
    model.pretrain_mixer(steps=50, batch_size=256, verbose=0)

    def sampled_accuracy():
        out = model.target.apply(model.sample(8, seed=123), xt).numpy()
        return np.mean(out.argmax(-1) == yt[None])

    before = sampled_accuracy()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=0).repeat().batch(32)
    history = model.fit(ds, epochs=1, steps_per_epoch=250, verbose=0)
    after = sampled_accuracy()
    assert before < 0.3 and after > 0.7, (before, after)
    assert np.isfinite(history.history["d_loss"][-1])


# ---------------------------------------------------------------------- serialisation
def test_config_and_compile_config_round_trip(tmp_path):
    model = _small(beta=0.25, generator_loss="minimax")
    model.compile(optimizer=keras.optimizers.Adam(2e-4), discriminator_optimizer=keras.optimizers.RMSprop(5e-4))
    config = model.get_config()
    clone = HyperGAN.from_config(config)
    assert clone.get_config() == config
    assert clone.target.num_params == model.target.num_params
    clone.compile_from_config(model.get_compile_config())
    assert isinstance(clone.optimizer, keras.optimizers.Adam)
    assert isinstance(clone.discriminator_optimizer, keras.optimizers.RMSprop)
    assert np.isclose(float(clone.discriminator_optimizer.learning_rate), 5e-4)
    assert np.isclose(float(clone.optimizer.learning_rate), 2e-4)

    x = np.random.RandomState(0).rand(8, 64).astype("float32")
    model.train_on_batch(x, np.arange(8) % 10)
    path = str(tmp_path / "hypergan.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, HyperGAN) and loaded.beta == 0.25
    assert isinstance(loaded.discriminator_optimizer, keras.optimizers.RMSprop)
    a, b = model.sample(3, seed=4), loaded.sample(3, seed=4)
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), rtol=1e-6)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="task"):
        _small(task="segmentation")
    with pytest.raises(ValueError, match="generator_loss"):
        _small(generator_loss="wasserstein")
    with pytest.raises(ValueError, match="beta"):
        _small(beta=-1.0)
    with pytest.raises(ValueError, match="num_networks"):
        _small(num_networks=0)
    with pytest.raises(TypeError, match="target"):
        HyperGAN(42)
    model = _small()
    with pytest.raises(ValueError, match="noise_dim"):
        model.generate(np.zeros([2, 5], "float32"))
    with pytest.raises(ValueError, match="loss"):
        model.compile(loss="mse")
    with pytest.raises(ValueError, match="output_shapes"):
        LayerGenerator({})


def test_wide_output_layer_gradient_matches_plain_dense():
    """The blocked kernel gradient of a wide generator output layer equals autodiff of h @ W + b."""
    from hyperkeras.generators.hypergan import _GRADIENT_BLOCK, LayerGenerator

    width = 2 * _GRADIENT_BLOCK + 37  # three blocks, the last one partial
    gen = LayerGenerator({"dense/kernel": (width - 5, 1), "dense/bias": (5,)}, fan_in=9, hidden_units=(6,))
    codes = tf.constant(np.random.RandomState(0).randn(4, 3).astype("float32"))
    gen(codes)
    weights = tf.constant(np.random.RandomState(1).randn(4, width).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        out = gen(codes)
        flat = tf.concat([tf.reshape(out["dense/kernel"], [4, -1]), out["dense/bias"]], axis=1)
        ours = tf.reduce_sum(flat * weights)
        h = gen.hidden[0](codes)
        plain = tf.reduce_sum((tf.matmul(h, gen.out.kernel) + gen.out.bias) * gen._scale * weights)
    np.testing.assert_allclose(ours.numpy(), plain.numpy(), rtol=1e-5)
    for a, b in zip(tape.gradient(ours, gen.trainable_variables), tape.gradient(plain, gen.trainable_variables)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)

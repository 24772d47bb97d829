"""`Hypernetwork` and its two presets through the Keras entry points a user reaches for first: fit on NumPy
and tf.data with any batch size, sample_weight, one-hot labels, validation, evaluate, predict, callbacks,
export, .keras round trips, clear errors, no retracing; and the generator / regulariser contracts."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras.generators import DeutschGenerator, Generator, HyperGANGenerator
from hyperkeras.models import EntropyHypernetwork, HyperGAN, Hypernetwork
from hyperkeras.objectives import Entropy, LatentGAN

FEATURES, CLASSES = 12, 5


def _target(activation=None):
    return hk.TargetNetwork(
        keras.Sequential(
            [
                keras.Input((FEATURES,)),
                keras.layers.Dense(8, activation="relu", name="h"),
                keras.layers.Dense(CLASSES, activation=activation, name="out"),
            ]
        )
    )


def _data(n=1000, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, FEATURES).astype("float32")
    y = (x[:, :CLASSES].argmax(1)).astype("int32")  # learnable labels
    return x, y


def _deutsch(target=None, **kw):
    target = target or _target()
    gen = DeutschGenerator.from_target(
        target, noise_dim=6, code_size=3, extractor_units=(16,), generator_units=(16,), seed=0
    )
    args = dict(lam=10.0, num_networks=8, seed=0, batchnorm_recalibration=2)
    args.update(kw)
    return EntropyHypernetwork(target, gen, **args)


def _hypergan(target=None, **kw):
    args = dict(
        noise_dim=8,
        code_dim=4,
        mixer_units=(16,),
        generator_units=(16,),
        discriminator_units=(8,),
        num_networks=4,
        seed=0,
    )
    args.update(kw)
    return HyperGAN(target or _target(), **args)


def _compiled(kind, **kw):
    model = _deutsch(**kw) if kind == "deutsch" else _hypergan(**kw)
    if kind == "deutsch":
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    else:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), discriminator_optimizer=keras.optimizers.Adam(1e-3))
    return model


KINDS = ["deutsch", "hypergan"]


def _ensemble_probs(model, x):
    params = model.sample(model.num_networks, seed=model.seed or 0)
    return tf.nn.softmax(model.target.as_logits(model.target.apply(params, x)), -1).numpy().mean(0)


# ---------------------------------------------------------------------- fit / evaluate / predict
@pytest.mark.parametrize("kind", KINDS)
def test_fit_on_numpy_with_batch_48_validation_callbacks_evaluate_predict(kind):
    x, y = _data()
    model = _compiled(kind)
    batches = []
    callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: batches.append(b))
    hist = model.fit(
        x, y, batch_size=48, epochs=2, validation_data=(x[:100], y[:100]), callbacks=[callback], verbose=0
    ).history
    assert len(batches) == 2 * 21  # 1000 = 20 × 48 + 40: the partial last batch trains too
    shared = {"loss", "task_loss", "accuracy"}
    assert shared | {f"val_{k}" for k in shared} <= set(hist)
    assert all(np.isfinite(v).all() for v in hist.values())
    extra = {"entropy"} if kind == "deutsch" else {"adversarial", "d_loss"}
    assert set(model.evaluate(x, y, batch_size=48, verbose=0, return_dict=True)) == shared | extra

    # predict: batch-first mean probabilities of the fixed networks sample(num_networks, seed), any batch size.
    probs = model.predict(x[:101], batch_size=48, verbose=0)
    assert probs.shape == (101, CLASSES)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs, _ensemble_probs(model, x[:101]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model(x[:7]).numpy(), probs[:7], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_fit_on_tf_data_with_partial_batches_and_no_retracing(kind):
    x, y = _data(200)
    model = _compiled(kind)
    traces = []
    step = model.train_step

    def counting_step(data):
        traces.append(1)  # runs once per trace
        return step(data)

    model.train_step = counting_step
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(48)  # 4 × 48 + 8
    model.fit(ds, epochs=1, verbose=0)
    first = len(traces)
    model.fit(ds, epochs=2, verbose=0)
    model.fit(x, y, batch_size=48, epochs=1, verbose=0)
    assert len(traces) == first <= 2
    if kind == "deutsch":  # batch-norm recalibration after every fit: traced once too
        assert model._recalibrator._step.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("kind", KINDS)
def test_sample_weight_changes_the_update_and_weights_the_loss(kind):
    x, y = _data(48)
    w = np.r_[np.ones(24), np.zeros(24)].astype("float32")
    first = _compiled(kind)
    second = _compiled(kind)
    second.set_weights(first.get_weights())
    before = [v.numpy().copy() for v in first.trainable_variables]
    first.train_on_batch(x, y)
    second.train_on_batch(x, y, sample_weight=w)
    moved = [
        not np.allclose(a.numpy(), b.numpy()) for a, b in zip(first.trainable_variables, second.trainable_variables)
    ]
    assert any(moved)
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before, second.trainable_variables))

    # Keras's sum_over_batch_size: Σ_i w_i·l_i / B, with l_i the loss of example i (mean over the networks
    # that see it).
    model = _compiled(kind)
    noise = model.sample_noise(model.num_networks, seed=2)
    full = model.compute_losses(x, y, training=False, noise=noise)["task_loss"]
    half = model.compute_losses(x, y, sample_weight=w, training=False, noise=noise)["task_loss"]
    top = model.compute_losses(x[:24], y[:24], training=False, noise=noise)["task_loss"]
    if kind == "hypergan":  # every network sees every example: the first 24 examples' mean, halved
        np.testing.assert_allclose(float(half), 0.5 * float(top), rtol=1e-5)
    assert not np.isclose(float(full), float(half))


@pytest.mark.parametrize("kind", KINDS)
def test_one_hot_labels_equal_sparse_labels(kind):
    x, y = _data(48)
    onehot = keras.utils.to_categorical(y, CLASSES)
    model = _compiled(kind)
    noise = model.sample_noise(model.num_networks, seed=1)
    sparse = model.compute_losses(x, y, training=False, noise=noise)
    dense = model.compute_losses(x, onehot, training=False, noise=noise)
    np.testing.assert_allclose(float(dense["task_loss"]), float(sparse["task_loss"]), rtol=1e-5)
    hist = model.fit(x, onehot, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"]).all() and 0 <= hist["accuracy"][0] <= 1


@pytest.mark.parametrize("kind", KINDS)
def test_clear_errors_inside_fit(kind):
    x, y = _data(64)
    model = _compiled(kind)
    with pytest.raises(ValueError, match="needs labels"):
        model.fit(x, batch_size=16, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"example shape \(13,\).*\(12,\)"):
        model.fit(np.zeros((64, 13), "float32"), y, batch_size=16, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="labels have shape"):
        model.fit(x, np.zeros((64, 3, 2), "int32"), batch_size=16, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="does not take 'loss'"):
        model.compile(optimizer="adam", loss="mse")


# ---------------------------------------------------------------------- export, saving
@pytest.mark.parametrize("kind", KINDS)
def test_export_after_fit_serves_predict(kind, tmp_path):
    x, y = _data(96)
    model = _compiled(kind)
    model.fit(x, y, batch_size=48, epochs=1, verbose=0)  # trained, never called
    path = str(tmp_path / "served")
    model.export(path, verbose=False)
    served = tf.saved_model.load(path)
    np.testing.assert_allclose(
        served.serve(tf.constant(x[:9])).numpy(), model.predict(x[:9], verbose=0), rtol=1e-5, atol=1e-6
    )


def test_generic_hypernetwork_round_trips_with_its_regularisers_and_optimizers(tmp_path):
    target = _target("softmax")
    gen = HyperGANGenerator.from_target(target, noise_dim=8, code_dim=4, mixer_units=(16,), generator_units=(16,))
    model = Hypernetwork(
        target,
        gen,
        [LatentGAN(beta=0.5, discriminator_units=(8,), optimizer="rmsprop", name="gan")],
        num_networks=3,
        seed=4,
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    assert isinstance(model.gan_optimizer, keras.optimizers.RMSprop) and model.gan_optimizer.built
    x, y = _data(64)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model.save(tmp_path / "h.keras")
    loaded = keras.models.load_model(tmp_path / "h.keras")
    as_json = lambda c: json.loads(json.dumps(c))  # noqa: E731  (tuples -> lists)
    assert type(loaded) is Hypernetwork and as_json(loaded.get_config()) == as_json(model.get_config())
    assert isinstance(loaded.regularizers[0].optimizer, keras.optimizers.RMSprop)
    for a, b in zip(model.gan_optimizer.variables, loaded.regularizers[0].optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    a, b = model.sample(3, seed=1), loaded.sample(3, seed=1)
    for name in a:
        np.testing.assert_allclose(b[name].numpy(), a[name].numpy(), rtol=1e-6)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    loaded.fit(x, y, batch_size=32, epochs=1, verbose=0)  # and trains on


def test_legacy_files_keep_training_and_round_trip(tmp_path):
    here = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_0_1")
    rng = np.random.RandomState(0)
    x, y = rng.rand(96, 64).astype("float32"), rng.randint(0, 10, size=96)
    for name in ("entropy_hypernetwork", "hypergan"):
        model = keras.models.load_model(os.path.join(here, f"{name}.keras"))
        assert int(model.optimizer.iterations) == 3  # optimizer state restored
        model.fit(x, y, batch_size=40, epochs=1, verbose=0)
        model.save(tmp_path / f"{name}.keras")
        again = keras.models.load_model(tmp_path / f"{name}.keras")
        a, b = model.sample(2, seed=5), again.sample(2, seed=5)
        for key in a:
            np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-6)


# ---------------------------------------------------------------------- contracts and tasks
def test_a_user_generator_in_twenty_lines_trains():
    @keras.saving.register_keras_serializable(package="test_hypernetwork")
    class LinearGenerator(Generator):
        def __init__(self, num_params, noise_dim=4, **kwargs):
            super().__init__(**kwargs)
            self.num_params, self.noise_dim = num_params, noise_dim
            self.dense = keras.layers.Dense(num_params)

        def build(self, input_shape=None):
            self.dense.build((None, self.noise_dim))

        def generate(self, target, noise, training=False):
            return target.unflatten(0.1 * self.dense(noise))

        def get_config(self):
            return {**super().get_config(), "num_params": self.num_params, "noise_dim": self.noise_dim}

    target = _target()
    model = Hypernetwork(
        target,
        LinearGenerator(target.num_params),
        [Entropy(weight=0.01, gauge="none")],
        num_networks=4,
        shared_batch=False,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, y = _data(300)
    hist = model.fit(x, y, batch_size=50, epochs=5, verbose=0).history
    assert hist["task_loss"][-1] < hist["task_loss"][0]
    assert model.sample_noise(3, seed=0).shape == (3, 4)
    np.testing.assert_array_equal(model.sample_noise(3, seed=0), tf.random.stateless_normal([3, 4], seed=[0, 0]))


def test_noise_priors_are_tfp_distributions_and_sample_the_0_1_noise():
    import tensorflow_probability as tfp

    deutsch, gan = _deutsch(), _hypergan()
    for model, base in ((deutsch, tfp.distributions.Uniform), (gan, tfp.distributions.Normal)):
        dist = model.generator.noise_distribution
        assert isinstance(dist.distribution, base) and tuple(dist.event_shape) == (model.noise_dim,)
    np.testing.assert_array_equal(
        deutsch.sample_noise(5, seed=7), tf.random.stateless_uniform([5, 6], seed=[7, 0], minval=-1.0, maxval=1.0)
    )
    np.testing.assert_array_equal(gan.sample_noise(5, seed=7), tf.random.stateless_normal([5, 8], seed=[7, 0]))
    assert float(tf.reduce_max(tf.abs(_deutsch(noise_bound=0.25).sample_noise(100)))) <= 0.25


def test_regression_hypergan_fits_numpy_and_predicts_batch_first():
    target = hk.TargetNetwork(hk.targets.build_model("hypergan_regression", hidden=8))
    model = _hypergan(target, task="regression")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), discriminator_optimizer=keras.optimizers.Adam(1e-3))
    x = np.linspace(-1, 1, 100, dtype="float32")[:, None]
    hist = model.fit(x, x[:, 0] ** 3, batch_size=48, epochs=2, verbose=0).history
    assert "accuracy" not in hist and np.isfinite(hist["task_loss"]).all()
    pred = model.predict(x, batch_size=48, verbose=0)
    params = model.sample(model.num_networks, seed=0)
    np.testing.assert_allclose(pred, model.target.apply(params, x).numpy().mean(0), rtol=1e-5, atol=1e-6)
    assert pred.shape == (100, 1)


def test_same_vocabulary_in_both_presets():
    deutsch = EntropyHypernetwork(_target(), num_samples=6, gauge="none")
    assert deutsch.num_networks == deutsch.num_samples == 6
    assert EntropyHypernetwork.from_config(deutsch.get_config()).num_networks == 6
    with pytest.raises(ValueError, match="num_samples"):
        EntropyHypernetwork(_target(), num_samples=6, num_networks=5)
    gan = _hypergan()
    for model in (deutsch, gan):
        assert isinstance(model, Hypernetwork) and model.target is not None
        assert [m.name for m in model.metrics][:2] == ["loss", "task_loss"] and model.metrics[-1].name == "accuracy"

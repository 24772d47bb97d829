"""Numbers a `Hypernetwork` reports against independent computations (issue 19): accuracy per example,
mixed precision that trains like float32, the statistics that fit/evaluate/predict/save/callbacks see,
and BatchNorm targets run with each network's own statistics."""

import keras
import numpy as np
import pytest

import hyperkeras as hk
from hyperkeras.generators import DeutschGenerator, HyperGANGenerator
from hyperkeras.models import EntropyHypernetwork, HyperGAN, Hypernetwork

FEATURES, CLASSES = 6, 3


def _data(n, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, FEATURES).astype("float32")
    return x, x[:, :CLASSES].argmax(1).astype("int32")


def _mlp(bn=False):
    layers = [keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu", name="h")]
    if bn:
        layers.append(keras.layers.BatchNormalization(name="bn"))
    layers.append(keras.layers.Dense(CLASSES, name="out"))
    return keras.Sequential(layers)


def _hypergan(target, **kw):
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
    return HyperGAN(target, **args)


def _deutsch(target, **kw):
    gen = DeutschGenerator.from_target(
        target, noise_dim=6, code_size=3, extractor_units=(16,), generator_units=(16,), seed=0
    )
    args = dict(lam=10.0, num_networks=4, seed=0, batchnorm_recalibration=3)
    args.update(kw)
    return EntropyHypernetwork(target, gen, **args)


@pytest.fixture
def policy():
    """Sets a global dtype policy for the test and always restores float32."""

    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)

    yield set_policy
    keras.mixed_precision.set_global_policy("float32")


# ---------------------------------------------------------------------- accuracy
def test_accuracy_weights_examples_not_batches():
    """9 examples in batches of 8: the metric is the fraction of (network, example) pairs that are right,
    recomputed here from the same networks (the noise stream replayed) and plain argmax."""
    x, y = _data(9)
    model = Hypernetwork(
        hk.TargetNetwork(_mlp()),
        HyperGANGenerator.from_target(
            hk.TargetNetwork(_mlp()), noise_dim=8, code_dim=4, mixer_units=(8,), generator_units=(8,)
        ),
        num_networks=3,
        seed=0,
    )
    model.compile("sgd")
    state = model.seed_generator.state.numpy()
    got = model.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)["accuracy"]
    model.seed_generator.state.assign(state)
    right = []
    for lo in (0, 8):
        out = model.compute_losses(x[lo : lo + 8], y[lo : lo + 8], training=False)["outputs"].numpy()  # [K, b, C]
        right.append(out.argmax(-1) == y[lo : lo + 8][None])
    want = np.concatenate(right, axis=1).mean()
    per_batch = np.mean([r.mean() for r in right])
    assert abs(want - per_batch) > 0.01  # the two weightings differ on this data, so the test can fail
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ---------------------------------------------------------------------- mixed precision
def _one_step(kind, policy_name, optimizer, set_policy, unroll_limit=128):
    set_policy(policy_name)
    keras.utils.set_random_seed(0)
    target = hk.TargetNetwork(_mlp(), unroll_limit=unroll_limit)
    model = _deutsch(target) if kind == "deutsch" else _hypergan(target)
    if kind == "deutsch":
        model.compile(optimizer=optimizer())
    else:
        model.compile(optimizer=optimizer(), discriminator_optimizer=optimizer())
    before = [v.numpy().astype("float64") for v in model.generator_variables]
    x, y = _data(32)
    logs = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    after = [v.numpy().astype("float64") for v in model.generator_variables]
    probs = model.predict(x[:5], verbose=0)
    set_policy("float32")
    return np.concatenate([(a - b).ravel() for a, b in zip(after, before)]), logs, probs


@pytest.mark.parametrize("kind", ["deutsch", "hypergan"])
@pytest.mark.parametrize("policy_name", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_update_equals_the_float32_update(kind, policy_name, policy):
    """One SGD step under a mixed policy moves the generator as float32 does (loss scaling applied and
    undone: without it float16 gradients of the small losses underflow); predictions come out float32."""
    sgd = lambda: keras.optimizers.SGD(0.05)  # noqa: E731
    opt = sgd
    if kind == "deutsch" and policy_name == "mixed_float16":
        # λ·CE − Ĥ is large: at Keras's initial loss scale (2^15) the first float16 gradients overflow and
        # LossScaleOptimizer skips the step (as it does in Keras's own fit); start from a scale that fits.
        opt = lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05), initial_scale=64.0)  # noqa: E731
    ref, ref_logs, ref_probs = _one_step(kind, "float32", sgd, policy)
    got, logs, probs = _one_step(kind, policy_name, opt, policy)
    assert np.abs(ref).max() > 1e-4
    tol = 0.02 if policy_name == "mixed_float16" else 0.1  # bfloat16 keeps 8 bits of mantissa
    assert np.linalg.norm(got - ref) <= tol * np.linalg.norm(ref)
    np.testing.assert_allclose(logs["task_loss"], ref_logs["task_loss"], rtol=tol)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, ref_probs, atol=tol)


def test_mixed_float16_with_an_explicit_loss_scale_optimizer_and_many_networks(policy):
    """LossScaleOptimizer given by the user (Keras's train_step scales the loss with it; ours must too),
    and K above the unrolling limit (the networks run in a tf.map_fn whose output is float16)."""
    lso = lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05))  # noqa: E731
    ref, _, _ = _one_step("hypergan", "float32", lambda: keras.optimizers.SGD(0.05), policy, unroll_limit=2)
    got, _, _ = _one_step("hypergan", "mixed_float16", lso, policy, unroll_limit=2)
    assert np.linalg.norm(got - ref) <= 0.02 * np.linalg.norm(ref)


# ---------------------------------------------------------------------- what fit's callbacks see
def test_validation_checkpoints_and_epoch_ends_see_the_model_fit_returns(tmp_path):
    """The generator's batch-norm statistics are refreshed before validation and at each epoch end, so a
    callback's prediction and a checkpoint of the last epoch equal the final model (they did not: the
    statistics were recalibrated only after fit)."""
    x, y = _data(256)
    model = _deutsch(hk.TargetNetwork(_mlp()), shared_batch=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(model.predict(x[:64], verbose=0)))
    path = str(tmp_path / "last.keras")
    model.fit(
        x,
        y,
        batch_size=64,
        epochs=2,
        verbose=0,
        validation_data=(x[:64], y[:64]),
        callbacks=[record, keras.callbacks.ModelCheckpoint(path)],
    )
    final = model.predict(x[:64], verbose=0)
    np.testing.assert_allclose(seen[-1], final, atol=1e-6)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x[:64], verbose=0), final, atol=1e-6)
    # The same training without recalibration predicts otherwise: the test can tell stale statistics.
    keras.utils.set_random_seed(0)
    twin = _deutsch(hk.TargetNetwork(_mlp()), shared_batch=True, batchnorm_recalibration=0)
    twin.compile(optimizer=keras.optimizers.Adam(1e-2))
    twin.fit(x, y, batch_size=64, epochs=2, verbose=0)
    assert np.abs(twin.predict(x[:64], verbose=0) - final).max() > 1e-3


# ---------------------------------------------------------------------- BatchNorm targets
def test_batchnorm_target_predicts_and_evaluates_with_each_networks_own_statistics(tmp_path):
    """HyperGAN of a target with BatchNorm: predict, evaluate and a reloaded file equal the fixed networks
    as plain Keras models holding their precise-BN statistics (computed here in NumPy from the
    activations the BN layer sees), not the wrapped model's untrained statistics."""
    x, y = _data(320)
    target = hk.TargetNetwork(_mlp(bn=True))
    model = _hypergan(target, state_calibration=5)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), discriminator_optimizer=keras.optimizers.Adam(1e-3))
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    params = model.sample(model.num_networks, seed=0)
    state = {n: v.numpy() for n, v in model.target_state.items()}
    # NumPy precise BN: per network, the mean over the 5 calibration batches of the batch mean / variance
    # of the hidden activations, as Keras computes them in training mode.
    for k in range(model.num_networks):
        w, b = params["h/kernel"][k].numpy(), params["h/bias"][k].numpy()
        hs = [np.maximum(x[i : i + 64] @ w + b, 0) for i in range(0, 320, 64)]
        np.testing.assert_allclose(
            state["bn/moving_mean"][k], np.mean([h.mean(0) for h in hs], 0), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            state["bn/moving_variance"][k], np.mean([h.var(0) for h in hs], 0), rtol=1e-4, atol=1e-5
        )
    nets = [target.to_keras_model(params, k, state=model.target_state) for k in range(model.num_networks)]
    probs = np.mean([keras.ops.softmax(n(x[:50])).numpy() for n in nets], axis=0)
    np.testing.assert_allclose(model.predict(x[:50], verbose=0), probs, atol=1e-5)
    acc = np.mean([(n(x).numpy().argmax(-1) == y) for n in nets])
    np.testing.assert_allclose(
        model.evaluate(x, y, batch_size=320, verbose=0, return_dict=True)["accuracy"], acc, atol=1e-6
    )
    untrained = np.mean(
        [keras.ops.softmax(target.to_keras_model(params, k)(x[:50])).numpy() for k in range(model.num_networks)], axis=0
    )
    assert np.abs(untrained - probs).max() > 1e-3  # the shared statistics would give another answer
    path = str(tmp_path / "bn.keras")
    model.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path).predict(x[:50], verbose=0), probs, atol=1e-5)


def test_batchnorm_target_from_a_python_generator_needs_calibration_data():
    target = hk.TargetNetwork(_mlp(bn=True))
    model = _hypergan(target)
    model.compile()
    x, y = _data(64)

    def batches():
        while True:
            yield x, y

    with pytest.raises(ValueError, match="calibration_data"):
        model.fit(batches(), steps_per_epoch=1, epochs=1, verbose=0)
    model.fit(batches(), steps_per_epoch=1, epochs=1, verbose=0, calibration_data=x)
    assert not np.allclose(model.target_state["bn/moving_mean"].numpy(), 0.0)

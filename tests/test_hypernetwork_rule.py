"""The rule of `Hypernetwork` (issue 19), as a randomized property: for random targets (dense or conv,
with or without BatchNorm, logits or softmax heads, layer regularisers) × tasks × regularisers × batch
splits × precision policies, what `fit` (one step), `evaluate`, `predict` and `hyperkeras.ensembles`
report equals the per-network plain Keras models holding the same weights (`to_keras_model`, with each
network's own state), computed here with Keras's own losses."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hyperkeras as hk
from hyperkeras import ensembles, export
from hyperkeras.generators import HyperGANGenerator
from hyperkeras.models import Hypernetwork
from hyperkeras.models.hypernetwork import split_indices
from hyperkeras.objectives import Entropy, FunctionSpaceEntropy, LatentGAN

SETTINGS = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def cases(draw):
    task = draw(st.sampled_from(["classification", "regression"]))
    return dict(
        task=task,
        image=draw(st.booleans()),
        bn=draw(st.booleans()),
        softmax=task == "classification" and draw(st.booleans()),
        layer_loss=draw(st.booleans()),
        regularizer=draw(st.sampled_from(["none", "entropy", "latent_gan", "fs_entropy"])),
        shared=draw(st.booleans()),
        k=draw(st.integers(2, 3)),
        b=draw(st.integers(2, 9)),
        policy=draw(st.sampled_from(["float32", "float32", "mixed_bfloat16"])),
        seed=draw(st.integers(0, 100)),
    )


def _target_model(c):
    outputs = 3 if c["task"] == "classification" else 2
    reg = keras.regularizers.L2(0.01) if c["layer_loss"] else None
    if c["image"]:
        inp = keras.Input((5, 5, 2))
        h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", kernel_regularizer=reg, name="c")(inp)
    else:
        inp = keras.Input((5,))
        h = keras.layers.Dense(6, activation="tanh", kernel_regularizer=reg, name="c")(inp)
    if c["bn"]:
        h = keras.layers.BatchNormalization(name="bn")(h)
    if c["image"]:
        h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    out = keras.layers.Dense(outputs, activation="softmax" if c["softmax"] else None, name="out")(h)
    return keras.Model(inp, out)


def _regularizers(c):
    return {
        "none": [],
        "entropy": [Entropy(weight=0.01, gauge="none")],
        "latent_gan": [LatentGAN(beta=0.1, discriminator_units=(8,))],
        "fs_entropy": [FunctionSpaceEntropy(weight=0.01)],
    }[c["regularizer"]]


def _keras_losses(c, nets, x, y, training):
    """Per network, Keras's loss of its own examples, its correctness and its layer losses."""
    k, b = len(nets), len(x)
    if c["shared"]:
        blocks = [np.arange(b)] * k
    else:
        idx, mask = (t.numpy() for t in split_indices(b, k))
        blocks = [idx[i][mask[i]] for i in range(k)]
    if c["task"] == "classification":
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=not c["softmax"], reduction=None)
    else:
        loss_fn = keras.losses.MeanSquaredError(reduction=None)
    total, right, layer_losses = 0.0, [], []
    for net, rows in zip(nets, blocks):
        if len(rows) == 0:
            continue
        out = net(x[rows], training=training)
        total += float(np.sum(loss_fn(y[rows], out)))
        if c["task"] == "classification":
            right.append(np.asarray(out).argmax(-1) == y[rows])
        layer_losses.append(float(sum(np.asarray(v) for v in net.losses)) if net.losses else 0.0)
    scale = k if c["shared"] else 1  # an example's loss is the mean over the networks that see it
    return total / scale / b, (np.concatenate(right).mean() if right else None), float(np.mean(layer_losses))


def _tolerance(c):
    return dict(rtol=0.05, atol=0.02) if c["policy"] != "float32" else dict(rtol=2e-4, atol=2e-5)


@SETTINGS
@given(c=cases())
def test_fit_evaluate_predict_equal_per_network_keras_models(c):
    if c["regularizer"] == "fs_entropy" and not c["shared"]:
        c["regularizer"] = "none"  # its probe is the shared batch's examples
    keras.mixed_precision.set_global_policy(c["policy"])
    try:
        _check(c)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _check(c):
    keras.utils.set_random_seed(c["seed"])
    target = hk.TargetNetwork(_target_model(c))
    gen = HyperGANGenerator.from_target(target, noise_dim=6, code_dim=4, mixer_units=(8,), generator_units=(8,))
    model = Hypernetwork(
        target,
        gen,
        _regularizers(c),
        num_networks=c["k"],
        task=c["task"],
        shared_batch=c["shared"],
        seed=c["seed"],
        state_calibration=1,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    rng = np.random.RandomState(c["seed"])
    x = rng.randn(c["b"], *target.input_shape).astype("float32")
    y = (
        rng.randint(0, 3, c["b"]).astype("int32")
        if c["task"] == "classification"
        else rng.randn(c["b"], 2).astype("float32")
    )
    tol = _tolerance(c)

    # fit, one step: its logged task loss is that of the networks of the step, before the update
    weights, stream = model.get_weights(), model.seed_generator.state.numpy()
    logs = {n: v[-1] for n, v in model.fit(x, y, batch_size=c["b"], epochs=1, verbose=0, shuffle=False).history.items()}
    after = model.get_weights()
    model.set_weights(weights)
    model.seed_generator.state.assign(stream)
    noise = model.sample_noise(c["k"], tf.cast(model.seed_generator.next(), tf.int32))
    params = model.generate(noise, training=True, canonical=False)
    nets = [target.to_keras_model(params, i) for i in range(c["k"])]
    task_loss, right, layer_loss = _keras_losses(c, nets, x, y, training=True)
    np.testing.assert_allclose(logs["task_loss"], task_loss, **tol)
    if c["regularizer"] == "none":
        np.testing.assert_allclose(logs["loss"] - logs["task_loss"], layer_loss, **tol)
    if c["layer_loss"]:
        np.testing.assert_allclose(logs["target_losses"], layer_loss, **tol)
    if right is not None:
        np.testing.assert_allclose(logs["accuracy"], right, atol=1e-6 if c["policy"] == "float32" else 0.34)
    model.set_weights(after)

    # evaluate and predict: the fixed networks with their own state (BatchNorm targets) or fresh networks
    state = model.target_state
    fixed = model.generate(model.sample_noise(c["k"], c["seed"]), canonical=False)
    if state is None:
        stream = model.seed_generator.state.numpy()
    got = model.evaluate(x, y, batch_size=c["b"], verbose=0, return_dict=True)
    if state is None:
        model.seed_generator.state.assign(stream)
        params = model.generate(
            model.sample_noise(c["k"], tf.cast(model.seed_generator.next(), tf.int32)), canonical=False
        )
    else:
        params = fixed
    nets = [target.to_keras_model(params, i, state=state) for i in range(c["k"])]
    task_loss, right, _ = _keras_losses(c, nets, x, y, training=False)
    np.testing.assert_allclose(got["task_loss"], task_loss, **tol)
    if right is not None:
        np.testing.assert_allclose(got["accuracy"], right, atol=1e-6 if c["policy"] == "float32" else 0.34)

    nets = [target.to_keras_model(fixed, i, state=state) for i in range(c["k"])]
    outs = [np.asarray(n(x), np.float32) for n in nets]
    if c["task"] == "classification":
        outs = [o if c["softmax"] else np.asarray(keras.ops.softmax(o)) for o in outs]
    np.testing.assert_allclose(model.predict(x, verbose=0), np.mean(outs, axis=0), **tol)

    # hyperkeras.ensembles on the model's own networks: the same members
    if c["task"] == "classification":
        pred = ensembles.predict(model, x, n=c["k"], seed=c["seed"], verbose=0)
        np.testing.assert_allclose(pred.member_probs, np.stack(outs), **tol)
    else:
        pred = ensembles.predict_regression(model, x, n=c["k"], seed=c["seed"], verbose=0)
        np.testing.assert_allclose(pred.mean, np.mean(outs, axis=0), **tol)
    return model, x, outs


@pytest.mark.parametrize(
    "c",
    [
        dict(
            task="classification",
            image=True,
            bn=True,
            softmax=False,
            layer_loss=False,
            regularizer="latent_gan",
            shared=True,
            k=3,
            b=7,
            policy="float32",
            seed=1,
        ),
        dict(
            task="regression",
            image=False,
            bn=False,
            softmax=False,
            layer_loss=True,
            regularizer="entropy",
            shared=False,
            k=2,
            b=5,
            policy="float32",
            seed=2,
        ),
        dict(
            task="classification",
            image=False,
            bn=False,
            softmax=True,
            layer_loss=False,
            regularizer="none",
            shared=True,
            k=2,
            b=4,
            policy="mixed_bfloat16",
            seed=3,
        ),
    ],
    ids=["bn-conv", "regression", "bfloat16-softmax"],
)
def test_saved_model_endpoints_equal_per_network_keras_models(c, tmp_path):
    """After the checks above: the model's own SavedModel (``serve``), `export_ensemble` of its fixed networks
    with their state, and (targets without BatchNorm statistics) `export_generator`'s ``predict``."""
    keras.mixed_precision.set_global_policy(c["policy"])
    try:
        model, x, outs = _check(c)
        tol = _tolerance(c)
        want = np.mean(outs, axis=0)
        model.export(str(tmp_path / "model"), verbose=False)
        loaded = tf.saved_model.load(str(tmp_path / "model"))  # keep a reference: its variables live in it
        served = loaded.serve(tf.constant(x))
        np.testing.assert_allclose(np.asarray(served, np.float32), want, **tol)
        key = "mean_probs" if c["task"] == "classification" else "mean"
        fixed = model.sample(c["k"], c["seed"], canonical=False)
        export.export_ensemble(
            model.target,
            fixed,
            str(tmp_path / "ens"),
            task=c["task"],
            state=model.target_state if model.target.batch_statistics else None,
        )
        loaded = tf.saved_model.load(str(tmp_path / "ens"))
        got = loaded.serve(tf.constant(x))[key]
        np.testing.assert_allclose(got.numpy(), want, **tol)
        if not model.target.batch_statistics:
            export.export_generator(model, str(tmp_path / "gen"), task=c["task"])
            loaded = tf.saved_model.load(str(tmp_path / "gen"))
            out = loaded.predict(x=tf.constant(x), n=tf.constant(c["k"]), seed=tf.constant(c["seed"], tf.int64))
            nets = [model.target.to_keras_model(model.sample(c["k"], c["seed"]), i) for i in range(c["k"])]
            member = [np.asarray(n(x), np.float32) for n in nets]
            if c["task"] == "classification" and not c["softmax"]:
                member = [np.asarray(keras.ops.softmax(o)) for o in member]
            np.testing.assert_allclose(out[key].numpy(), np.mean(member, axis=0), **tol)
    finally:
        keras.mixed_precision.set_global_policy("float32")

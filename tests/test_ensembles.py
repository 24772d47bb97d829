"""hyperkeras.ensembles against per-network evaluation with plain Keras models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras import baselines, ensembles


def _params(target, k, seed=0, scale=0.3):
    rng = np.random.RandomState(seed)
    return {s.name: tf.constant(rng.randn(k, *s.shape).astype("float32") * scale) for s in target.param_specs}


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class FakeGenerator:
    """Stands in for HyperGAN / EntropyHypernetwork: .target and .sample(n, seed) (stateless RNG)."""

    def __init__(self, target):
        self.target = target
        self.calls = []

    def sample(self, n, seed):
        self.calls.append((n, seed))
        flat = tf.random.stateless_normal([n, self.target.num_params], seed=[seed, 0], stddev=0.3)
        return self.target.unflatten(flat)


@pytest.fixture(scope="module")
def mlp_target():
    return hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(5,), hidden=(7,), num_classes=4, seed=0))


def _reference(target, params, x):
    logits = np.stack(
        [target.to_keras_model(params, i)(x).numpy() for i in range(params[target.param_specs[0].name].shape[0])]
    )
    return logits, _softmax(logits)


@pytest.mark.parametrize("chunk_size,batch_size", [(3, 4), (7, 100), (1, 11)])
def test_predict_matches_per_network_keras_models(mlp_target, chunk_size, batch_size):
    k = 7
    params = _params(mlp_target, k)
    x = np.random.RandomState(1).rand(11, 5).astype("float32")
    pred = ensembles.predict(params, x, target=mlp_target, chunk_size=chunk_size, batch_size=batch_size, verbose=0)
    logits, probs = _reference(mlp_target, params, x)
    np.testing.assert_allclose(pred.member_probs, probs, atol=1e-6)
    np.testing.assert_array_equal(pred.member_predictions, logits.argmax(-1))
    np.testing.assert_allclose(pred.mean_probs, probs.mean(0), atol=1e-6)
    np.testing.assert_allclose(pred.fused_logits, logits.mean(0), atol=1e-5)
    np.testing.assert_allclose(pred.fused_probs, _softmax(logits.mean(0)), atol=1e-6)
    votes = np.stack([np.bincount(logits.argmax(-1)[:, i], minlength=4) for i in range(11)])
    np.testing.assert_array_equal(pred.vote_counts, votes)
    np.testing.assert_array_equal(pred.majority_vote, votes.argmax(1))
    mean = probs.mean(0)
    np.testing.assert_allclose(pred.predictive_entropy, -(mean * np.log(mean)).sum(-1), atol=1e-6)
    np.testing.assert_allclose(pred.expected_entropy, (-(probs * np.log(probs)).sum(-1)).mean(0), atol=1e-6)
    assert np.all(pred.mutual_information >= 0)
    np.testing.assert_allclose(pred.member_accuracy(np.zeros(11, int)), (logits.argmax(-1) == 0).mean(1))


def test_conv_target_and_dataset_input():
    target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist", input_shape=(12, 12, 1), seed=0))
    params = _params(target, 3, scale=0.1)
    rng = np.random.RandomState(2)
    x = rng.rand(10, 12, 12, 1).astype("float32")
    y = rng.randint(0, 10, 10)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    pred = ensembles.predict(params, ds, target=target, chunk_size=2, verbose=0)
    _, probs = _reference(target, params, x)
    np.testing.assert_allclose(pred.member_probs, probs, atol=1e-5)
    np.testing.assert_array_equal(pred.labels, y)


def test_generator_source_samples_once_and_is_reproducible(mlp_target):
    gen = FakeGenerator(mlp_target)
    x = np.random.RandomState(3).rand(6, 5).astype("float32")
    a = ensembles.predict(gen, x, n=9, seed=4, chunk_size=4, verbose=0)
    assert gen.calls == [(9, 4)]  # one generator pass for all 9 networks
    b = ensembles.predict(gen, x, n=9, seed=4, chunk_size=2, verbose=0)
    c = ensembles.predict(gen, x, n=9, seed=5, verbose=0)
    np.testing.assert_allclose(a.mean_probs, b.mean_probs, atol=1e-6)
    assert not np.allclose(a.mean_probs, c.mean_probs)
    _, probs = _reference(mlp_target, gen.sample(9, 4), x)
    np.testing.assert_allclose(a.mean_probs, probs.mean(0), atol=1e-6)


def test_deep_ensemble_list_of_models(mlp_target):
    params = _params(mlp_target, 3)
    models = [mlp_target.to_keras_model(params, i) for i in range(3)]
    x = np.random.RandomState(4).rand(8, 5).astype("float32")
    members = ensembles.as_members(models)
    assert isinstance(members, ensembles.TargetMembers)  # stacked into one vectorised computation
    pred = ensembles.predict(models, x, verbose=0)
    probs = np.stack([_softmax(m(x).numpy()) for m in models])
    np.testing.assert_allclose(pred.mean_probs, probs.mean(0), atol=1e-6)
    # BatchNormalization models stack too (each with its own moving statistics)
    bn = keras.Sequential(
        [keras.Input((5,)), keras.layers.BatchNormalization(), keras.layers.Dense(4, activation="softmax")]
    )
    stacked = ensembles.as_members([bn, bn])
    assert isinstance(stacked, ensembles.TargetMembers) and stacked.output == "probs"
    pred_bn = ensembles.predict([bn, bn], x, verbose=0)
    np.testing.assert_allclose(pred_bn.mean_probs, bn(x).numpy(), atol=1e-6)
    # models of different architectures fall back to a loop over models
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), keras.layers.Dense(4, activation="softmax")])
    mixed = ensembles.as_members([bn, other])
    assert isinstance(mixed, ensembles.ModelMembers) and mixed.output == "probs"


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_models_are_reduced_in_float32(policy):
    """Models built under a mixed policy output half-precision logits; the ensemble's probabilities are the
    float32 softmax of those logits (rows summing to 1 as the metrics require), stacked or looped alike."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        models = [
            keras.Sequential([keras.Input((5,)), keras.layers.Dense(7, activation="tanh"), keras.layers.Dense(4)])
            for _ in range(3)
        ]
        odd = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])  # another architecture: looped
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = np.random.RandomState(4).rand(16, 5).astype("float32")
    for source in (models, models[:2] + [odd]):
        assert source[0](x).dtype == policy.split("_")[1]
        pred = ensembles.predict(source, x, verbose=0)
        want = np.stack([_softmax(m(x).numpy().astype("float64")) for m in source]).mean(0)
        np.testing.assert_allclose(pred.mean_probs.sum(-1), 1.0, atol=1e-6)
        # a stacked ensemble may compute in float32 where the models compute in half precision: equal to the
        # half precision's rounding (its machine epsilon, 2^-8 for bfloat16 and 2^-11 for float16)
        np.testing.assert_allclose(
            pred.mean_probs, want, atol={"mixed_bfloat16": 2**-8, "mixed_float16": 2**-11}[policy]
        )
        hk.metrics.classification_summary(pred.mean_probs, np.arange(16) % 4)  # accepted as probabilities


def test_mc_dropout():
    model = hk.targets.build_model("mlp", input_shape=(5,), hidden=(32,), num_classes=4, seed=0)
    x = np.random.RandomState(5).rand(6, 5).astype("float32")
    zero = baselines.with_dropout(model, rate=0.0 + 1e-9)
    deterministic = ensembles.predict(ensembles.MCDropout(zero), x, n=3, verbose=0)
    np.testing.assert_allclose(deterministic.mean_probs, _softmax(model(x).numpy()), atol=1e-5)
    dropped = baselines.with_dropout(model, rate=0.5)
    np.testing.assert_allclose(dropped(x, training=False).numpy(), model(x).numpy(), atol=1e-6)  # weights copied
    pred = baselines.mc_dropout_predict(dropped, x, n=5, chunk_size=2, verbose=0)
    assert pred.num_networks == 5 and pred.member_probs.shape == (5, 6, 4)
    assert not np.allclose(pred.member_probs[0], pred.member_probs[1])  # dropout active in every pass
    with pytest.raises(ValueError, match="no Dropout"):
        ensembles.MCDropout(model)
    with pytest.raises(ValueError, match="number of passes"):
        ensembles.predict(ensembles.MCDropout(dropped), x)


def test_predict_regression_matches_numpy():
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(1,), hidden=(16,), num_classes=1))
    params = _params(target, 10)
    x = np.linspace(-2, 2, 9, dtype="float32")[:, None]
    res = ensembles.predict_regression(params, x, target=target, chunk_size=3, batch_size=4, verbose=0)
    outs = np.stack([target.to_keras_model(params, i)(x).numpy() for i in range(10)])
    np.testing.assert_allclose(res.mean, outs.mean(0), atol=1e-5)
    np.testing.assert_allclose(res.std, outs.std(0), atol=1e-5)
    np.testing.assert_allclose(res.member_outputs, outs, atol=1e-5)


def test_probability_fn_is_differentiable_and_matches_predict(mlp_target):
    gen = FakeGenerator(mlp_target)
    x = tf.constant(np.random.RandomState(6).rand(4, 5).astype("float32"))
    fn = ensembles.probability_fn(gen, n=5, seed=1)
    with tf.GradientTape() as tape:
        tape.watch(x)
        p = fn(x)
        loss = -tf.reduce_sum(tf.math.log(p[:, 0]))
    grad = tape.gradient(loss, x)
    assert grad is not None and np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).max() > 0
    ref = ensembles.predict(fn.members, x.numpy(), verbose=0)
    np.testing.assert_allclose(p.numpy(), ref.mean_probs, atol=1e-6)


def test_large_ensembles_drop_member_probs(mlp_target):
    gen = FakeGenerator(mlp_target)
    x = np.random.RandomState(7).rand(3, 5).astype("float32")
    pred = ensembles.predict(gen, x, n=20, seed=0, chunk_size=8, keep_member_probs=False, verbose=0)
    assert pred.member_probs is None and pred.member_predictions.shape == (20, 3)
    assert pred.vote_counts.sum(1).tolist() == [20, 20, 20]


def test_bad_inputs(mlp_target):
    params = _params(mlp_target, 2)
    x = np.zeros((3, 5), "float32")
    with pytest.raises(ValueError, match="target="):
        ensembles.predict(params, x)
    with pytest.raises(ValueError, match="n .*required"):
        ensembles.predict(FakeGenerator(mlp_target), x)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 5\]"):
        ensembles.predict(params, np.zeros((3, 6)), target=mlp_target)
    with pytest.raises(ValueError, match="only 2 networks"):
        ensembles.predict(params, x, n=3, target=mlp_target)
    with pytest.raises(TypeError, match="source must be"):
        ensembles.predict("nets", x)
    with pytest.raises(ValueError, match="chunk_size"):
        ensembles.predict(params, x, target=mlp_target, chunk_size=0)


# ---------------------------------------------------------------------- deep ensembles of different functions
def _mlp(activation="relu", dropout=0.0, epsilon=1e-3, seed=0):
    """Dense -> BatchNorm -> activation (-> Dropout) -> Dense logits; layer names left to Keras."""
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [
        keras.Input((5,)),
        keras.layers.Dense(8, kernel_initializer=init),
        keras.layers.BatchNormalization(epsilon=epsilon),
        keras.layers.Activation(activation),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    model = keras.Sequential(layers + [keras.layers.Dense(4, kernel_initializer=init)])
    rng = np.random.RandomState(seed)
    bn = model.layers[1]
    bn.moving_mean.assign(rng.randn(8).astype("float32"))
    bn.moving_variance.assign(rng.rand(8).astype("float32") * 0.01)  # epsilon matters
    return model


def _keras_probs(models, x):
    return np.stack([_softmax(m(x, training=False).numpy()) for m in models])


def test_deep_ensemble_of_different_functions_runs_every_model():
    """Once the list was stacked into TargetNetwork(models[0]): the tanh and sigmoid members ran as relu
    (mean_probs off by 0.50 here, 0.46 for the BN epsilon); every member must give its own Keras output."""
    x = np.random.RandomState(4).randn(16, 5).astype("float32") * 3
    weights = _mlp().get_weights()
    cases = {
        "activations": [_mlp(a) for a in ("relu", "tanh", "sigmoid")],
        "batchnorm epsilon": [_mlp(epsilon=1e-3), _mlp(epsilon=0.5)],
        "dropout rate": [_mlp(dropout=0.1), _mlp(dropout=0.5)],
    }
    for case, models in cases.items():
        for m in models:
            m.set_weights(weights)  # the same weights: only the weightless parts differ
        members = ensembles.as_members(models)
        assert isinstance(members, ensembles.ModelMembers), case
        pred = ensembles.predict(models, x, verbose=0)
        probs = _keras_probs(models, x)
        np.testing.assert_allclose(pred.member_probs, probs, atol=1e-6, err_msg=case)
        np.testing.assert_allclose(pred.mean_probs, probs.mean(0), atol=1e-6, err_msg=case)
        with pytest.raises(ValueError, match="different function of its weights"):
            ensembles.stack_params(models)
    # the activations really change the answer (a stacked relu ensemble would be far off)
    relu = _keras_probs(cases["activations"][:1] * 3, x)
    assert np.abs(relu.mean(0) - _keras_probs(cases["activations"], x).mean(0)).max() > 0.05


def test_deep_ensemble_of_one_architecture_is_stacked():
    """Models built alike (different names, initialiser seeds, weights and BN statistics) take the
    stacked TargetNetwork path, with each model's own weights and statistics."""
    models = [_mlp(seed=s) for s in range(3)]
    assert len({m.layers[0].name for m in models}) == 3  # auto-named layers differ
    members = ensembles.as_members(models)
    assert isinstance(members, ensembles.TargetMembers) and members.state is not None
    x = np.random.RandomState(5).randn(9, 5).astype("float32")
    pred = ensembles.predict(models, x, chunk_size=2, verbose=0)
    probs = _keras_probs(models, x)
    np.testing.assert_allclose(pred.member_probs, probs, atol=1e-6)
    np.testing.assert_allclose(pred.mean_probs, probs.mean(0), atol=1e-6)
    assert ensembles.architecture(models[0]) == ensembles.architecture(models[2])


def test_subclassed_models_are_not_stacked():
    class Net(keras.Model):
        def __init__(self, activation, **kwargs):
            super().__init__(**kwargs)
            self.hidden = keras.layers.Dense(6)
            self.out = keras.layers.Dense(3)
            self.act = activation

        def call(self, x):
            return self.out(self.act(self.hidden(x)))

    models = [Net(tf.nn.relu), Net(tf.tanh)]
    for m in models:
        m(np.zeros((1, 5), "float32"))
    models[1].set_weights(models[0].get_weights())
    assert isinstance(ensembles.as_members(models), ensembles.ModelMembers)
    x = np.random.RandomState(6).randn(4, 5).astype("float32")
    pred = ensembles.predict(models, x, verbose=0)
    np.testing.assert_allclose(pred.member_probs, _keras_probs(models, x), atol=1e-6)


# ---------------------------------------------------------------------- BatchNorm targets: whose statistics
def _bn_cnn_target():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(3, name="logits"),
        ]
    )
    return hk.TargetNetwork(model)


def _keras_state_probs(target, params, x, state=None):
    k = params[target.param_specs[0].name].shape[0]
    return np.stack([_softmax(target.to_keras_model(params, i, state=state).predict(x, verbose=0)) for i in range(k)])


def test_frozen_batchnorm_needs_no_statistics_of_its_own():
    """A frozen BatchNorm (trainable=False) runs on its own moving statistics in training too: the wrapped
    model's are every network's, so no state is asked for, and the members equal the Keras models."""
    target = _bn_cnn_target()
    target.model.get_layer("bn").trainable = False
    target = hk.TargetNetwork(target.model)
    assert target.batch_statistics == [] and target.state_specs
    gen = FakeGenerator(target)
    x = np.random.RandomState(3).rand(10, 6, 6, 1).astype("float32") * 4
    pred = ensembles.predict(gen, x, n=3, seed=2, verbose=0)
    np.testing.assert_allclose(pred.member_probs, _keras_state_probs(target, gen.sample(3, 2), x), atol=1e-5)


def test_batchnorm_generated_networks_need_their_own_statistics():
    """The networks of a BatchNorm target once ran on the wrapped model's untrained statistics, silently."""
    target = _bn_cnn_target()
    gen = FakeGenerator(target)
    rng = np.random.RandomState(8)
    data, x = rng.rand(64, 6, 6, 1).astype("float32") * 4, rng.rand(10, 6, 6, 1).astype("float32") * 4
    for call in (
        lambda: ensembles.predict(gen, x, n=4, seed=1, verbose=0),
        lambda: ensembles.predict(gen.sample(4, 1), x, target=target, verbose=0),
        lambda: ensembles.predict_regression(gen, x, n=4, seed=1, verbose=0),
        lambda: ensembles.probability_fn(gen, n=4, seed=1),
    ):
        with pytest.raises(
            ValueError,
            match=r"BatchNormalization layers \(bn\).*state=target.calibrate_state"
            r".*calibration_data=.*state='shared'",
        ):
            call()
    params = gen.sample(4, 1)
    state = target.calibrate_state(params, data)
    own = _keras_state_probs(target, params, x, state)
    for kwargs in ({"state": state}, {"calibration_data": data}):
        pred = ensembles.predict(gen, x, n=4, seed=1, chunk_size=3, verbose=0, **kwargs)
        np.testing.assert_allclose(pred.member_probs, own, atol=1e-5)
        np.testing.assert_allclose(pred.mean_probs, own.mean(0), atol=1e-5)
    first = ensembles.predict(params, x, target=target, n=2, state=state, verbose=0)  # state sliced with n
    np.testing.assert_allclose(first.member_probs, own[:2], atol=1e-5)
    fn = ensembles.probability_fn(gen, n=4, seed=1, state=state)
    np.testing.assert_allclose(fn(x).numpy(), own.mean(0), atol=1e-5)
    shared = ensembles.predict(gen, x, n=4, seed=1, state="shared", verbose=0)
    np.testing.assert_allclose(shared.member_probs, _keras_state_probs(target, params, x), atol=1e-5)
    assert np.abs(shared.member_probs - own).max() > 0.1  # the statistics matter here
    with pytest.raises(ValueError, match="not both"):
        ensembles.predict(gen, x, n=4, seed=1, state=state, calibration_data=data, verbose=0)
    with pytest.raises(ValueError, match="carry|own state"):
        ensembles.predict([target.model], x, state=state, verbose=0)
    with pytest.raises(ValueError, match=r"state\['bn/moving_mean'\] has shape"):
        ensembles.predict(gen, x, n=3, seed=1, state=state, verbose=0)
    # Keras models carry their own statistics: no state needed.
    models = [target.to_keras_model(params, i, state=state) for i in range(4)]
    np.testing.assert_allclose(ensembles.predict(models, x, verbose=0).member_probs, own, atol=1e-5)


def test_hypernetwork_kept_state_is_used_for_its_fixed_networks():
    target = _bn_cnn_target()
    gen = hk.generators.HyperGANGenerator.from_target(
        target, noise_dim=4, code_dim=3, mixer_units=(8,), generator_units=(8,)
    )
    model = hk.models.Hypernetwork(target, gen, num_networks=3, seed=5)
    if not isinstance(getattr(model, "target_state", None), dict):
        pytest.skip("this Hypernetwork keeps no per-network target_state")
    x = np.random.RandomState(9).rand(7, 6, 6, 1).astype("float32")
    model.calibrate_target_state(np.random.RandomState(10).rand(32, 6, 6, 1).astype("float32") * 4)
    pred = ensembles.predict(model, x, n=3, seed=5, verbose=0)
    params = model.sample(3, 5, canonical=False)
    np.testing.assert_allclose(pred.member_probs, _keras_state_probs(target, params, x, model.target_state), atol=1e-5)
    np.testing.assert_allclose(pred.mean_probs, model.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="calibration_data="):  # other networks have no kept statistics
        ensembles.predict(model, x, n=3, seed=6, verbose=0)


def test_repeated_evaluations_trace_each_function_once():
    """Issue 24, item 6: `predict` and the attacks on a list of models made a new TargetNetwork (and so new
    tf.functions) per call, an MCDropout per call new functions too, and the attack gradient retraced for a
    last smaller batch: the binaries printed "triggered tf.function retracing". Now every function is kept
    on its target or model, takes any batch size, and is traced once however often it is called."""
    from hyperkeras import attacks
    from hyperkeras.ensembles.sources import _cache_of

    models = [hk.targets.build_model("mlp", input_shape=(5,), hidden=(6,), num_classes=3, seed=s) for s in range(3)]
    dropout = baselines.with_dropout(models[0], rate=0.5)
    rng = np.random.RandomState(0)
    x, y = rng.rand(21, 5).astype("float32"), rng.randint(0, 3, 21)  # batches of 8, 8 and 5
    for _ in range(3):
        for source in (models, models[:1]):
            ensembles.predict(source, x, batch_size=8, verbose=0)
            attacks.fgsm(source, x, y, eps=0.1, batch_size=8)
        ensembles.predict(ensembles.MCDropout(dropout), x, n=4, batch_size=8, verbose=0)
    target = ensembles.as_members(models).target
    assert target is ensembles.as_members(models[:1]).target  # one TargetNetwork per model, reused
    fns = [
        *_cache_of(target)["chunk_fns"].values(),
        *_cache_of(target)["attack_grad_fns"].values(),
        *_cache_of(dropout)["mc_dropout_fns"].values(),
    ]
    assert len(fns) == 5  # predict and the gradient for 3 and 1 networks; MC dropout for 4 passes
    assert [f.experimental_get_tracing_count() for f in fns] == [1] * len(fns)


def test_mc_dropout_num_samples_is_a_deprecated_name_of_num_networks():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5), keras.layers.Dense(3)])
    with pytest.warns(DeprecationWarning, match="use num_networks="):
        old = ensembles.MCDropout(model, num_samples=7)
    assert old.num_networks == ensembles.MCDropout(model, num_networks=7).num_networks == 7

"""DeutschGenerator (Table 2 parameter count) and EntropyHypernetwork (fit, sampling, serialisation)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras.generators import DeutschGenerator
from hyperkeras.models import EntropyHypernetwork


def _dense_kernels(layers):
    return [tuple(l.kernel.shape) for l in layers if isinstance(l, keras.layers.Dense)]


def test_paper_generator_has_table2_structure_and_633640_parameters():
    gen = DeutschGenerator.paper_config()
    gen.build((None, 300))
    # Table 2 layer structures (input -> hidden -> hidden -> output), no biases.
    assert _dense_kernels(gen.extractor) == [(300, 300), (300, 300), (300, 855)]
    assert [_dense_kernels(w) for w in gen.weight_generators] == [
        [(15, 40), (40, 40), (40, 26)],
        [(15, 100), (100, 100), (100, 801)],
        [(15, 100), (100, 100), (100, 785)],
        [(15, 60), (60, 60), (60, 90)],
    ]
    count = lambda layers: sum(int(np.prod(w.shape)) for l in layers for w in l.trainable_weights)  # noqa: E731
    dense_only = lambda layers: sum(int(np.prod(k)) for k in _dense_kernels(layers))  # noqa: E731
    assert dense_only(gen.extractor) == 436500
    assert [dense_only(w) for w in gen.weight_generators] == [3240, 91600, 90000, 9900]
    assert sum(int(np.prod(w.shape)) for w in gen.trainable_weights) == 633640  # 631,240 + 2,400 BN γ/β
    assert count(gen.extractor) + sum(count(w) for w in gen.weight_generators) == 633640


def test_generated_filters_fill_the_target():
    target = hk.TargetNetwork(hk.targets.build_model("deutsch_mnist"))
    gen = DeutschGenerator.paper_config(target, seed=0)
    filters = gen(tf.random.uniform([3, 300], -1, 1), training=True)
    assert [tuple(f.shape) for f in filters] == [(3, 32, 26), (3, 16, 801), (3, 8, 785), (3, 10, 9)]
    params = target.from_filters({l.name: f for l, f in zip(target.layers, filters)})
    assert target.flatten(params).shape == (3, 20018)
    # Weight sharing: W_l's size does not depend on how many filters layer l has.
    wide = DeutschGenerator.from_target(
        hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(6,), hidden=(50,))), generator_units=(7,)
    )
    narrow = DeutschGenerator.from_target(
        hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(6,), hidden=(5,))), generator_units=(7,)
    )
    for g in (wide, narrow):
        g.build((None, g.noise_dim))
    sizes = lambda g: sum(int(np.prod(w.shape)) for w in g.weight_generators[0][0].trainable_weights)  # noqa: E731
    assert sizes(wide) == sizes(narrow) == 15 * 7


def test_generator_config_round_trip():
    gen = DeutschGenerator(
        [(4, 5), (3, 5)], noise_dim=6, code_size=[2, 3], extractor_units=(8,), generator_units=[(4,), (5, 5)], seed=1
    )
    gen.build((None, 6))
    clone = DeutschGenerator.from_config(gen.get_config())
    clone.build((None, 6))
    clone.set_weights(gen.get_weights())
    z = tf.random.uniform([3, 6], -1, 1)
    for a, b in zip(gen(z, training=False), clone(z, training=False)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="filter_layout"):
        DeutschGenerator([(4,)])
    with pytest.raises(ValueError, match="code_size has 1"):
        DeutschGenerator([(4, 5), (3, 5)], code_size=[2])
    with pytest.raises(ValueError, match="4-layer"):
        DeutschGenerator.paper_config(hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(6,))))
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(6,), hidden=(5,)))
    with pytest.raises(ValueError, match="gauge must be one of"):
        EntropyHypernetwork(target, gauge="sideways")
    with pytest.raises(ValueError, match="does not match"):
        EntropyHypernetwork(target, DeutschGenerator([(5, 8), (10, 6)]))


def _digits_setup(seed=0):
    x, y = hk.data.load_arrays("digits", "train")
    xt, yt = hk.data.load_arrays("digits", "test")
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=x.shape[1:], hidden=(16,), seed=seed))
    gen = DeutschGenerator.from_target(
        target,
        noise_dim=8,
        code_size=4,
        extractor_units=(32,),
        generator_units=(32,),
        batchnorm_momentum=0.9,
        seed=seed,
    )
    return x, y, xt, yt, target, gen


def _sampled_accuracy(model, target, xt, yt, n=16):
    logits = target.apply(model.sample(n, seed=5), xt)
    return np.mean(np.argmax(logits, -1) == yt[None], axis=1)


def test_short_fit_on_digits_improves_sampled_networks(tmp_path):
    x, y, xt, yt, target, gen = _digits_setup()
    model = EntropyHypernetwork(target, gen, lam=100.0, num_samples=8, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = _sampled_accuracy(model, target, xt, yt)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(2000, seed=0).repeat().batch(8 * 16, drop_remainder=True)
    hist = model.fit(ds, steps_per_epoch=100, epochs=1, verbose=0).history
    after = _sampled_accuracy(model, target, xt, yt)
    # The Hypernetwork metric names (+ the 0.1 alias cross_entropy); gauge="transform" reports no penalty.
    assert set(hist) == {"loss", "task_loss", "entropy", "accuracy"}  # 0.1's "cross_entropy" is "task_loss"
    assert np.isfinite(hist["entropy"][-1]) and np.isfinite(hist["loss"][-1])
    assert after.mean() > before.mean() + 0.3, (before.mean(), after.mean())
    assert after.min() > 0.3
    # Generated networks differ from each other (gauge-fixed weights are not all equal).
    flat = model.sample_flat(16, seed=5).numpy()
    assert np.min(np.linalg.norm(flat[1:] - flat[:1], axis=1)) > 1e-3
    # Sampled networks are gauge-fixed: last-layer biases sum to zero.
    np.testing.assert_allclose(model.sample(4, seed=1)["logits/bias"].numpy().sum(1), 0.0, atol=1e-4)
    # .keras round trip: same generator, same samples.
    path = str(tmp_path / "hyper.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, EntropyHypernetwork) and loaded.lam == 100.0
    for name, v in model.sample(4, seed=2).items():
        np.testing.assert_allclose(loaded.sample(4, seed=2)[name].numpy(), v.numpy(), rtol=1e-5, atol=1e-6)


def test_sample_is_seeded_and_works_in_tf_function():
    _, _, _, _, target, gen = _digits_setup()
    model = EntropyHypernetwork(target, gen, num_samples=4)
    a = model.sample_flat(3, seed=7).numpy()
    b = tf.function(lambda s: model.sample_flat(3, seed=s))(tf.constant(7)).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, model.sample_flat(3, seed=8).numpy())
    assert a.shape == (3, target.num_params)


def test_penalty_gauge_with_shared_batch_trains():
    x, y, _, _, target, gen = _digits_setup()
    model = EntropyHypernetwork(target, gen, gauge="penalty", gamma=1e-3, num_samples=4, shared_batch=True, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    hist = model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][-1]) and hist["gauge"][-1] > 0


def test_any_batch_size_is_shared_out_evenly_among_the_networks():
    from hyperkeras.models.hypernetwork import split_indices

    for b, k in [(8, 4), (10, 4), (3, 4), (1, 4), (33, 32), (48, 32)]:
        idx, mask = (t.numpy() for t in split_indices(tf.constant(b), k))
        real = [list(row[m]) for row, m in zip(idx, mask)]
        assert sorted(i for row in real for i in row) == list(range(b))  # every example exactly once
        assert max(map(len, real)) - min(map(len, real)) <= 1  # sizes differ by at most one
        assert all(row == list(range(row[0], row[0] + len(row))) for row in real if row)  # contiguous blocks
        assert idx.min() >= 0 and idx.max() < b
    # When K divides B the blocks are those of reshape(x, [K, B / K]) (the 0.1 protocol).
    np.testing.assert_array_equal(split_indices(tf.constant(12), 4)[0].numpy(), np.arange(12).reshape(4, 3))

    x, y, _, _, target, gen = _digits_setup()
    model = EntropyHypernetwork(target, gen, num_samples=4, batchnorm_recalibration=0)
    model.compile(optimizer="adam")
    hist = model.fit(x[:30], y[:30], batch_size=30, epochs=1, verbose=0).history  # 30 = 4 × 7 + 2
    assert np.isfinite(hist["loss"][0])
    # Partial batches: the loss of a batch of B examples is the mean over its B examples, each seen by
    # its own network (checked against NumPy with the networks fixed).
    noise = model.sample_noise(4, seed=3)
    terms = model.compute_losses(x[:10], y[:10], training=False, noise=noise)
    params = model.generate(noise, gauge_fixed=False)
    logits = target.apply(params, x[:10]).numpy()  # [4, 10, C]: every network on every example
    owner = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]  # 10 = 3 + 3 + 2 + 2
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.mean([logp[k, i, y[i]] for i, k in enumerate(owner)])
    np.testing.assert_allclose(float(terms["task_loss"]), ce, rtol=1e-5)


def test_recalibrate_batchnorm_averages_batch_statistics_like_numpy():
    from hyperkeras.generators.stacks import recalibrate_batchnorm

    rng = np.random.RandomState(0)
    net = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, use_bias=False, name="d1"),
            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3, name="bn1"),
            keras.layers.Dense(4, use_bias=False, name="d2"),
            keras.layers.BatchNormalization(momentum=0.9, name="bn2"),
        ]
    )
    bn1, bn2 = net.get_layer("bn1"), net.get_layer("bn2")
    bn1.gamma.assign(rng.rand(6) + 0.5)
    bn1.beta.assign(rng.randn(6))
    weights_before = [w.numpy().copy() for w in net.trainable_weights]
    batches = [rng.randn(7, 5).astype("float32") * (i + 1) + i for i in range(3)]
    assert (
        recalibrate_batchnorm(net, lambda i: net(tf.gather(tf.constant(np.stack(batches)), i), training=True), 3) == 2
    )

    w1, w2 = net.get_layer("d1").kernel.numpy(), net.get_layer("d2").kernel.numpy()
    stats1, stats2 = [], []
    for b in batches:  # training mode: each BN normalises with its batch's (biased) moments
        h = b @ w1
        m, v = h.mean(0), h.var(0)
        stats1.append((m, v))
        h = (h - m) / np.sqrt(v + 1e-3) * bn1.gamma.numpy() + bn1.beta.numpy()
        h = h @ w2
        stats2.append((h.mean(0), h.var(0)))
    for bn, stats in ((bn1, stats1), (bn2, stats2)):
        np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([m for m, _ in stats], 0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([v for _, v in stats], 0), rtol=1e-4, atol=1e-5)
        assert bn.momentum == 0.9  # restored
    for w, before in zip(net.trainable_weights, weights_before):
        np.testing.assert_array_equal(w.numpy(), before)
    with pytest.raises(ValueError, match="num_batches"):
        recalibrate_batchnorm(net, lambda i: None, 0)


def test_fit_recalibrates_so_samples_match_training_mode_networks():
    x, y, _, _, target, gen = _digits_setup()
    model = EntropyHypernetwork(target, gen, lam=100.0, num_samples=8, seed=0, batchnorm_recalibration=20)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(x[:256], y[:256], batch_size=128, epochs=1, verbose=0)
    stats = [w.numpy().copy() for w in model.generator.non_trainable_weights]
    model.recalibrate_batchnorm(20)  # fit already did exactly this: nothing changes
    for w, s in zip(model.generator.non_trainable_weights, stats):
        np.testing.assert_allclose(w.numpy(), s, rtol=1e-5, atol=1e-6)

    # Stale moving statistics (as after fast early training) make inference-mode samples differ from
    # the training-mode networks the loss saw; recalibration brings them back.
    z = model.sample_noise(model.num_samples, seed=9)

    def gap():
        a = target.flatten(model.generate(z, training=False, gauge_fixed=False)).numpy()
        b = target.flatten(model.generate(z, training=True, gauge_fixed=False)).numpy()
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    for w in model.generator.non_trainable_weights:
        if "moving_mean" in w.path:
            w.assign(w + 3.0)
    model.recalibrate_batchnorm(20)  # the training-mode calls above moved the stats again; start over
    good = gap()
    for w in model.generator.non_trainable_weights:
        if "moving_mean" in w.path:
            w.assign(w + 3.0)
    assert gap() > 5 * good, (gap(), good)
    assert EntropyHypernetwork.from_config(model.get_config()).batchnorm_recalibration == 20
    with pytest.raises(ValueError, match="batchnorm_recalibration"):
        EntropyHypernetwork(target, gen, batchnorm_recalibration=-1)

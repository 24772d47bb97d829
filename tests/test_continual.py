"""hyperkeras.continual against independent references: the output regulariser vs NumPy, EWC's Fisher
diagonal vs a per-example GradientTape loop, the task builders, the accuracy-matrix metrics vs hand-computed
values, and small end-to-end learning checks (the baselines and the hypernetwork on digits)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras import continual


# ------------------------------------------------------------------------------------------ task builders
def _images(n, h=4, w=5, c=1, classes=10, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, h, w, c).astype(np.float32), rng.randint(0, classes, n).astype(np.int32)


def test_split_tasks_consecutive_class_pairs_relabelled():
    x, y = _images(400)
    xt, yt = _images(100, seed=1)
    tasks = continual.split_tasks((x, y), (xt, yt), num_tasks=5)
    assert [t.classes for t in tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    sizes = {len(t.y_train) for t in tasks}
    assert sizes == {min(np.sum(np.isin(y, [2 * k, 2 * k + 1])) for k in range(5))}  # equal: the smallest task's
    for k, t in enumerate(tasks):
        assert set(np.unique(t.y_train)) <= {0, 1} and t.num_classes == 2
        # every training image is an image of the pair, with its label's position in the pair
        for xi, yi in zip(t.x_train[:20], t.y_train[:20]):
            j = np.flatnonzero(np.all(x == xi, axis=(1, 2, 3)))[0]
            assert y[j] == 2 * k + yi
        # the test set is kept whole
        mask = np.isin(yt, [2 * k, 2 * k + 1])
        np.testing.assert_array_equal(t.x_test, xt[mask])
        np.testing.assert_array_equal(t.y_test, yt[mask] - 2 * k)


def test_split_tasks_images_per_task_and_errors():
    x, y = _images(400)
    tasks = continual.split_tasks((x, y), (x, y), num_tasks=2, images_per_task=10, seed=3)
    assert [len(t.y_train) for t in tasks] == [10, 10]
    again = continual.split_tasks((x, y), (x, y), num_tasks=2, images_per_task=10, seed=3)
    np.testing.assert_array_equal(tasks[1].x_train, again[1].x_train)  # seeded
    with pytest.raises(ValueError, match="need 12 classes"):
        continual.split_tasks((x, y), (x, y), num_tasks=6)
    with pytest.raises(ValueError, match="smallest task"):
        continual.split_tasks((x, y), (x, y), num_tasks=2, images_per_task=10_000)
    with pytest.raises(ValueError, match="labels"):
        continual.split_tasks((x, y.astype(np.float32)), (x, y), num_tasks=2)


def test_permuted_tasks_fixed_permutation_per_task():
    x, y = _images(50, h=3, w=4, c=2)
    xt, yt = _images(20, h=3, w=4, c=2, seed=1)
    tasks = continual.permuted_tasks((x, y), (xt, yt), num_tasks=3, seed=5)
    perms = continual.pixel_permutations(3, 12, seed=5)
    assert len({tuple(p) for p in perms}) == 3  # different per task
    for t, task in enumerate(tasks):
        np.testing.assert_array_equal(task.permutation, perms[t])
        assert task.classes == tuple(range(10))
        np.testing.assert_array_equal(task.y_train, y)
        np.testing.assert_array_equal(task.y_test, yt)
        # pixel i of a permuted image is pixel perm[i] of the original (row-major), both channels with it
        for n in (0, 7):
            for i in range(12):
                r, c = divmod(i, 4)
                pr, pc = divmod(int(perms[t][i]), 4)
                np.testing.assert_array_equal(task.x_train[n, r, c], x[n, pr, pc])
                np.testing.assert_array_equal(task.x_test[n, r, c], xt[n, pr, pc])
    # the same seed gives the same permutations; the first tasks do not depend on the number of tasks
    np.testing.assert_array_equal(continual.pixel_permutations(2, 12, seed=5), perms[:2])
    with pytest.raises(ValueError, match="permutation"):
        continual.permute_pixels(x, np.zeros(12, int))


# ------------------------------------------------------------------------------------------------ metrics
def test_average_accuracy_and_forgetting_hand_computed():
    r = [
        [0.90, None, None],
        [0.80, 0.95, None],
        [0.85, 0.70, 0.99],
    ]
    assert continual.average_accuracy(r) == pytest.approx((0.85 + 0.70 + 0.99) / 3)
    # task 0: best of 0.90, 0.80 -> 0.90 - 0.85 = 0.05; task 1: 0.95 - 0.70 = 0.25
    assert continual.forgetting(r) == pytest.approx((0.05 + 0.25) / 2)
    # a task that got better later counts negatively (backward transfer)
    assert continual.forgetting([[0.5, None], [0.6, 0.9]]) == pytest.approx(-0.1)
    assert continual.forgetting([[0.7]]) == 0.0
    with pytest.raises(ValueError, match="last row"):
        continual.average_accuracy([[0.5, None]])
    with pytest.raises(ValueError, match="one row per task"):
        continual.forgetting([[0.5, 0.4, None], [0.5, 0.4, 0.3]][:1])


# ------------------------------------------------------------------------------------ output regulariser
def test_output_regularizer_matches_numpy():
    rng = np.random.RandomState(0)
    current = rng.randn(4, 37).astype(np.float32)
    saved = rng.randn(4, 37).astype(np.float32)
    mask = np.array([1, 1, 0, 0], np.float32)  # tasks 0 and 1 are earlier tasks
    beta = 0.05
    want = beta * (np.sum((current[0] - saved[0]) ** 2) + np.sum((current[1] - saved[1]) ** 2)) / 2
    got = continual.output_regularizer(current, saved, beta, mask)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    all_rows = beta * np.mean(np.sum((current - saved) ** 2, axis=1))
    np.testing.assert_allclose(float(continual.output_regularizer(current, saved, beta)), all_rows, rtol=1e-5)
    assert float(continual.output_regularizer(current, saved, beta, np.zeros(4))) == 0.0  # first task


def test_output_regularizer_gradient_matches_numpy():
    rng = np.random.RandomState(1)
    current = tf.Variable(rng.randn(3, 5).astype(np.float32))
    saved = rng.randn(3, 5).astype(np.float32)
    mask = np.array([1, 0, 1], np.float32)
    with tf.GradientTape() as tape:
        loss = continual.output_regularizer(current, saved, 0.5, mask)
    grad = tape.gradient(loss, current).numpy()
    want = 0.5 * 2 * (current.numpy() - saved) * mask[:, None] / mask.sum()
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------- EWC's Fisher
def _small_model(outputs=3, softmax=False):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.Dense(outputs, activation="softmax" if softmax else None),
        ]
    )


def _tape_fisher(model, x, y=None, head=None):
    """The Fisher diagonal by a Python loop over examples (and classes), one GradientTape each."""
    total = [np.zeros(v.shape, np.float64) for v in model.trainable_variables]
    for xi, yi in zip(x, y if y is not None else [None] * len(x)):
        with tf.GradientTape(persistent=True) as tape:
            out = model(xi[None])
            if model.layers[-1].activation is keras.activations.softmax:
                out = tf.math.log(out)
            if head is not None:
                out = out[:, head[0] : head[1]]
            logp = tf.nn.log_softmax(out)[0]
            per_class = [logp[c] for c in range(int(logp.shape[0]))]
        p = np.exp(logp.numpy())
        classes = [(yi, 1.0)] if yi is not None else [(c, p[c]) for c in range(len(p))]
        for c, w in classes:
            for t, g in zip(total, tape.gradient(per_class[c], model.trainable_variables)):
                t += w * np.square(g.numpy())
        del tape
    return [t / len(x) for t in total]


@pytest.mark.parametrize("softmax", [False, True])
def test_fisher_diagonal_matches_per_example_tape(softmax):
    model = _small_model(softmax=softmax)
    rng = np.random.RandomState(0)
    x = rng.randn(13, 4).astype(np.float32)
    y = rng.randint(0, 3, 13)
    for labels in (y, None):  # empirical (given labels) and expected (model's predictions) Fisher
        got = continual.fisher_diagonal(model, x, labels, batch_size=8)  # 13 or 39 pairs: padded chunks
        want = _tape_fisher(model, x, labels)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-7)


def test_fisher_diagonal_of_one_task_head():
    model = _small_model(outputs=6)  # two heads of 3 classes
    x = np.random.RandomState(2).randn(9, 4).astype(np.float32)

    def second_head(out):
        return continual.task_logits(out, tf.ones([tf.shape(out)[0]], tf.int32), 2, 3)

    got = continual.fisher_diagonal(model, x, logits_fn=second_head)
    want = _tape_fisher(model, x, head=(3, 6))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-7)
    # the first head's weights get no Fisher from the second head's classes
    kernel, bias = got[-2], got[-1]
    assert np.all(kernel[:, :3] == 0) and np.all(bias[:3] == 0) and np.all(kernel[:, 3:] > 0)


def test_fisher_reads_the_current_weights():
    model = _small_model()
    x = np.random.RandomState(3).randn(5, 4).astype(np.float32)
    before = continual.fisher_diagonal(model, x)
    model.layers[0].kernel.assign(model.layers[0].kernel * 2.0)
    after = continual.fisher_diagonal(model, x)  # the same traced function, new weights
    want = _tape_fisher(model, x)
    np.testing.assert_allclose(after[0], want[0], rtol=2e-4, atol=1e-7)
    assert not np.allclose(before[0], after[0])


def test_ewc_penalty_matches_numpy():
    model = _small_model(outputs=4)
    ewc = continual.OnlineEWC(model, num_tasks=2, classes_per_task=2, lam=3.0, gamma=0.5, fisher_examples=6)
    x = np.random.RandomState(4).randn(6, 4).astype(np.float32)
    ewc.after_task(0, x, None)
    f0 = [f.numpy().copy() for f in ewc.fisher]
    anchor = [np.array(v) for v in model.trainable_variables]
    want_f0 = _tape_fisher(model, x, head=(0, 2))
    for g, w in zip(f0, want_f0):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-7)
    shift = [np.random.RandomState(i).randn(*a.shape).astype(np.float32) * 0.1 for i, a in enumerate(anchor)]
    for v, a, s in zip(model.trainable_variables, anchor, shift):
        v.assign(a + s)
    want = 0.5 * 3.0 * sum(np.sum(f * s**2) for f, s in zip(f0, shift))
    np.testing.assert_allclose(float(ewc.penalty()), want, rtol=1e-4)
    ewc.after_task(1, x, None)  # online: F <- gamma F + F_1, anchor <- now
    want_f1 = _tape_fisher(model, x, head=(2, 4))
    for got, a, b in zip(ewc.fisher, f0, want_f1):
        np.testing.assert_allclose(got.numpy(), 0.5 * a + b, rtol=2e-4, atol=1e-7)
    assert float(ewc.penalty()) == 0.0


def test_task_logits_picks_each_examples_head():
    out = tf.reshape(tf.range(12, dtype=tf.float32), [2, 6])  # 3 heads of 2
    got = continual.task_logits(out, tf.constant([2, 0]), 3, 2).numpy()
    np.testing.assert_array_equal(got, [[4.0, 5.0], [6.0, 7.0]])
    np.testing.assert_array_equal(continual.task_logits(out, tf.constant([0, 0]), 1, 6).numpy(), out.numpy())


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def digit_tasks():
    train = hk.data.load_arrays("digits", "train")
    test = hk.data.load_arrays("digits", "test")
    return continual.split_tasks(train, test, num_tasks=3)


def _mlp(outputs, seed=0):
    return hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(32,), num_classes=outputs, seed=seed)


def test_baselines_learn_and_finetuning_forgets_more_than_separate(digit_tasks):
    steps = 80
    sep = continual.run_sequence(continual.SeparateNetworks(_mlp(2), 3, 2), digit_tasks, steps, 32)
    ft = continual.run_sequence(continual.FineTuning(_mlp(6), 3, 2), digit_tasks, steps, 32)
    assert sep["forgetting"] == 0.0  # networks are never touched after their task
    assert sep["matrix"][0][0] == sep["matrix"][2][0]
    assert min(sep["final"]) > 0.9 and min(ft["matrix"][i][i] for i in range(3)) > 0.9  # each task is learned
    assert ft["matrix"][0][1] is None and len(ft["matrix"]) == 3
    mt = continual.Multitask(_mlp(6), 3, 2)
    mt.train_joint(digit_tasks, steps, 32)
    assert min(continual.evaluate_tasks(mt, digit_tasks)) > 0.9


def test_multitask_refuses_sequential_training_and_learners_check_heads(digit_tasks):
    with pytest.raises(TypeError, match="train_joint"):
        continual.Multitask(_mlp(6), 3, 2).train_task(0, digit_tasks[0].x_train, digit_tasks[0].y_train, 1)
    with pytest.raises(ValueError, match="needs a model with 6 outputs"):
        continual.FineTuning(_mlp(2), 3, 2)


def test_hypernetwork_keeps_earlier_tasks_with_the_regulariser(digit_tasks):
    """With β > 0 the first task's generated weights barely move while the next tasks are learned; with
    β = 0 they drift (same seed, same batches)."""
    from hyperkeras.generators import ChunkedGenerator

    def learner(beta):
        keras.utils.set_random_seed(0)
        target = hk.TargetNetwork(_mlp(2))
        gen = ChunkedGenerator.from_target(
            target, chunk_size=300, chunk_dim=4, noise_dim=0, num_conditions=3, condition_dim=4, hidden_units=(16,)
        )
        model = hk.models.Hypernetwork(target, gen, num_networks=1, seed=0)
        return continual.HypernetworkLearner.from_hypernetwork(model, beta=beta)

    drift = {}
    for beta in (0.0, 0.05):
        hn = learner(beta)
        hn.train_task(0, digit_tasks[0].x_train, digit_tasks[0].y_train, 100, 32)
        first = hn.flat_weights([0]).numpy()
        emb_before = hn.embedding.numpy().copy()
        acc0 = continual.evaluate_tasks(hn, digit_tasks, upto=0)[0]
        for t in (1, 2):
            hn.train_task(t, digit_tasks[t].x_train, digit_tasks[t].y_train, 100, 32)
        drift[beta] = float(np.sum((hn.flat_weights([0]).numpy() - first) ** 2))
        # only the present task's embedding row is trained
        np.testing.assert_array_equal(hn.embedding.numpy()[0], emb_before[0])
        assert acc0 > 0.9
        if beta > 0:
            final = continual.evaluate_tasks(hn, digit_tasks)
            assert min(final) > 0.85
    assert drift[0.05] < 0.2 * drift[0.0]


def _small_learner(beta, lookahead, learning_rate=1e-3):
    from hyperkeras.generators import ChunkedGenerator

    keras.utils.set_random_seed(0)
    target = hk.TargetNetwork(_mlp(2))
    gen = ChunkedGenerator.from_target(
        target, chunk_size=300, chunk_dim=4, noise_dim=0, num_conditions=3, condition_dim=4, hidden_units=(16,)
    )
    model = hk.models.Hypernetwork(target, gen, num_networks=1, seed=0)
    return continual.HypernetworkLearner.from_hypernetwork(
        model, beta=beta, learning_rate=learning_rate, lookahead=lookahead
    )


@pytest.mark.parametrize("lookahead", [False, True])
def test_step_gradient_matches_a_reference_built_from_public_pieces(digit_tasks, lookahead):
    """The learner's step gradient vs one built here from `generate`, `TargetNetwork.apply` and
    `output_regularizer` with the variables moved by hand: ∇CE(Θ) + ∇reg(Θ') with Θ' = Θ − lr·∇CE(Θ)
    (lookahead) or Θ' = Θ; the other tasks' embedding rows get no gradient; the variables come back to Θ
    exactly. The lookahead gradient differs from the plain one (the test can fail)."""
    lr, task = 0.5, 1
    hn = _small_learner(beta=2.0, lookahead=lookahead, learning_rate=lr)
    t0, t1 = digit_tasks[0], digit_tasks[1]
    hn.train_task(0, t0.x_train, t0.y_train, 30, 32)
    hn.train_task(task, t1.x_train, t1.y_train, 0, 32)  # saves task 0's outputs, masks the later tasks
    x, y = tf.constant(t1.x_train[:32]), tf.constant(t1.y_train[:32].astype(np.int32))
    theta = [v.numpy().copy() for v in hn.variables]

    def ce_fn():
        out = hn.target.apply(hn.generate(tf.constant([task])), x)[0]
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, out))

    def reg_fn():
        current = hn.target.flatten(hn.generate(tf.range(3)))
        return continual.output_regularizer(current, hn.saved, 2.0, mask=[1.0, 0.0, 0.0])

    def grads_of(fn):
        with tf.GradientTape() as tape:
            value = fn()
        out = [
            np.zeros(v.shape, np.float32) if g is None else tf.convert_to_tensor(g).numpy()
            for g, v in zip(tape.gradient(value, hn.variables), hn.variables)
        ]
        for g, v in zip(out, hn.variables):
            if v is hn.embedding:
                g[np.arange(3) != task] = 0.0
        return out

    g_ce = grads_of(ce_fn)
    if lookahead:
        for v, t, g in zip(hn.variables, theta, g_ce):
            v.assign(t - lr * g)
    g_reg = grads_of(reg_fn)
    for v, t in zip(hn.variables, theta):
        v.assign(t)
    expected = [a + b for a, b in zip(g_ce, g_reg)]

    grads, ce, reg = hn.gradients(x, y, tf.constant(task))
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(), e, rtol=2e-4, atol=1e-6)
    assert float(ce) == pytest.approx(float(ce_fn()), rel=1e-5)
    for v, t in zip(hn.variables, theta):
        np.testing.assert_array_equal(v.numpy(), t)
    plain = [a + b for a, b in zip(g_ce, grads_of(reg_fn))]  # reg's gradient at Θ
    differs = max(float(np.max(np.abs(p - e))) for p, e in zip(plain, expected))
    assert (differs > 1e-4) == lookahead


def test_lookahead_learner_keeps_earlier_tasks(digit_tasks):
    """A lookahead learner trains (inside its tf.function step) and keeps the first task."""
    hn = _small_learner(beta=0.05, lookahead=True)
    result = continual.run_sequence(hn, digit_tasks, 100, 32)
    assert min(result["final"]) > 0.85 and result["forgetting"] < 0.05


def test_from_hypernetwork_refuses_unconditioned_or_noisy_generators():
    from hyperkeras.generators import MLPGenerator

    target = hk.TargetNetwork(_mlp(2))
    plain = hk.models.Hypernetwork(target, MLPGenerator.from_target(target, noise_dim=4), num_networks=1)
    with pytest.raises(ValueError, match="conditioned on task ids"):
        continual.HypernetworkLearner.from_hypernetwork(plain)
    noisy = hk.models.Hypernetwork(
        target, MLPGenerator.from_target(target, noise_dim=4, num_conditions=2), num_networks=1
    )
    with pytest.raises(ValueError, match="noise_dim=0"):
        continual.HypernetworkLearner.from_hypernetwork(noisy)

"""`ChunkedGenerator` (issue 21, item 2): the assembled parameter vector against a NumPy assembly with the same
weights, any target, its compression ratio, and training through `Hypernetwork`."""

import keras
import numpy as np
import pytest

import hyperkeras as hk
from hyperkeras.generators import ChunkedGenerator, MLPGenerator
from hyperkeras.models import Hypernetwork
from hyperkeras.testing import run_generator_test


def _np_chunked(gen, noise, cond):
    """θ [K, P] of a ChunkedGenerator assembled in NumPy: rows [e_c, cond_k, z_k] -> head -> chunks -> concat."""
    emb = np.asarray(gen.chunk_embeddings)
    k, c = noise.shape[0], emb.shape[0]
    out = np.zeros((k, c * gen.chunk_size), np.float64)
    for i in range(k):
        for j in range(c):
            h = np.concatenate([emb[j], cond[i], noise[i]])
            for layer in gen.hidden:
                w, b = (np.asarray(v, np.float64) for v in layer.weights)
                h = np.maximum(h @ w + b, 0.0)
            w, b = (np.asarray(v, np.float64) for v in gen.out.weights)
            out[i, j * gen.chunk_size : (j + 1) * gen.chunk_size] = (h @ w + b) * float(gen.chunk_scale[j])
    u = out[:, : gen.num_params]
    scale = np.concatenate(
        [np.full(int(np.prod(s)), gen.scales[n]) for n, s in gen.param_shapes.items()]
    )  # per-tensor scales, spelled out again from the config
    return np.asarray(gen.offset, np.float64) + scale * u


def _bn_target():
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(7, name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(),
            keras.layers.Dense(3, name="out"),
        ]
    )
    return hk.TargetNetwork(model)


def test_assembled_vector_equals_numpy():
    target = _bn_target()  # P = 42 + 14 + 24 = 80: 7 chunks of 12, the last partial; BatchNorm γ/β offset by θ₀
    gen = ChunkedGenerator.from_target(
        target, chunk_size=12, chunk_dim=3, noise_dim=2, hidden_units=(6,), num_conditions=4, condition_dim=2
    )
    assert gen.num_chunks == 7 and gen.num_params == target.num_params == 80
    noise = gen.sample_noise(3, seed=2).numpy()
    table = np.asarray(gen.condition_embedding.embeddings)
    ids = np.array([0, 3, 1])
    got = target.flatten(gen.generate(target, noise, condition=ids)).numpy()
    want = _np_chunked(gen, noise, table[ids])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    # BatchNorm γ starts around the wrapped model's 1 (offset θ₀ on tensors outside the Conv/Dense layout).
    gamma = gen.generate(target, noise, condition=0)["bn/gamma"].numpy()
    assert abs(gamma.mean() - 1.0) < 0.5


def test_unconditioned_chunked_generator_runs_any_target_and_trains():
    inp = keras.Input((4, 6))
    a = keras.layers.MultiHeadAttention(2, 3, name="mha")(inp, inp)
    h = keras.layers.LayerNormalization(name="ln")(keras.layers.Add()([inp, a]))
    out = keras.layers.Dense(3, name="out")(keras.layers.GlobalAveragePooling1D()(h))
    target = hk.TargetNetwork(keras.Model(inp, out))
    gen = ChunkedGenerator.from_target(target, chunk_size=32, noise_dim=4, hidden_units=(16,))
    noise = gen.sample_noise(2, seed=0).numpy()
    np.testing.assert_allclose(
        target.flatten(gen.generate(target, noise)).numpy(),
        _np_chunked(gen, noise, np.zeros((2, 0))),
        rtol=2e-5,
        atol=2e-6,
    )
    x = np.random.RandomState(0).randn(16, 4, 6).astype("float32")
    y = np.random.RandomState(1).randint(0, 3, 16)
    run_generator_test(gen, target, x, y, num_networks=16)  # the kit compares the mean of K networks with θ₀


def test_compression_ratio():
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(28, 28, 1), hidden=(100,), seed=0))
    p = target.num_params
    assert p == 784 * 100 + 100 + 100 * 10 + 10
    gen = ChunkedGenerator.from_target(
        target, chunk_size=1000, chunk_dim=8, noise_dim=0, hidden_units=(25,), num_conditions=5, condition_dim=8
    )
    chunks = -(-p // 1000)
    by_hand = 5 * 8 + chunks * 8 + (16 * 25 + 25) + (25 * 1000 + 1000)  # tasks, chunks, hidden, head
    assert gen.compression_ratio(target) == pytest.approx(by_hand / p)
    assert gen.compression_ratio() == pytest.approx(by_hand / p)
    assert gen.compression_ratio(target) < 0.4
    # The unchunked generator with the same hidden layer is larger than its target.
    mlp = MLPGenerator.from_target(target, noise_dim=0, hidden_units=(25,), num_conditions=5, condition_dim=8)
    assert mlp.compression_ratio(target) > 1.0


def test_chunked_round_trip_through_a_conditional_hypernetwork(tmp_path):
    target = _bn_target()
    gen = ChunkedGenerator.from_target(target, chunk_size=10, noise_dim=0, hidden_units=(6,), num_conditions=2)
    model = Hypernetwork(target, gen, num_networks=1, seed=0, target_training=False)
    model.compile(optimizer="adam")
    rng = np.random.RandomState(0)
    x, y = rng.randn(16, 5).astype("float32"), rng.randint(0, 3, 16)
    model.fit({"x": x, "condition": np.zeros(16, "int32")}, y, batch_size=8, verbose=0)
    model.save(str(tmp_path / "c.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "c.keras"))
    for task in (0, 1):
        np.testing.assert_array_equal(
            loaded.sample_flat(1, 0, condition=task).numpy(), model.sample_flat(1, 0, condition=task).numpy()
        )
    with pytest.raises(ValueError, match="from_target"):
        Hypernetwork(hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(5,), hidden=(3,))), gen)

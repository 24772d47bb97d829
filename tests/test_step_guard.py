"""`Hypernetwork.fit` stops at the first bad step and keeps the weights from before it (issue 24, items 8-9).

A bad step: a NaN/Inf loss (NaN in the data), or class ids outside [0, C) — which TensorFlow's kernel refuses
but XLA (``jit_compile=True``) turns into a NaN loss. The reference for "the last good state" is an
independent run of the same model, from the same initial weights and noise stream, on the good batches only.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk

BATCH = 16


def _model(**compile_kwargs):
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(16,), seed=0))
    gen = hk.generators.HyperGANGenerator.from_target(
        target, noise_dim=8, code_dim=4, mixer_units=(16,), generator_units=(16,)
    )
    model = hk.models.Hypernetwork(target, gen, [hk.objectives.Entropy(weight=1e-3)], num_networks=4, seed=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), **compile_kwargs)
    return model


def _data(n_batches=6):
    x, y = hk.data.load_arrays("digits", "train")
    return x[: BATCH * n_batches].copy(), y[: BATCH * n_batches].copy()


def _pair(**compile_kwargs):
    """Two models with equal weights, optimizer state and noise stream."""
    a, b = _model(**compile_kwargs), _model(**compile_kwargs)
    b.set_weights(a.get_weights())
    return a, b


def _weights(model):
    return [np.asarray(v.numpy()) for v in model.generator_variables]


@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_nan_input_stops_with_the_step_and_keeps_the_last_good_weights(steps_per_execution):
    x, y = _data()
    x[BATCH * 3 + 5, 2, 2, 0] = np.nan  # the 4th batch
    poisoned, reference = _pair(steps_per_execution=steps_per_execution)
    with pytest.raises(hk.models.TrainingDivergedError, match=r"non-finite loss at step 4\b.*last good state"):
        poisoned.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    reference.fit(x[: BATCH * 3], y[: BATCH * 3], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    got, want = _weights(poisoned), _weights(reference)
    assert all(np.isfinite(w).all() for w in got)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    # The model is usable as it stands: finite predictions.
    assert np.isfinite(poisoned.predict(x[:BATCH], verbose=0)).all()


def test_stop_on_nonfinite_false_trains_on_as_keras_does():
    x, y = _data()
    x[BATCH * 3 + 5, 2, 2, 0] = np.nan
    model = _model()
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, stop_on_nonfinite=False)
    assert any(np.isnan(w).any() for w in _weights(model))  # Keras's answer: the NaN update is applied
    # and the guard comes back on the next default fit (retraced): a poisoned batch stops it again
    model2 = _model()
    model2.fit(x[: BATCH * 2], y[: BATCH * 2], batch_size=BATCH, verbose=0, stop_on_nonfinite=False)
    with pytest.raises(hk.models.TrainingDivergedError, match="step 2"):
        model2.fit(x[BATCH * 2 :], y[BATCH * 2 :], batch_size=BATCH, shuffle=False, verbose=0)


def test_out_of_range_labels_under_xla_are_refused_by_name():
    x, y = _data()
    y[BATCH * 2 + 1] = 10  # class 10 of 10 in the 3rd batch
    bad, reference = _pair(jit_compile=True)
    with pytest.raises(hk.models.TrainingDivergedError, match=r"class labels outside \[0, 10\) in the batch of step 3"):
        bad.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    reference.fit(x[: BATCH * 2], y[: BATCH * 2], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    for g, w in zip(_weights(bad), _weights(reference)):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)  # XLA: the same program, run twice


def test_out_of_range_labels_without_xla_are_refused_by_tensorflow():
    x, y = _data()
    y[3] = -1
    with pytest.raises((tf.errors.InvalidArgumentError, hk.models.TrainingDivergedError), match="label"):
        _model().fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)


def test_good_data_trains_exactly_as_without_the_guard():
    x, y = _data()
    guarded, plain = _pair()
    guarded.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    plain.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, stop_on_nonfinite=False)
    for g, w in zip(_weights(guarded), _weights(plain)):
        np.testing.assert_array_equal(g, w)


def test_guard_is_not_part_of_the_saved_model(tmp_path):
    x, y = _data(2)
    model = _model()
    n_weights = len(model.weights)
    model.fit(x, y, batch_size=BATCH, verbose=0)
    assert len(model.weights) == n_weights
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


MIRRORED = textwrap.dedent(
    r"""
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import hyperkeras as hk

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, y = hk.data.load_arrays("digits", "train")
    x, y = x[:160].copy(), y[:160].copy()
    x[16 * 3 + 9, 1, 1, 0] = np.nan  # the 4th batch, in the second replica's half

    def make():
        with strategy.scope():
            target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(16,), seed=0))
            gen = hk.generators.HyperGANGenerator.from_target(target, noise_dim=8, code_dim=4, mixer_units=(16,),
                                                              generator_units=(16,))
            model = hk.models.Hypernetwork(target, gen, num_networks=4, seed=3)
            model.compile(optimizer=keras.optimizers.Adam(1e-2))
        return model

    poisoned, reference = make(), make()
    reference.set_weights(poisoned.get_weights())
    ds = lambda n: tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).batch(16)
    try:
        poisoned.fit(ds(160), epochs=1, verbose=0)
        sys.exit("no error")
    except hk.models.TrainingDivergedError as e:
        assert "non-finite loss at step 4" in str(e), e
    reference.fit(ds(48), epochs=1, verbose=0)
    for a, b in zip(poisoned.generator_variables, reference.generator_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    print("OK")
    """
)


def test_mirrored_strategy_skips_the_bad_step_on_every_replica(tmp_path, repo_root):
    """Two replicas, NaN in one replica's share: both skip the update (an all-reduced verdict)."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    env = dict(os.environ, PYTHONPATH=str(repo_root), CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]

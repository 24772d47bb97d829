"""MirroredStrategy on 2 logical CPU devices trains like one device (same seed, same global batch).

Each case runs in a fresh process, because logical devices must be configured before TensorFlow starts.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    r"""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import hyperkeras as hk

    strategy_name, out = sys.argv[1], sys.argv[2]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if strategy_name == "mirrored" else tf.distribute.OneDeviceStrategy("/cpu:0")
    assert strategy.num_replicas_in_sync == (2 if strategy_name == "mirrored" else 1)
    x, y = hk.data.load_arrays("digits", "train")
    x, y = x[:256], y[:256]
    results = {}
    for kind in ("direct", "entropy", "hypergan"):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(16,), seed=0))
            if kind == "direct":
                model = target.model
                model.compile(optimizer=keras.optimizers.Adam(1e-2),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            elif kind == "entropy":
                gen = hk.generators.DeutschGenerator.from_target(target, noise_dim=8, code_size=4,
                                                                extractor_units=(16,), generator_units=(16,))
                model = hk.models.EntropyHypernetwork(target, gen, lam=10.0, num_samples=4, shared_batch=True, seed=1)
                model.compile(optimizer=keras.optimizers.Adam(1e-3))
            else:
                model = hk.models.HyperGAN(target, noise_dim=8, code_dim=4, mixer_units=(16,), generator_units=(16,),
                                           discriminator_units=(16,), num_networks=4, seed=1)
                model.compile(optimizer=hk.optimizers.FusedAdam(1e-3),  # the fused kernel per replica
                              discriminator_optimizer=hk.optimizers.FusedAdam(1e-3))
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64, drop_remainder=True)
        model.fit(ds, epochs=2, verbose=0, shuffle=False)
        results[kind] = [np.asarray(v.numpy()).tolist() for v in model.trainable_variables]
    json.dump(results, open(out, "w"))
    """
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Final trainable weights per model kind, for each strategy (one process per strategy)."""
    tmp = tmp_path_factory.mktemp("distribute")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = {}
    for strategy in ("single", "mirrored"):
        path = tmp / f"{strategy}.json"
        res = subprocess.run([sys.executable, "-c", SCRIPT, strategy, str(path)], env=env,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
        out[strategy] = {k: [np.asarray(w) for w in v] for k, v in json.load(open(path)).items()}
    return out


@pytest.mark.parametrize("kind", ["direct", "entropy", "hypergan"])
def test_mirrored_matches_single_device(kind, trained):
    single, mirrored = trained["single"][kind], trained["mirrored"][kind]
    assert len(single) == len(mirrored)
    moved = max(float(np.abs(a).max()) for a in single)
    assert moved > 0
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)

"""Figures of docs/results/trust.md (issue 19 items 4, 8, 9, 10) on scikit-learn's digits, as one JSON line.

Run against any checkout to compare before and after:  PYTHONPATH=<checkout> python scripts/trust_figures.py
"""

import json

import keras
import numpy as np
from sklearn.datasets import load_digits

import hyperkeras as hk
from hyperkeras.generators import DeutschGenerator, HyperGANGenerator
from hyperkeras.models import EntropyHypernetwork, HyperGAN, Hypernetwork


def accuracy_weighting():
    """Item 4: evaluate's accuracy vs the per-example fraction of the same networks (noise replayed)."""
    keras.utils.set_random_seed(0)
    rng = np.random.RandomState(0)
    x = rng.randn(9, 6).astype("float32")
    y = x[:, :3].argmax(1).astype("int32")
    t = hk.TargetNetwork(
        keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    )
    gen = HyperGANGenerator.from_target(t, noise_dim=8, code_dim=4, mixer_units=(8,), generator_units=(8,))
    model = Hypernetwork(t, gen, num_networks=3, seed=0)
    model.compile("sgd")
    state = model.seed_generator.state.numpy()
    got = model.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)["accuracy"]
    model.seed_generator.state.assign(state)
    right = [
        model.compute_losses(x[lo : lo + 8], y[lo : lo + 8], training=False)["outputs"].numpy().argmax(-1)
        == y[lo : lo + 8][None]
        for lo in (0, 8)
    ]
    return {
        "accuracy_reported": round(float(got), 4),
        "accuracy_per_example": round(float(np.concatenate(right, 1).mean()), 4),
    }


def mixed_float16_step():
    """Item 8: sum of |weight changes| of one SGD step of a Deutsch-generated MLP, float32 vs mixed_float16."""
    out = {}
    for policy in ("float32", "mixed_float16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(0)
            t = hk.TargetNetwork(
                keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
            )
            gen = DeutschGenerator.from_target(
                t, noise_dim=6, code_size=3, extractor_units=(16,), generator_units=(16,), seed=0
            )
            model = Hypernetwork(t, gen, num_networks=2, seed=0)
            model.compile(keras.optimizers.SGD(0.1))
            before = [v.numpy().astype("float32") for v in model.generator_variables]
            x = np.random.RandomState(0).randn(16, 4).astype("float32")
            y = np.random.RandomState(1).randint(0, 3, 16)
            model.fit(x, y, batch_size=16, epochs=1, verbose=0)
            out[f"step_change_{policy}"] = float(
                sum(np.abs(v.numpy().astype("float32") - b).sum() for v, b in zip(model.generator_variables, before))
            )
        finally:
            keras.mixed_precision.set_global_policy("float32")
    return out


def digits():
    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    idx = np.random.RandomState(0).permutation(len(x))
    x, y = x[idx], d.target.astype("int32")[idx]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def deutsch_validation():
    """Item 9: val_accuracy per epoch of an EntropyHypernetwork vs its prediction after fit."""
    xtr, ytr, xte, yte = digits()
    keras.utils.set_random_seed(0)
    t = hk.TargetNetwork(
        keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
    )
    m = EntropyHypernetwork(t, DeutschGenerator.from_target(t, noise_dim=16, seed=0), lam=1e3, num_networks=16, seed=0)
    m.compile(optimizer=keras.optimizers.Adam(1e-3))
    h = m.fit(xtr, ytr, batch_size=16 * 16, epochs=4, validation_data=(xte, yte), verbose=0)
    return {
        "deutsch_val_accuracy_per_epoch": [round(v, 3) for v in h.history["val_accuracy"]],
        "deutsch_predict_accuracy_after_fit": round(float((m.predict(xte, verbose=0).argmax(1) == yte).mean()), 3),
    }


def hypergan_batchnorm():
    """Item 10: a HyperGAN of a CNN with BatchNorm: validation and predict metrics."""
    xtr, ytr, xte, yte = digits()
    keras.utils.set_random_seed(0)
    cnn = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    g = HyperGAN(
        hk.TargetNetwork(cnn),
        noise_dim=32,
        code_dim=16,
        mixer_units=(64,),
        generator_units=(64,),
        discriminator_units=(32,),
        num_networks=8,
        seed=0,
    )
    g.compile(optimizer=keras.optimizers.Adam(1e-3), discriminator_optimizer=keras.optimizers.Adam(1e-4))
    h = g.fit(xtr, ytr, batch_size=64, epochs=15, validation_data=(xte, yte), verbose=0)
    p = g.predict(xte, verbose=0)
    return {
        "hypergan_bn_val_task_loss_last": round(h.history["val_task_loss"][-1], 3),
        "hypergan_bn_val_accuracy_last": round(h.history["val_accuracy"][-1], 3),
        "hypergan_bn_predict_nll": round(float(-np.log(np.maximum(p[np.arange(len(yte)), yte], 1e-12)).mean()), 3),
        "hypergan_bn_predict_accuracy": round(float((p.argmax(1) == yte).mean()), 3),
        "hypergan_bn_predict_ece": round(float(hk.metrics.expected_calibration_error(p, yte)), 3),
    }


if __name__ == "__main__":
    result = {}
    for part in (accuracy_weighting, mixed_float16_step, deutsch_validation, hypergan_batchnorm):
        try:
            result.update(part())
        except Exception as e:  # noqa: BLE001 -- an old checkout may fail a part: report it
            result[part.__name__ + "_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    print(json.dumps(result))

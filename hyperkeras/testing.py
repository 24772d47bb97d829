"""The conformance kit: what a contributor runs on a new target, generator or regulariser.

Each ``run_*_test`` builds the piece into the library's machinery, checks the contract against an
independent reference (the plain Keras model with the same weights, the target's own initial values, a
save/load round trip), and raises AssertionError naming what failed. They are plain functions: call them
from any test framework. The library's own suite runs them over every built-in piece
(tests/test_conformance.py).

```python
import hyperkeras as hk
from hyperkeras import testing

model = my_keras_model()                      # any built keras.Model with one input and one output
target = testing.run_target_test(model, x)    # TargetNetwork(model) gives Keras's answers
testing.run_generator_test(MyGenerator.from_target(target), target, x, y)
testing.run_regularizer_test(MyTerm(), x, y)  # by its role: loss term, auxiliary trainer or update rule
```
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from hyperkeras import probabilities
from hyperkeras.generators.base import Generator
from hyperkeras.objectives.base import ROLES, Regularizer, StepInputs, role_of
from hyperkeras.targets import TargetNetwork

__all__ = ["run_target_test", "run_generator_test", "run_regularizer_test"]


def _close(got, want, rtol, atol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape}, expected {want.shape}.")
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        err = np.max(np.abs(got - want))
        raise AssertionError(f"{what}: differs from the reference by up to {err:.3g} (rtol={rtol}, atol={atol}).")


def _random_params(target, k, seed):
    """K networks near the model's own weights (each tensor perturbed by 10% of its scale)."""
    rng = np.random.default_rng(seed)
    own = target.get_params()
    out = {}
    for spec in target.param_specs:
        w = np.asarray(own[spec.name][0], np.float32)
        scale = float(np.std(w)) or 0.1
        out[spec.name] = (w[None] + 0.1 * scale * rng.standard_normal((k, *w.shape))).astype(np.float32)
    return out


def run_target_test(model, x, num_networks: int = 3, seed: int = 0, rtol: float = 1e-4, atol: float = 1e-5):
    """Checks that ``TargetNetwork(model)`` gives Keras's answer for the same weights; returns the target.

    - the model's own weights (``get_params``), run for K networks, give ``model(x)`` for each of them;
    - K perturbed weight sets give, network by network, what the plain Keras model holding them gives
      (``to_keras_model``) — in inference mode, and with the per-network inputs ``[K, B, ...]`` too;
    - ``flatten``/``unflatten`` round-trip the params.
    A model that TargetNetwork refuses raises its own error (a clear refusal is also a conforming answer).
    """
    target = model if isinstance(model, TargetNetwork) else TargetNetwork(model)
    x = tf.convert_to_tensor(x)
    k = int(num_networks)
    own = {name: tf.repeat(v, k, axis=0) for name, v in target.get_params().items()}
    want = target.model(x, training=False)
    got = target.apply(own, x)
    for i in range(k):
        _close(got[i], want, rtol, atol, f"apply(model's own weights)[{i}] vs model(x)")
    params = _random_params(target, k, seed)
    got = target.apply(params, x)
    per_network = target.apply(params, tf.stack([x] * k))
    for i in range(k):
        ref = target.to_keras_model(params, index=i)(x, training=False)
        _close(got[i], ref, rtol, atol, f"apply(params)[{i}] vs the Keras model holding network {i}")
        _close(per_network[i], ref, rtol, atol, f"apply(params, x of shape [K, B, ...])[{i}] vs Keras")
    back = target.unflatten(target.flatten(params))
    for spec in target.param_specs:
        _close(back[spec.name], params[spec.name], 0, 0, f"unflatten(flatten(params))[{spec.name!r}]")
    return target


def _fit_two_steps(model, x, y):
    history = model.fit(x, y, batch_size=max(2, len(x) // 2), epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
    bad = {key: v for key, v in history.history.items() if not np.all(np.isfinite(v))}
    if bad:
        raise AssertionError(f"a two-step fit logged non-finite values: {bad}")
    return history


def _save_load_same(model, x, what):
    path = os.path.join(tempfile.mkdtemp(), "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    _close(loaded.predict(x, verbose=0), model.predict(x, verbose=0), 1e-5, 1e-6, f"{what}: predict after .keras load")
    return loaded


def run_generator_test(
    generator,
    target,
    x,
    y,
    num_networks: int = 4,
    seed: int = 0,
    init_tolerance: float = 0.5,
    task: str = "classification",
):
    """Checks a `Generator` for `target`; returns the trained `Hypernetwork` built around it.

    - `sample_noise` has shape ``[K, noise_dim]`` and is deterministic in its seed;
    - `generate` returns every name of ``target.param_specs`` with shape ``[K, *shape]`` in the variables'
      dtype, and auxiliary outputs of shapes ``[K, *aux_shapes[name]]``; the same noise gives the same params;
    - tensors outside the Conv/Dense filter layout (``target.plain_specs``: BatchNorm γ/β, embeddings, RNN
      weights) start near the target's own initial values: the mean over K networks is within
      `init_tolerance` times the initial tensor's RMS (or of 1 for a zero tensor, e.g. β);
    - ``from_config(get_config())`` gives a generator of the same weights' shapes;
    - a `Hypernetwork` with it fits two steps with finite losses, and its `.keras` file loads and
      predicts the same.
    """
    from hyperkeras.models import Hypernetwork

    if not isinstance(generator, Generator):
        raise AssertionError(f"{type(generator).__name__} is not a hyperkeras.generators.Generator.")
    k = int(num_networks)
    if not generator.built:
        generator.build((None, int(generator.noise_dim)))
    generator.check_target(target)
    noise = generator.sample_noise(k, seed=seed)
    if tuple(noise.shape) != (k, int(generator.noise_dim)):
        raise AssertionError(f"sample_noise({k}) has shape {tuple(noise.shape)}, expected {(k, generator.noise_dim)}.")
    _close(generator.sample_noise(k, seed=seed), noise, 0, 0, "sample_noise with the same seed")
    out = generator.generate(target, noise)
    params, aux = out if isinstance(out, tuple) else (out, {})
    dtypes = {s.name: v.dtype for s, v in zip(target.param_specs, target.model.trainable_variables)}
    for spec in target.param_specs:
        if spec.name not in params:
            raise AssertionError(f"generate() gives no {spec.name!r} (target params: {len(target.param_specs)}).")
        got = params[spec.name]
        if tuple(got.shape) != (k, *spec.shape):
            raise AssertionError(
                f"generate()[{spec.name!r}] has shape {tuple(got.shape)}, expected {(k, *spec.shape)}."
            )
        if got.dtype != dtypes[spec.name]:
            raise AssertionError(f"generate()[{spec.name!r}] is {got.dtype}, the variable {dtypes[spec.name]}.")
    extra = set(params) - {s.name for s in target.param_specs}
    if extra:
        raise AssertionError(f"generate() gives names the target does not have: {sorted(extra)}.")
    for name, shape in dict(generator.aux_shapes).items():
        if name not in aux or tuple(aux[name].shape[1:]) != tuple(shape):
            got = None if name not in aux else tuple(aux[name].shape)
            raise AssertionError(f"aux output {name!r}: {got}, expected (K, *{tuple(shape)}).")
    again = generator.generate(target, noise)
    again = again[0] if isinstance(again, tuple) else again
    for name in params:
        _close(again[name], params[name], 0, 0, f"generate() twice on the same noise, {name!r}")
    initial = target.get_params()
    for spec in target.plain_specs:
        init = np.asarray(initial[spec.name][0], np.float64)
        scale = float(np.sqrt(np.mean(np.square(init)))) or 1.0
        mean = np.mean(np.asarray(params[spec.name], np.float64), axis=0)
        err = float(np.sqrt(np.mean(np.square(mean - init))))
        if err > init_tolerance * scale:
            raise AssertionError(
                f"{spec.name!r} starts {err:.3g} (RMS) from the target's initial value, more than "
                f"{init_tolerance} × its scale {scale:.3g}: non-kernel tensors should start near the target's own."
            )
    clone = type(generator).from_config(generator.get_config())
    if not clone.built:
        clone.build((None, int(generator.noise_dim)))
    if [tuple(w.shape) for w in clone.weights] != [tuple(w.shape) for w in generator.weights]:
        raise AssertionError("from_config(get_config()) gives a generator with other weight shapes.")

    model = Hypernetwork(target, generator, num_networks=k, task=task, seed=seed)
    model.compile(optimizer="adam")
    _fit_two_steps(model, x, y)
    _save_load_same(model, x, type(generator).__name__)
    return model


def run_regularizer_test(regularizer, x, y, target=None, generator=None, num_networks: int = 4, shared_batch=None):
    """Checks a regulariser in its role; returns the trained `Hypernetwork` built around it.

    - its role is one of ``LossTerm``, ``AuxiliaryTrainer``, ``UpdateRule`` (`role_of`), and
      ``from_config(get_config())`` works (`Regularizer.check_config`);
    - `compute` on a real step (`StepInputs`, with particles for an update rule) returns a finite scalar
      loss, exactly the metrics of `metric_names`, and an ``own_loss`` if and only if it is an auxiliary
      trainer; the same step gives the same terms;
    - a `Hypernetwork` with it fits two steps with finite losses and logs its metrics, and its `.keras`
      file loads and predicts the same.
    `target` defaults to a small MLP for `x`, `generator` to a small `HyperGANGenerator` (whose codes
    `LatentGAN` needs).
    """
    from hyperkeras.generators import HyperGANGenerator
    from hyperkeras.models import Hypernetwork
    from hyperkeras.targets import build_model

    if not isinstance(regularizer, Regularizer):
        raise AssertionError(f"{type(regularizer).__name__} is not a hyperkeras.objectives.Regularizer.")
    role = role_of(regularizer)
    if role not in ROLES:
        raise AssertionError(f"role {role!r} is not one of {ROLES}.")
    regularizer.check_config()
    x, y = np.asarray(x), np.asarray(y)
    if target is None:
        target = TargetNetwork(build_model("mlp", input_shape=x.shape[1:], hidden=(16,), seed=0))
    if generator is None:
        generator = HyperGANGenerator.from_target(
            target, noise_dim=8, code_dim=4, mixer_units=(16,), generator_units=(16,)
        )
    if shared_batch is None:
        shared_batch = True
    model = Hypernetwork(target, generator, [regularizer], num_networks=num_networks, seed=0, shared_batch=shared_batch)

    # One real step by hand: what the hypernetwork hands over.
    noise = model.sample_noise(num_networks, seed=1)
    params, aux = model._generate(noise)
    xt = tf.convert_to_tensor(x[: max(num_networks, 8)])
    step = StepInputs(target, params, aux, training=True, seed=tf.constant([1, 2], tf.int32), inputs=xt)
    predictions = probabilities.log_softmax(target.apply(params, xt), target.output_kind)
    step = step._replace(predictions=predictions)
    if role == "update_rule":
        space = regularizer.particle_space
        particles = target.flatten(params) if space == "weight" else tf.reshape(predictions, [num_networks, -1])
        step = step._replace(
            particles=particles, particle_grads=tf.random.stateless_normal(tf.shape(particles), [3, 4])
        )
    terms, again = regularizer.compute(step), regularizer.compute(step)
    loss = np.asarray(terms.loss)
    if loss.shape != () or not np.isfinite(loss):
        raise AssertionError(f"compute(step).loss must be a finite scalar, got {loss!r}.")
    if set(terms.metrics) != set(regularizer.metric_names):
        raise AssertionError(
            f"compute(step).metrics has {sorted(terms.metrics)}; metric_names says {sorted(regularizer.metric_names)}."
        )
    if (terms.own_loss is not None) != (role == "auxiliary_trainer"):
        raise AssertionError(f"own_loss is {'set' if terms.own_loss is not None else 'None'} for a {role}.")
    _close(again.loss, terms.loss, 1e-6, 1e-6, "compute() twice on the same step (the seed fixes any randomness)")

    model.compile(optimizer="adam")
    history = _fit_two_steps(model, x, y)
    missing = [m for m in regularizer.metric_names if not any(key.endswith(m) for key in history.history)]
    if missing:
        raise AssertionError(f"fit did not log the metrics {missing} (logged: {sorted(history.history)}).")
    _save_load_same(model, x, type(regularizer).__name__)
    return model

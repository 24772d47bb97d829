"""The regulariser contract (issue 22 item 1): three roles, one `StepInputs`, worked examples that run.

References: the examples' models are saved and loaded (`.keras`) and predict the same; the update rule of
plain maximum likelihood must give the generator exactly the gradient of the task loss (the hypernetwork
without any regulariser), which checks the particle-gradient scaling independently of SVGD.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras.objectives import (
    SVGD,
    AuxiliaryTrainer,
    Entropy,
    FunctionSpaceEntropy,
    LatentGAN,
    LossTerm,
    Regularizer,
    RegularizerTerms,
    UpdateRule,
    role_of,
)

_FENCE = re.compile(r"```python\n(.*?)```", re.S)


def _docstring_example(cls):
    (code,) = _FENCE.findall(cls.__doc__)
    lines = code.splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines)


def _small():
    target = hk.TargetNetwork(hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(16,), seed=0))
    gen = hk.generators.HyperGANGenerator.from_target(
        target, noise_dim=8, code_dim=4, mixer_units=(16,), generator_units=(16,)
    )
    return target, gen


@pytest.mark.parametrize("role", [LossTerm, AuxiliaryTrainer, UpdateRule])
def test_docstring_example_trains_saves_and_loads(role, tmp_path):
    scope = {}
    exec(compile(_docstring_example(role), f"<{role.__name__} docstring>", "exec"), scope)
    model, x = scope["model"], scope["x"][:32]
    assert role_of(model.regularizers[0]) == role.role
    logs = model.evaluate(x, scope["y"][:32], verbose=0, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.regularizers[0]).__name__ == type(model.regularizers[0]).__name__
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_builtin_roles():
    assert [role_of(r) for r in (Entropy(), FunctionSpaceEntropy(), LatentGAN(), SVGD())] == [
        "loss_term",
        "loss_term",
        "auxiliary_trainer",
        "update_rule",
    ]


class _MaximumLikelihood(UpdateRule):
    particle_space = "weight"

    def compute(self, step):
        k = tf.cast(tf.shape(step.particles)[0], step.particles.dtype)
        return RegularizerTerms(-tf.reduce_sum(tf.stop_gradient(step.particle_grads) * step.particles) / k, {})


@pytest.mark.parametrize("task_weight", [1.0, 3.0])
def test_update_rule_of_maximum_likelihood_gives_the_task_loss_gradient(task_weight):
    """particle_grads = −K · task_weight · ∂task_loss/∂θ_k: ascending them is descending the task loss."""
    x, y = hk.data.load_arrays("digits", "train")
    x, y = x[:40], y[:40]
    grads, weights = [], None
    for regs in ([], [_MaximumLikelihood()]):
        target, gen = _small()
        model = hk.models.Hypernetwork(target, gen, regs, num_networks=4, seed=1, task_weight=task_weight)
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        noise = model.sample_noise(4, seed=5)
        with tf.GradientTape() as tape:
            loss = model.compute_losses(x, y, noise=noise)["loss"]
        grads.append(tape.gradient(loss, model.generator_variables))
    for plain, rule in zip(*grads):
        np.testing.assert_allclose(rule.numpy(), plain.numpy(), rtol=2e-4, atol=1e-6)


class _Legacy(Regularizer):
    """A regulariser written for hyperkeras 0.1: `terms` with keywords."""

    seen = {}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def terms(self, target, params, aux, training=False, seed=None, **inputs):
        _Legacy.seen = {k: v is not None for k, v in inputs.items()} | {"seed": seed is not None}
        flat = target.flatten(params)
        return RegularizerTerms(1e-3 * tf.reduce_mean(tf.square(flat)), {})


def test_a_0_1_regularizer_still_works_and_sees_its_inputs():
    x, y = hk.data.load_arrays("digits", "train")
    target, gen = _small()
    model = hk.models.Hypernetwork(target, gen, [_Legacy()], num_networks=4, seed=1)
    out = model.compute_losses(x[:16], y[:16], prior=tf.zeros([1]))
    plain_target, plain_gen = _small()
    plain = hk.models.Hypernetwork(plain_target, plain_gen, [], num_networks=4, seed=1)
    plain.set_weights(model.get_weights())
    base = plain.compute_losses(x[:16], y[:16])
    assert float(out["loss"]) > float(base["loss"])
    assert _Legacy.seen == {"inputs": True, "task": True, "predictions": True, "prior": True, "seed": True}
    assert role_of(model.regularizers[0]) == "loss_term"


class _NoConfig(LossTerm):
    def __init__(self, scale, **kwargs):  # a function: Keras cannot record it in the automatic config
        super().__init__(**kwargs)
        self.scale = scale

    def compute(self, step):
        return RegularizerTerms(tf.constant(0.0), {})


def test_regularizer_that_cannot_be_loaded_is_refused_at_construction():
    target, gen = _small()
    with pytest.raises(TypeError, match=r"_NoConfig: from_config\(get_config\(\)\) fails.*Implement get_config"):
        hk.models.Hypernetwork(target, gen, [_NoConfig(scale=lambda t: 2 * t)], num_networks=4)


class _NoSpace(UpdateRule):
    def compute(self, step):
        return RegularizerTerms(tf.constant(0.0), {})


def test_update_rule_needs_a_particle_space_and_is_alone():
    target, gen = _small()
    with pytest.raises(ValueError, match="particle_space must be 'weight' or 'function'"):
        hk.models.Hypernetwork(target, gen, [_NoSpace()], num_networks=4)
    target, gen = _small()
    with pytest.raises(ValueError, match="at most one update rule"):
        hk.models.Hypernetwork(target, gen, [SVGD("weight"), _MaximumLikelihood()], num_networks=4)


def test_loss_term_without_compute_says_so():
    class Empty(LossTerm):
        pass

    target, gen = _small()
    params = gen.generate(target, tf.zeros([2, gen.noise_dim]))[0]
    with pytest.raises(NotImplementedError, match="Empty must implement compute"):
        Empty().terms(target, params, {})

"""The conformance kit (hyperkeras.testing, issue 22 item 2) over every built-in target, generator and
regulariser, and the kit's own power: it must reject pieces that break the contract."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import hyperkeras as hk
from hyperkeras import testing
from hyperkeras.objectives import (
    SVGD,
    Entropy,
    FunctionSpaceEntropy,
    LatentGAN,
    LossTerm,
    RegularizerTerms,
)


def _inputs(model, batch=4, seed=0):
    shape = tuple(model.inputs[0].shape[1:])
    dtype = model.inputs[0].dtype
    rng = np.random.default_rng(seed)
    if "int" in str(dtype):
        return rng.integers(0, 20, size=(batch, *shape)).astype(str(dtype))
    return rng.uniform(size=(batch, *shape)).astype("float32")


@pytest.mark.parametrize("name", hk.targets.available_targets())
def test_every_zoo_target_conforms(name):
    model = hk.targets.build_model(name)
    testing.run_target_test(model, _inputs(model), num_networks=2)


def _digits(n=64):
    x, y = hk.data.load_arrays("digits", "train")
    return x[:n], y[:n]


def _bn_cnn():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(h))


@pytest.mark.parametrize("kind", ["deutsch", "hypergan"])
@pytest.mark.parametrize("architecture", ["mlp", "bn_cnn"])
def test_builtin_generators_conform(kind, architecture):
    x, y = _digits()
    model = (
        hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(16,), seed=0)
        if architecture == "mlp"
        else _bn_cnn()
    )
    target = hk.TargetNetwork(model)
    if kind == "deutsch":
        gen = hk.generators.DeutschGenerator.from_target(
            target, noise_dim=8, code_size=4, extractor_units=(16,), generator_units=(16,)
        )
    else:
        gen = hk.generators.HyperGANGenerator.from_target(
            target, noise_dim=8, code_dim=4, mixer_units=(16,), generator_units=(16,)
        )
    testing.run_generator_test(gen, target, x, y)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Entropy(weight=1e-3),
        lambda: Entropy(weight=1e-3, gauge="penalty"),
        lambda: FunctionSpaceEntropy(weight=1e-3, probe_size=4),
        lambda: FunctionSpaceEntropy(weight=1e-3, probe="mixup", probe_size=4),
        lambda: LatentGAN(beta=0.1, discriminator_units=(8,)),
        lambda: SVGD("weight"),
        lambda: SVGD("function"),
    ],
    ids=["entropy", "entropy_penalty", "fs_entropy", "fs_entropy_mixup", "latent_gan", "svgd_weight", "svgd_function"],
)
def test_builtin_regularizers_conform(make):
    x, y = _digits()
    testing.run_regularizer_test(make(), x, y)


# ---------------------------------------------------------------------------------------- the kit's power
class _ShiftedOutput(keras.layers.Layer):
    """Adds a hidden constant that is not a weight: a TargetNetwork cannot know it. (Kept out of the zoo.)"""

    def call(self, inputs):
        return inputs + 1.0


class _WrongMetrics(LossTerm):
    @property
    def metric_names(self):
        return ("promised",)

    def compute(self, step):
        return RegularizerTerms(tf.constant(0.0), {"other": tf.constant(0.0)})


class _Random(LossTerm):
    def compute(self, step):
        return RegularizerTerms(tf.random.uniform([]), {})


def test_kit_rejects_a_regularizer_whose_metrics_differ_from_its_names():
    x, y = _digits()
    with pytest.raises(AssertionError, match=r"metrics has \['other'\]; metric_names says \['promised'\]"):
        testing.run_regularizer_test(_WrongMetrics(), x, y)


def test_kit_rejects_a_regularizer_that_ignores_the_step_seed():
    x, y = _digits()
    with pytest.raises(AssertionError, match="compute\\(\\) twice on the same step"):
        testing.run_regularizer_test(_Random(), x, y)


class _Offset(hk.generators.Generator):
    """Every tensor, BatchNorm's γ included, from N(0, 1): γ starts far from the target's 1."""

    def __init__(self, noise_dim=4, **kwargs):
        super().__init__(**kwargs)
        self.noise_dim = noise_dim

    def generate(self, target, noise, training=False):
        k = tf.shape(noise)[0]
        return {
            s.name: tf.random.stateless_normal(tf.concat([[k], s.shape], 0), [i, 0]) + 0.0 * noise[0, 0]
            for i, s in enumerate(target.param_specs)
        }

    def get_config(self):
        return {**super().get_config(), "noise_dim": self.noise_dim}


def test_kit_rejects_a_generator_whose_batchnorm_starts_far_from_the_target():
    x, y = _digits()
    target = hk.TargetNetwork(_bn_cnn())
    with pytest.raises(AssertionError, match="'bn/gamma' starts .* from the target's initial value"):
        testing.run_generator_test(_Offset(), target, x, y)


def test_kit_catches_a_target_mismatch():
    """The kit's reference is the plain Keras model: a TargetNetwork whose forward pass differed would fail."""
    model = hk.targets.build_model("mlp", input_shape=(8, 8, 1), hidden=(16,), seed=0)
    target = hk.TargetNetwork(model)
    apply = target.apply
    target.apply = lambda params, x, **kw: apply(params, x, **kw) * 1.01  # a 1% error
    with pytest.raises(AssertionError, match="vs model"):
        testing.run_target_test(target, _inputs(model))


def test_zoo_refuses_a_second_registration_of_a_name():
    with pytest.raises(ValueError, match="'mlp' is already registered"):

        @hk.targets.register_target("mlp")
        def other_mlp(**kwargs):
            return None

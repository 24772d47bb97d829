"""Optimizers for models with very large generated-weight heads.

A hypernetwork's output layers are big (HyperGAN's MNIST generators hold 16.7M weights at 512 units),
and Keras 3's Adam updates each variable with about ten separate element-wise TensorFlow ops, each a
full pass over memory. `FusedAdam` computes exactly the same update with TensorFlow's fused
``ResourceApplyAdam`` kernel, one pass: measured 131 ms -> 17 ms per update of 16.5M weights on a 2-core
CPU (see benchmarks/hypergan_step.py for its effect on a whole training step).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="hyperkeras")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose per-variable update runs as one fused TensorFlow kernel.

    Same arguments, same maths and same state as `keras.optimizers.Adam` (m and v slots; weight decay,
    gradient clipping, EMA and loss scaling are handled by the Keras base class as usual):

        m ← m + (1 − β₁)(g − m),  v ← v + (1 − β₂)(g² − v),
        θ ← θ − lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ) · m / (√v + ε)

    Falls back to the Keras implementation for `amsgrad=True`, sparse (`IndexedSlices`) gradients and
    non-TensorFlow backends. Works under `tf.distribute` strategies (the update runs per replica
    variable inside the strategy's update call).

    Example:

    ```python
    model.compile(optimizer=hyperkeras.optimizers.FusedAdam(1e-4),
                  discriminator_optimizer=hyperkeras.optimizers.FusedAdam(1e-4))
    ```
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or keras.backend.backend() != "tensorflow" or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = ops.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=ops.power(ops.cast(self.beta_1, dtype), step),
            beta2_power=ops.power(ops.cast(self.beta_2, dtype), step),
            lr=ops.cast(learning_rate, dtype),
            beta1=ops.cast(self.beta_1, dtype),
            beta2=ops.cast(self.beta_2, dtype),
            epsilon=ops.cast(self.epsilon, dtype),
            grad=ops.cast(gradient, dtype),
        )

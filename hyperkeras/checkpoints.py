"""TensorFlow checkpoints of Keras 3 models, including models that keep layers in lists or dicts.

``tf.train.Checkpoint(model=model)`` follows Keras 3 attributes only partly: layers a model keeps in a
Python list or dict (a generator per target layer, an MLP's layers) are *silently left out*, so such a
checkpoint restores nothing of them. `model_checkpoint` instead records every variable explicitly, in
the model's deterministic variable order, with the optimizer state and any extra trackables beside it:

    ckpt = model_checkpoint(model, step=step_variable)
    manager = tf.train.CheckpointManager(ckpt, folder, max_to_keep=2)
    ...
    restore(ckpt, manager.latest_checkpoint)   # clear error if corrupted or from another model
"""

from __future__ import annotations

import keras
import tensorflow as tf


def optimizers_of(model) -> list:
    """The model's optimizers: ``model.optimizer`` and any other optimizer attribute (e.g. a
    discriminator's), each once."""
    found = []
    for name in ["optimizer", *sorted(vars(model))]:
        value = getattr(model, name, None) if name == "optimizer" else vars(model)[name]
        if isinstance(value, keras.optimizers.Optimizer) and all(value is not f for f in found):
            found.append(value)
    return found


def model_checkpoint(model: keras.Model, include_optimizers: bool = True, **extra) -> tf.train.Checkpoint:
    """A `tf.train.Checkpoint` of all of `model`'s variables (and its optimizers' state).

    Unbuilt optimizers are built first (for ``model.optimizer``: on the model's trainable variables,
    as `fit` would), so that their slots exist to be saved and restored.
    """
    opt_vars = []
    if include_optimizers:
        for opt in optimizers_of(model):
            if not opt.built:
                if opt is not getattr(model, "optimizer", None):
                    raise ValueError(
                        f"optimizer {opt.name!r} of {model.name!r} is not built: build it in compile() so its "
                        "state can be checkpointed."
                    )
                opt.build(model.trainable_variables)
            opt_vars.extend(opt.variables)
    return tf.train.Checkpoint(model_variables=list(model.variables), optimizer_variables=opt_vars, **extra)


def restore(checkpoint: tf.train.Checkpoint, path: str, partial: bool = False):
    """Restores `path` into `checkpoint`, with an error that names the file when it does not fit."""
    try:
        status = checkpoint.restore(path)
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
        if not partial:
            status.assert_consumed()
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(
            f"checkpoint {path} could not be restored ({type(e).__name__}: {str(e)[:500]}). It is corrupted "
            "or was written by a different model; move it away to start afresh."
        ) from e
    return status

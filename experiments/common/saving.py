"""Saving models: ``.keras`` files with or without the optimizers' state (``--save_optimizer``), and
loading them without Keras's warning about the state left out."""

from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS


def save_model(model, path: str, include_optimizer: bool | None = None) -> str:
    """Saves `model` as a ``.keras`` file; its optimizers' state (moments, step counter) only with
    `include_optimizer` (default: the ``--save_optimizer`` flag, off). The compile configuration is always
    kept, so a loaded model is compiled with fresh optimizers. Returns `path`.

    Keras 3's ``model.save`` has no such switch; the optimizers' ``save_own_variables`` is silenced for the
    duration of the save (their groups in the file stay empty). Load such files with `load_model`.
    """
    if include_optimizer is None:
        include_optimizer = bool(FLAGS.save_optimizer) if "save_optimizer" in FLAGS else False
    if include_optimizer:
        model.save(path)
        return path
    import keras

    from hyperkeras import checkpoints

    optimizers = checkpoints.optimizers_of(model)
    for layer in model._flatten_layers(include_self=False):  # e.g. a HyperGAN's latent discriminator
        optimizers += [o for o in checkpoints.optimizers_of(layer) if all(o is not f for f in optimizers)]
    patched = [o for o in optimizers if isinstance(o, keras.optimizers.Optimizer)]
    for opt in patched:
        opt.save_own_variables = _save_nothing
    try:
        model.save(path)
    finally:
        for opt in patched:
            del opt.save_own_variables
    return path


def _save_nothing(store):
    """`save_model`'s stand-in for an optimizer's ``save_own_variables``."""


def load_model(path: str, **kwargs):
    """``keras.models.load_model`` without the warning Keras gives for a file saved by `save_model` without
    optimizer state (the loaded model's optimizers start afresh)."""
    import warnings

    import keras

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        return keras.models.load_model(path, **kwargs)

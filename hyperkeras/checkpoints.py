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


def _escape(name: str) -> str:
    """A child's name as the checkpoint keys spell it (TensorFlow's ``escape_local_name``)."""
    return name.replace(".", "..").replace("/", ".S")


def _expected_variables(checkpoint) -> dict:
    """``{key: variable}`` of the variables `checkpoint` restores, keyed as `tf.train.list_variables` names
    them (``model_variables/0/.ATTRIBUTES/VARIABLE_VALUE``)."""
    view = tf.train.TrackableView(checkpoint)
    found, seen = {}, set()

    def walk(obj, prefix):
        for name, child in view.children(obj).items():
            if id(child) in seen:
                continue
            seen.add(id(child))
            key = prefix + _escape(name)
            if isinstance(child, (tf.Variable, keras.Variable)):
                found[key + "/.ATTRIBUTES/VARIABLE_VALUE"] = child
            else:
                walk(child, key + "/")

    walk(checkpoint, "")
    return found


def _mismatch(checkpoint, path: str, partial: bool) -> str | None:
    """Why the checkpoint at `path` cannot restore `checkpoint`'s variables (missing, other shape or
    dtype; with ``partial=False`` also values the checkpoint holds for variables `checkpoint` lacks), read
    from the checkpoint's index without restoring anything; None when they fit."""
    reader = tf.train.load_checkpoint(path)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    expected = _expected_variables(checkpoint)
    problems = []
    for key, var in expected.items():
        label = f"{key.split('/.ATTRIBUTES')[0]} ({getattr(var, 'path', None) or var.name})"
        if key not in shapes:
            problems.append(f"{label} is not in the checkpoint")
        elif tuple(shapes[key]) != tuple(var.shape):
            problems.append(f"{label} has shape {tuple(shapes[key])} there, {tuple(var.shape)} here")
        elif tf.as_dtype(dtypes[key]) != tf.as_dtype(var.dtype):
            problems.append(
                f"{label} has dtype {tf.as_dtype(dtypes[key]).name} there, {tf.as_dtype(var.dtype).name} here"
            )
    if not partial:
        extra = sorted(
            k
            for k in shapes
            if k.endswith("/.ATTRIBUTES/VARIABLE_VALUE") and k not in expected and not k.startswith("save_counter/")
        )
        problems += [f"{k.split('/.ATTRIBUTES')[0]} is in the checkpoint but not here" for k in extra]
    if not problems:
        return None
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return f"it does not fit the {len(expected)} variables here, {len(problems)} problems: {shown}"


def restore(checkpoint: tf.train.Checkpoint, path: str, partial: bool = False):
    """Restores `path` into `checkpoint`, with an error that names the file when it does not fit.

    The checkpoint's variable names, shapes and dtypes are checked against `checkpoint` first (from the
    checkpoint's index): a checkpoint of another model is refused before anything is restored, so TensorFlow
    does not log a "Value in checkpoint could not be found" line for every value of a restore left half done.
    `partial`: the checkpoint may hold more than `checkpoint` (optimizer state, a step counter).
    """
    try:
        why = _mismatch(checkpoint, path, partial)
    except Exception as e:  # noqa: BLE001 -- an unreadable index: reported below like a failed restore
        why = f"{type(e).__name__}: {str(e)[:500]}"
    if why is not None:
        raise RuntimeError(
            f"checkpoint {path} could not be restored ({why}). It is corrupted or was written by a different "
            "model; move it away to start afresh."
        )
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

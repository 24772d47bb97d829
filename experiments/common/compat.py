"""Patches of Keras that the binaries need, each behind a guard on the Keras versions it was written for.

A patch replaces private Keras functions; it is applied only to the Keras versions in its ``KERAS_VERSIONS``
range (checked against the installed version), and to others only after checking that the functions it
replaces are still there, with a warning to re-check the upstream bug. Nothing is patched on import.
"""

from __future__ import annotations

from absl import logging

# keras-team/keras#20585: seen in Keras 3.15, unchanged in 3.16.
MULTI_WORKER_KERAS_VERSIONS = ((3, 0), (3, 16))  # first and last (major, minor) known to need the fix


def keras_version() -> tuple:
    """The installed Keras version as ``(major, minor)``."""
    import keras

    major, minor = (int(part) for part in keras.__version__.split(".")[:2])
    return major, minor


def fix_keras_multi_worker():
    """Works around two bugs of Keras 3 (3.15; unchanged in 3.16) that make every `fit` and `evaluate` fail
    under MultiWorkerMirroredStrategy with several workers (keras-team/keras#20585): `_maybe_symbolic_build`
    all-reduces the whole first batch just to read its shapes (and cannot reduce a tuple), and the step's
    logs are averaged with ``strategy.reduce("MEAN", v, axis=0)``, which fails for scalars. Here the shapes
    come from the dataset's element spec (no extra iterator: one would advance a ``shuffle``'s
    reshuffle-each-iteration seed, so training would see another data order than on one worker), and logs
    are averaged over replicas (``axis=None``), as Keras does for one worker. Training itself (gradients,
    updates) is Keras's own. Idempotent.

    Version guard: applied as is to Keras `MULTI_WORKER_KERAS_VERSIONS`; a later Keras is patched only if
    the private functions are still there (a warning asks to check whether the bug is fixed), an earlier
    one or one without them raises `RuntimeError` naming the version."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_hyperkeras_multi_worker_fix", False):
        return
    version = keras_version()
    first, last = MULTI_WORKER_KERAS_VERSIONS
    present = hasattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build") and all(
        hasattr(trainer, name) for name in ("reduce_per_replica", "_collective_all_reduce_multi_worker")
    )
    if version < first or not present:
        raise RuntimeError(
            f"--strategy=multi_worker: the work-around of keras-team/keras#20585 was written for Keras "
            f"{first[0]}.{first[1]}-{last[0]}.{last[1]} and does not fit the installed Keras "
            f"{version[0]}.{version[1]} (its private trainer functions differ). Use a Keras in that range."
        )
    if version > last:
        logging.warning(
            "--strategy=multi_worker: patching Keras %d.%d with the work-around of keras-team/keras#20585 "
            "(written for %d.%d-%d.%d); check whether that bug is fixed in this version.",
            *version,
            *first,
            *last,
        )
    build, reduce_per_replica = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and self._distribute_strategy is not None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec  # shapes and dtypes suffice
        return build(self, data_batch=data_batch)

    def reduce(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce
    trainer._hyperkeras_multi_worker_fix = True

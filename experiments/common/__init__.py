"""What every experiment binary shares: flags, run folders, checkpointed training, reports, and recipes.

An experiment module does::

    from absl import app, flags
    from experiments import common

    common.define_flags(dataset="fashion_mnist", steps=2000, batch_size=32)
    flags.DEFINE_float("lam", 1e3, "...")          # its own flags

    def main(argv):
        ctx = common.setup(argv)                   # output dir, flags.json, seeds, strategy
        with ctx.strategy.scope():
            model = ...; model.compile(...)
        common.train(model, make_dataset, ctx)     # resumable, NaN-guarded, TensorBoard
        common.write_results(ctx, metrics, report_markdown)

    if __name__ == "__main__":
        common.run(main)                           # not app.run: --help exits 0, Ctrl-C says how to resume

Run as ``python -m experiments.<name>``; results go to ``runs/<name>`` unless ``--output_dir`` says otherwise.

The modules, one job each (every name below is also ``common.<name>``):

- `flags`: the shared flags, ``--quick``, renamed flags (an error naming the new name), which flags
  define a run;
- `runs`: run folders (``run.json``: a folder is resumed only with the flags its run started with) and
  the `Context` a binary works in;
- `binary`: a binary's life: `run`, `setup`, the strategy, progress lines (`stage`, `verbose`);
- `training`: resumable, NaN-guarded `train`, `array_stream`, `GeneratedWeightHistograms`;
- `saving`: ``.keras`` files with or without optimizer state;
- `reports`: metrics.json and report.md stating their run, markdown tables, figures in TensorBoard;
- `recipes`: what several binaries do alike: build a hypernetwork, train the baselines, load an OOD set,
  the equal-budget verdict against a deep ensemble;
- `compat`: the Keras patches, behind a guard on the Keras versions they were written for.

Importing this package imports neither Keras nor TensorFlow (``--help`` and a refused run folder answer
at once).
"""

from experiments.common.binary import (
    get_strategy,
    interrupted_message,
    resume_command,
    run,
    setup,
    stage,
    verbose,
)
from experiments.common.flags import (
    FLAGS,
    HARMLESS_FLAGS,
    STRATEGIES,
    apply_quick,
    define_flags,
    flag_values,
    quick_defaults,
    renamed_flag,
)
from experiments.common.recipes import (
    HYPERNETWORKS,
    at_least_as_good,
    build_hypernetwork,
    higher_is_better,
    load_ood,
    train_classifier,
    train_direct_networks,
)
from experiments.common.reports import log_figures, markdown_table, run_markdown, run_summary, write_results
from experiments.common.runs import RUN_FILE, Context, RunFolderError, prepare_run, trained_steps
from experiments.common.saving import load_model, save_model
from experiments.common.training import _interrupts_deferred as _interrupts_deferred  # tests use it
from experiments.common.training import array_stream, train

__all__ = [
    "FLAGS",
    "HARMLESS_FLAGS",
    "RUN_FILE",
    "STRATEGIES",
    "Context",
    "GeneratedWeightHistograms",
    "HYPERNETWORKS",
    "RunFolderError",
    "apply_quick",
    "array_stream",
    "at_least_as_good",
    "build_hypernetwork",
    "define_flags",
    "flag_values",
    "get_strategy",
    "higher_is_better",
    "interrupted_message",
    "load_model",
    "load_ood",
    "log_figures",
    "markdown_table",
    "prepare_run",
    "quick_defaults",
    "renamed_flag",
    "resume_command",
    "run",
    "run_markdown",
    "run_summary",
    "save_model",
    "setup",
    "stage",
    "train",
    "train_classifier",
    "train_direct_networks",
    "trained_steps",
    "verbose",
    "write_results",
]


def __getattr__(name):  # PEP 562: these import Keras, so only when used
    if name == "GeneratedWeightHistograms":
        from experiments.common import training

        return training.GeneratedWeightHistograms
    if name == "TrainingDivergedError":  # deprecated in 0.2 (see CHANGELOG.md)
        import warnings

        from hyperkeras.models import TrainingDivergedError

        warnings.warn(
            "experiments.common.TrainingDivergedError is deprecated: use hyperkeras.models.TrainingDivergedError.",
            DeprecationWarning,
            stacklevel=2,
        )
        return TrainingDivergedError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

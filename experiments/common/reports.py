"""Reports: metrics.json and report.md written whole, each stating its run (steps trained, training time,
flags and their changes); markdown tables; figures in TensorBoard."""

from __future__ import annotations

import os

from absl import flags, logging

from experiments.common.flags import HARMLESS_FLAGS, as_flag, flag_values
from experiments.common.runs import Context, trained_steps

FLAGS = flags.FLAGS


def log_figures(ctx: Context, png_paths, step: int = 0, name: str = "figures"):
    """Adds PNG figures to TensorBoard (Images tab) under ``<output_dir>/logs/<name>``."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(ctx.path("logs", name))
    with writer.as_default():
        for path in png_paths:
            image = tf.image.decode_png(tf.io.read_file(path), channels=4)
            tf.summary.image(os.path.splitext(os.path.basename(path))[0], image[None], step=step)
    writer.flush()


def write_results(ctx: Context, metrics: dict, report_markdown: str):
    """Writes metrics.json and report.md atomically into the output folder, and adds every PNG figure
    in it to TensorBoard.

    Both state the run: metrics.json gets a ``run`` entry (`run_summary`) and report.md ends with a "Run"
    section: the steps each model was actually trained for and the flags it was trained with.
    """
    import glob

    from hyperkeras.io import atomic_write_json, atomic_write_text

    pngs = sorted(glob.glob(ctx.path("*.png")))
    if pngs:
        log_figures(ctx, pngs)

    run = run_summary(ctx)
    metrics = {**metrics, "run": run} if "run" not in metrics else {**metrics, "run_record": run}
    atomic_write_json(ctx.path("metrics.json"), metrics)
    atomic_write_text(ctx.path("report.md"), report_markdown.rstrip("\n") + "\n\n" + run_markdown(run))
    logging.info("wrote %s and %s", ctx.path("metrics.json"), ctx.path("report.md"))


def run_summary(ctx: Context) -> dict:
    """What a report must state about its run: steps actually trained (per model, from its newest
    checkpoint), the training time of each model (s, summed over the run's sessions), the defining flags
    it was trained with, every change of them and the step it came at."""
    segments = (ctx.run or {}).get("segments") or []
    out = {
        "experiment": ctx.experiment,
        "output_dir": ctx.output_dir,
        "steps_trained": trained_steps(ctx.output_dir),
        "flags": segments[-1]["flags"] if segments else None,
    }
    if flags.FLAGS.is_parsed():
        out["other_flags"] = {k: v for k, v in flag_values().items() if k in HARMLESS_FLAGS}
    seconds = {
        **((ctx.run or {}).get("train_seconds") or {}),
        **{k: {"seconds": v} for k, v in ctx.train_seconds.items()},
    }
    if seconds:
        out["train_seconds"] = {k: round(float(v["seconds"]), 1) for k, v in sorted(seconds.items())}
    if len(segments) > 1:
        out["flag_changes"] = [{"at_steps": seg["at_steps"], "changed": seg["changed"]} for seg in segments[1:]]
        out["initial_flags"] = segments[0]["flags"]
    return out


def _non_default(values: dict) -> str:
    out = []
    for name, value in sorted(values.items()):
        try:
            default = FLAGS[name].default
        except (KeyError, AttributeError):
            default = object()
        if value != default:
            out.append(as_flag(name, value))
    return " ".join(out)


def run_markdown(run: dict) -> str:
    """The "Run" section of a report (from `run_summary`)."""
    steps = run["steps_trained"]
    lines = ["## Run", ""]
    if run.get("experiment"):
        lines.append(f"- Experiment `{run['experiment']}`, run folder `{run['output_dir']}`.")
    lines.append(
        "- Steps actually trained (newest checkpoint of each model): "
        + (
            ", ".join(f"{k}: **{v}**" for k, v in sorted(steps.items()))
            if steps
            else "none in this run folder (nothing trained here, or models loaded from elsewhere)"
        )
        + "."
    )
    if run.get("train_seconds"):
        lines.append(
            "- Training time, summed over the run's sessions: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(run["train_seconds"].items()))
            + "."
        )
    if run.get("flags") is not None:
        shown = _non_default(run["flags"])
        lines.append(
            "- Trained with "
            + (f"`{shown}`" if shown else "the defaults")
            + " (defining flags not at their defaults; every value is in metrics.json under `run`)."
        )
    for change in run.get("flag_changes", []):
        at = ", ".join(f"{k} {v}" for k, v in sorted(change["at_steps"].items())) or "the start"
        what = "; ".join(f"`--{k}` {a!r} → {b!r}" for k, (a, b) in sorted(change["changed"].items()))
        lines.append(f"- Flags changed (--resume_with_new_flags) after steps {at}: {what}.")
    if run.get("flag_changes"):
        first = _non_default(run["initial_flags"])
        lines.append(
            "- Before the first change the run used " + (f"`{first}`" if first else "the defaults") + ". "
            "Models finished before a change (e.g. saved baselines) were reused, not retrained."
        )
    return "\n".join(lines) + "\n"


def markdown_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".4f") -> str:
    """A GitHub markdown table from a list of dicts."""
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def fmt(v):
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)

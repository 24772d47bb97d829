"""Continual learning with a task-conditioned hypernetwork (von Oswald et al., ICLR 2020) and the baselines.

Tasks come one after another (``--benchmark``):

    split     task t = the classes 2t and 2t+1 of ``--dataset`` (5 tasks on 10 classes), 2 outputs per task
    permuted  task t = the whole dataset with a fixed pixel permutation of its own, 10 outputs per task

Every method trains the same target (``--target``, an MLP by default) for ``--steps_per_task`` steps of
``--batch_size`` images per task, on the same training images (every task cut to the same count):

    hnet       one chunked generator, a learned embedding per task, θ_t = h(e_t); while task t is learned
               the outputs for the earlier embeddings are held by the output regulariser (``--beta``)
    finetune   one network trained on each task in turn (the lower bound)
    ewc        online EWC (``--ewc_lambda``, ``--ewc_gamma``; expected Fisher on ``--fisher_examples`` images)
    separate   one network per task (no forgetting; T times the weights)
    multitask  one network on all tasks at once, T·steps_per_task steps of batches holding every task
               equally (the upper bound; not sequential, so no forgetting is defined)

Task-incremental evaluation (the task id is given at test time): the hypernetwork generates the whole
network of the task, its output layer included; finetune/ewc/multitask have one output head per task
(``--head=multi``, the target's last layer has T·C units) or one shared head (``--head=shared``). For the
hypernetwork the task is also inferred, as the task whose network has the lowest predictive entropy on
the image (HNET+ENT). Writes metrics.json (per method: average accuracy after the last task, forgetting,
the accuracy matrix, mean ± std over ``--seeds``; generator and target sizes), report.md and
continual.png (accuracy of each task as the tasks are learned).

    python -m experiments.continual --benchmark=split --output_dir=runs/continual_split
    python -m experiments.continual --benchmark=permuted --output_dir=runs/continual_permuted
    python -m experiments.continual --quick          # digits, split, a few seconds per method
"""

from __future__ import annotations

import json
import os
import time

from absl import flags, logging

from experiments import common

METHODS = ("hnet", "finetune", "ewc", "separate", "multitask")

common.define_flags(dataset="fashion_mnist", steps=0, batch_size=32, checkpoint_every=1000)
flags.DEFINE_enum(
    "benchmark", "split", ["split", "permuted"], "split: class pairs as tasks; permuted: pixel permutations."
)
flags.DEFINE_integer("num_tasks", None, "Number of tasks (default: 5 for split, 10 for permuted).", lower_bound=1)
flags.DEFINE_list("methods", list(METHODS), f"Methods, of: {', '.join(METHODS)}.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every method runs once per seed (its own init and batches).")
flags.DEFINE_integer(
    "steps_per_task", 2000, "Training steps per task (multitask: this times the tasks).", lower_bound=1
)
flags.DEFINE_integer(
    "images_per_task", None, "Training images per task (default: all, cut to the smallest task's count).", lower_bound=1
)
flags.DEFINE_integer("test_subset", None, "Use only this many test images per task.", lower_bound=1)
flags.DEFINE_integer(
    "validation_images",
    0,
    "If > 0: hold out this many training images per task and evaluate on them instead of the test set "
    "(for choosing hyperparameters without looking at test accuracy); the report says so.",
    lower_bound=0,
)
flags.DEFINE_string("target", "mlp", "Target architecture (hyperkeras.targets.build_model name).")
flags.DEFINE_list("hidden", ["100", "100"], "Hidden layer widths of --target=mlp.")
flags.DEFINE_float(
    "learning_rate", 1e-3, "Adam learning rate of every method (state reset at each task).", lower_bound=0.0
)
flags.DEFINE_enum("head", "multi", ["multi", "shared"], "finetune/ewc/multitask: an output head per task, or one.")
flags.DEFINE_float("beta", 0.01, "hnet: β, weight of the output regulariser.", lower_bound=0.0)
flags.DEFINE_integer("chunk_size", 2000, "hnet: generated weights per chunk (ChunkedGenerator).", lower_bound=1)
flags.DEFINE_integer("chunk_dim", 8, "hnet: size of each chunk's embedding.", lower_bound=1)
flags.DEFINE_integer("embedding_dim", 8, "hnet: size of each task's embedding.", lower_bound=1)
flags.DEFINE_list("hnet_hidden", ["100", "100"], "hnet: hidden layer widths of the generator.")
flags.DEFINE_enum(
    "generator_init",
    "hyperfan_in",
    ["hyperfan_in", "hyperfan_out", "default"],
    "hnet: the generator's initialisation (hyperkeras.generators.hyperfan): generated kernels start at the "
    "variance of the target's initializer (fan-in or fan-out form), or Keras's default output layer.",
)
flags.DEFINE_bool(
    "residual", False, "hnet: generate θ = θ₀ + Δ(task), θ₀ the target's (frozen) initial weights, Δ = 0 at the start."
)
flags.DEFINE_bool(
    "lookahead",
    False,
    "hnet: evaluate the output regulariser after the step the task loss alone would take (von Oswald et al.).",
)
flags.DEFINE_float(
    "hnet_learning_rate", None, "hnet: Adam learning rate of the generator (default: --learning_rate).", lower_bound=0.0
)
flags.DEFINE_float("ewc_lambda", 100.0, "ewc: λ, weight of the quadratic penalty.", lower_bound=0.0)
flags.DEFINE_float("ewc_gamma", 1.0, "ewc: decay of the accumulated Fisher (online EWC).", lower_bound=0.0)
flags.DEFINE_integer("fisher_examples", 500, "ewc: training images per task for its Fisher.", lower_bound=1)
flags.DEFINE_bool("entropy_inference", True, "hnet: also infer the task by predictive entropy (HNET+ENT).")
common.quick_defaults(
    dataset="digits", steps_per_task=60, seeds=["0"], fisher_examples=100, hnet_hidden=["50", "50"], chunk_size=500
)
FLAGS = flags.FLAGS


def load_tasks(seed):
    """The benchmark's tasks (a list of hyperkeras.continual.Task) and its classes per task."""
    import hyperkeras as hk
    from hyperkeras import continual

    num_tasks = FLAGS.num_tasks or (5 if FLAGS.benchmark == "split" else 10)
    load = dict(data_dir=FLAGS.data_dir, seed=seed)
    train = hk.data.load_arrays(FLAGS.dataset, "train", **load)
    test = hk.data.load_arrays(FLAGS.dataset, "test", **load)
    if FLAGS.benchmark == "split":
        tasks = continual.split_tasks(train, test, num_tasks, 2, FLAGS.images_per_task, seed)
    else:
        tasks = continual.permuted_tasks(train, test, num_tasks, seed, FLAGS.images_per_task)
    if FLAGS.validation_images:
        n = FLAGS.validation_images
        if n >= len(tasks[0].y_train):
            raise flags.ValidationError(
                f"--validation_images={n}: tasks have only {len(tasks[0].y_train)} training images."
            )
        tasks = [  # training images are in a seeded order already (`split_tasks` / `permuted_tasks` subsets)
            continual.Task(
                t.name, t.x_train[:-n], t.y_train[:-n], t.x_train[-n:], t.y_train[-n:], t.classes, t.permutation
            )
            for t in tasks
        ]
    if FLAGS.test_subset:
        n = FLAGS.test_subset
        tasks = [
            continual.Task(t.name, t.x_train, t.y_train, t.x_test[:n], t.y_test[:n], t.classes, t.permutation)
            for t in tasks
        ]
    return tasks


def build_target(tasks, outputs, seed):
    import hyperkeras as hk

    kw = dict(input_shape=tasks[0].x_train.shape[1:], num_classes=outputs, seed=seed)
    if FLAGS.target == "mlp":
        kw["hidden"] = tuple(int(h) for h in FLAGS.hidden)
    return hk.targets.build_model(FLAGS.target, **kw)


def build_learner(method, tasks, seed):
    """The learner of `method`, its target built from `seed`."""
    import keras

    import hyperkeras as hk
    from hyperkeras import continual

    keras.utils.set_random_seed(seed)
    t, c = len(tasks), tasks[0].num_classes
    lr = FLAGS.learning_rate
    if method == "hnet":
        target = hk.TargetNetwork(build_target(tasks, c, seed))
        gen = hk.generators.ChunkedGenerator.from_target(
            target,
            chunk_size=FLAGS.chunk_size,
            chunk_dim=FLAGS.chunk_dim,
            noise_dim=0,
            num_conditions=t,
            condition_dim=FLAGS.embedding_dim,
            hidden_units=tuple(int(h) for h in FLAGS.hnet_hidden),
            init=FLAGS.generator_init,
            residual=FLAGS.residual,
        )
        model = hk.models.Hypernetwork(target, gen, num_networks=1, seed=seed)
        hnet_lr = lr if FLAGS.hnet_learning_rate is None else FLAGS.hnet_learning_rate
        return continual.HypernetworkLearner.from_hypernetwork(
            model, beta=FLAGS.beta, learning_rate=hnet_lr, lookahead=FLAGS.lookahead
        )
    if method == "separate":
        return continual.SeparateNetworks(build_target(tasks, c, seed), t, c, learning_rate=lr)
    heads = t if FLAGS.head == "multi" else 1
    model = build_target(tasks, heads * c, seed)
    if method == "finetune":
        return continual.FineTuning(model, t, c, FLAGS.head, lr)
    if method == "ewc":
        return continual.OnlineEWC(
            model,
            t,
            c,
            FLAGS.head,
            lr,
            lam=FLAGS.ewc_lambda,
            gamma=FLAGS.ewc_gamma,
            fisher_examples=FLAGS.fisher_examples,
        )
    if method == "multitask":
        return continual.Multitask(model, t, c, FLAGS.head, lr)
    raise ValueError(method)


def _variables(learner):
    return list(getattr(learner, "variables", None) or learner.model.trainable_variables)


def run_one(ctx, method, seed, tasks):
    """Trains and evaluates one (method, seed); its result is kept in results/<method>_seed<seed>.json
    with a checkpoint of its final weights (checkpoints/<method>_seed<seed>, numbered by its steps), so a
    resumed run skips it."""
    import tensorflow as tf

    from hyperkeras import continual
    from hyperkeras.io import atomic_write_json

    name = f"{method}_seed{seed}"
    path = ctx.path("results", f"{name}.json")
    steps = FLAGS.steps_per_task * len(tasks)
    if os.path.exists(path) and common.trained_steps(ctx.output_dir).get(name) == steps:
        with open(path) as f:
            result = json.load(f)
        logging.info("%s: done in an earlier session (average accuracy %.4f)", name, result["average_accuracy"])
        ctx.train_seconds[name] = result["train_s"]
        return result
    learner = build_learner(method, tasks, seed)
    t0 = time.time()
    with common.stage("%s: %d tasks x %d steps", name, len(tasks), FLAGS.steps_per_task):
        if method == "multitask":
            learner.train_joint(tasks, FLAGS.steps_per_task, ctx.batch_size, seed)
            final = continual.evaluate_tasks(learner, tasks)
            result = {"matrix": [final], "final": final, "average_accuracy": float(sum(final) / len(final))}
            result["forgetting"] = None  # trained on all tasks at once: no sequence to forget along
        else:

            def progress(i, row):
                logging.info("%s: after task %d: %s", name, i, " ".join(f"{a:.3f}" for a in row))

            result = continual.run_sequence(learner, tasks, FLAGS.steps_per_task, ctx.batch_size, seed, progress)
        if method == "hnet" and FLAGS.entropy_inference:
            result["entropy_inference"] = continual.infer_task_by_entropy(learner, tasks)
    result.update(
        method=method,
        seed=seed,
        steps=steps,
        num_params=learner.num_params,
        train_s=round(time.time() - t0, 1),  # training and evaluation after each task
    )
    ctx.train_seconds[name] = result["train_s"]
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(variables=_variables(learner)), ctx.path("checkpoints", name), max_to_keep=1
    )
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)  # TF's checkpoint writer logs a line per save
    try:
        manager.save(checkpoint_number=steps)
    finally:
        logging.set_verbosity(verbosity)
    atomic_write_json(path, result)
    return result


def summarise(results, methods):
    """Per method: mean and std over seeds of average accuracy and forgetting, the mean accuracy matrix."""
    import numpy as np

    out = {}
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue
        acc = np.array([r["average_accuracy"] for r in rows])
        entry = {
            "seeds": [r["seed"] for r in rows],
            "average_accuracy": float(acc.mean()),
            "average_accuracy_std": float(acc.std()),
            "forgetting": None,
            "forgetting_std": None,
            "num_params": rows[0]["num_params"],
            "final_accuracy": np.mean([r["final"] for r in rows], axis=0).tolist(),
            "matrix": _mean_matrix([r["matrix"] for r in rows]),
            "per_seed": [
                {k: r[k] for k in ("seed", "average_accuracy", "forgetting", "matrix", "train_s")} for r in rows
            ],
        }
        if rows[0]["forgetting"] is not None:
            f = np.array([r["forgetting"] for r in rows])
            entry.update(forgetting=float(f.mean()), forgetting_std=float(f.std()))
        if "entropy_inference" in rows[0]:
            e = np.array([r["entropy_inference"]["average_accuracy"] for r in rows])
            ti = np.array([np.mean(r["entropy_inference"]["task_inference_accuracy"]) for r in rows])
            entry["entropy_inference"] = {
                "average_accuracy": float(e.mean()),
                "average_accuracy_std": float(e.std()),
                "task_inference_accuracy": float(ti.mean()),
                "task_inference_accuracy_std": float(ti.std()),
            }
        out[method] = entry
    return out


def _mean_matrix(matrices):
    import numpy as np

    arr = np.array([[[np.nan if v is None else v for v in row] for row in m] for m in matrices], dtype=float)
    mean = arr.mean(axis=0)
    return [[None if np.isnan(v) else float(v) for v in row] for row in mean]


def plot(summary, tasks, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from hyperkeras.io import save_figure

    seq = [m for m in summary if m != "multitask"]
    n = len(seq) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    axes = axes[0]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(tasks)))
    lowest = min(
        (100 * v for m in seq for row in summary[m]["matrix"] for v in row if v is not None), default=0.0
    )  # one accuracy scale for every method's panel
    for ax, method in zip(axes, seq):
        m = np.array([[np.nan if v is None else v for v in row] for row in summary[method]["matrix"]], dtype=float)
        for j in range(m.shape[1]):
            ax.plot(np.arange(1, m.shape[0] + 1), 100 * m[:, j], "o-", ms=3, color=colors[j], label=f"task {j}")
        if "multitask" in summary:
            ax.axhline(
                100 * summary["multitask"]["average_accuracy"], color="k", ls="--", lw=0.8, label="multitask avg"
            )
        ax.set(title=method, xlabel="tasks learned", xticks=range(1, len(tasks) + 1), ylim=(lowest - 2, 100.5))
    axes[0].set_ylabel("test accuracy (%), task id given")
    axes[0].legend(fontsize=6)
    names = list(summary)
    means = [100 * summary[k]["average_accuracy"] for k in names]
    stds = [100 * summary[k]["average_accuracy_std"] for k in names]
    if "hnet" in summary and "entropy_inference" in summary["hnet"]:
        e = summary["hnet"]["entropy_inference"]
        names.append("hnet+ent")
        means.append(100 * e["average_accuracy"])
        stds.append(100 * e["average_accuracy_std"])
    axes[-1].bar(range(len(names)), means, yerr=stds, color="tab:blue", alpha=0.8)
    axes[-1].set_xticks(range(len(names)))
    axes[-1].set_xticklabels(names, rotation=45, fontsize=7)
    axes[-1].set(title="after the last task", ylabel="average accuracy (%)", ylim=(min(means) - 5, 100.5))
    save_figure(fig, path)
    plt.close(fig)


def _pm(mean, std, seeds, scale=100.0, fmt=".2f"):
    if mean is None:
        return "—"
    return f"{scale * mean:{fmt}} ± {scale * std:{fmt}}" if seeds > 1 else f"{scale * mean:{fmt}}"


def report(summary, tasks, sizes, total_s):
    rows = []
    for method, e in summary.items():
        k = len(e["seeds"])
        rows.append(
            {
                "method": method,
                "average accuracy (%)": _pm(e["average_accuracy"], e["average_accuracy_std"], k),
                "forgetting (points)": _pm(e["forgetting"], e["forgetting_std"], k),
                "weights kept": f"{e['num_params']:,}",
                "final accuracy per task (%)": " ".join(f"{100 * a:.1f}" for a in e["final_accuracy"]),
            }
        )
        if "entropy_inference" in e:
            x = e["entropy_inference"]
            rows.append(
                {
                    "method": "hnet+ent (task inferred)",
                    "average accuracy (%)": _pm(x["average_accuracy"], x["average_accuracy_std"], k),
                    "forgetting (points)": "—",
                    "weights kept": f"{e['num_params']:,}",
                    "final accuracy per task (%)": f"task inferred right: {100 * x['task_inference_accuracy']:.1f} %",
                }
            )
    table = common.markdown_table(rows)
    c = tasks[0].num_classes
    hnet_form = ", ".join(
        [f"{FLAGS.generator_init} init"]
        + (["residual θ₀ + Δ"] if FLAGS.residual else [])
        + (["lookahead"] if FLAGS.lookahead else [])
    )
    evaluated_on = (
        f"**Evaluated on {FLAGS.validation_images} held-out training images per task (validation), not the test set.**"
        if FLAGS.validation_images
        else "Evaluated on each task's test set."
    )
    text = f"""# Continual learning: {FLAGS.benchmark} {FLAGS.dataset}, {len(tasks)} tasks

Tasks: {", ".join(t.name for t in tasks)} ({c} classes each; {len(tasks[0].y_train):,} training images per
task, {sum(len(t.y_test) for t in tasks):,} test images in all). Every method: {FLAGS.steps_per_task} steps of
{FLAGS.batch_size} images per task (multitask: {FLAGS.steps_per_task * len(tasks)} steps of batches holding every
task equally). Seeds {", ".join(FLAGS.seeds)} (mean ± std over seeds). Task id given at test time; the
hypernetwork generates each task's whole network (its {c}-unit head included); finetune/ewc/multitask use
head={FLAGS.head!r}. Target {FLAGS.target} ({sizes["target_params"]:,} weights with a {c}-unit head); generator
{sizes["generator_params"]:,} weights (ChunkedGenerator, chunks of {FLAGS.chunk_size}, hidden
{",".join(FLAGS.hnet_hidden)}, {hnet_form}, embeddings included): {sizes["generator_vs_separate"]:.2f}× the {len(tasks)} separate networks ({sizes["separate_params"]:,}).

{table}

{evaluated_on}

Average accuracy: mean over all tasks after the last one. Forgetting: mean over the tasks but the last of
their best accuracy while later tasks were learned minus their final accuracy (Chaudhry et al. 2018).

![accuracy per task](continual.png)

Time: {sizes["method_seconds"]:.0f} s of training and per-task evaluation summed over every method and seed
(from the sessions that ran them); this session's wall time {total_s:.0f} s.
"""
    return text, table


def main(argv):
    if FLAGS["steps"].present:
        raise flags.ValidationError("continual sets its steps with --steps_per_task; do not pass --steps.")
    bad = [m for m in FLAGS.methods if m not in METHODS]
    if bad or not FLAGS.methods:
        raise flags.ValidationError(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}.")
    ctx = common.setup(argv)  # after the checks above (a refused command claims no run folder); applies --quick
    try:
        seeds = [int(s) for s in FLAGS.seeds]
        [int(h) for h in FLAGS.hidden + FLAGS.hnet_hidden]
    except ValueError:
        raise flags.ValidationError("--seeds, --hidden and --hnet_hidden are comma-separated integers.") from None
    if not seeds:
        raise flags.ValidationError("--seeds needs at least one seed.")
    t_start = time.time()
    tasks = load_tasks(ctx.seed)
    if "multitask" in FLAGS.methods and FLAGS.batch_size < len(tasks):
        raise flags.ValidationError(f"multitask needs --batch_size >= the {len(tasks)} tasks.")
    logging.info(
        "%s %s: %d tasks of %d training images", FLAGS.benchmark, FLAGS.dataset, len(tasks), len(tasks[0].y_train)
    )
    results = []
    for seed in seeds:  # seed-major: a run stopped early has every method at its first seeds
        for method in FLAGS.methods:
            results.append(run_one(ctx, method, seed, tasks))
    summary = summarise(results, FLAGS.methods)
    target_params = build_learner("separate", tasks, 0).model.count_params()
    generator_params = (
        summary["hnet"]["num_params"] if "hnet" in summary else build_learner("hnet", tasks, 0).num_params
    )
    sizes = {
        "method_seconds": float(sum(r["train_s"] for r in results)),
        "target_params": int(target_params),
        "separate_params": int(target_params * len(tasks)),
        "generator_params": int(generator_params),
        "generator_vs_separate": float(generator_params / (target_params * len(tasks))),
    }
    plot(summary, tasks, ctx.path("continual.png"))
    total_s = time.time() - t_start
    out = {
        "benchmark": FLAGS.benchmark,
        "dataset": FLAGS.dataset,
        "num_tasks": len(tasks),
        "classes_per_task": tasks[0].num_classes,
        "task_classes": [list(t.classes) for t in tasks],
        "images_per_task": int(len(tasks[0].y_train)),
        "test_images_per_task": [int(len(t.y_test)) for t in tasks],
        "steps_per_task": FLAGS.steps_per_task,
        "batch_size": FLAGS.batch_size,
        "seeds": seeds,
        "setting": "task-incremental (task id given); hnet+ent infers it by predictive entropy",
        "head": FLAGS.head,
        "evaluated_on": f"validation ({FLAGS.validation_images} held-out training images per task)"
        if FLAGS.validation_images
        else "test",
        "methods": summary,
        **sizes,
        "total_s": round(total_s, 1),
    }
    text, table = report(summary, tasks, sizes, total_s)
    common.write_results(ctx, out, text)
    print(table)
    print(f"continual finished in {total_s:.0f} s -> {ctx.output_dir}/report.md")


if __name__ == "__main__":
    common.run(main)

"""Zoo targets trained directly and through hypernetworks: ResNet-20 on images, GRU / Transformer on text.

For ``--target`` (``resnet20``, ``gru_text``, ``transformer_text``, or any other registered image target)
this binary trains

  direct    the plain Keras model with Adam (the baseline), and
  hypergan  a `hyperkeras.models.HyperGAN` generating all of the target's weights, and/or
  deutsch   a `hyperkeras.models.EntropyHypernetwork` (Deutsch 2018),

each for ``--steps`` steps, then reports on the test split: the accuracy of single generated networks
(mean and spread over ``--eval_networks`` networks), of their ensemble (mean of probabilities), and of
the directly trained network.

Tasks:
  images  (resnet20 and other image targets) ``--dataset`` (default ``fashion_mnist``; see
          ``hyperkeras.data.DATASETS``), classification of the labels.
  text    (gru_text, transformer_text) next-character prediction: from ``--seq_len`` characters of a
          corpus (``--dataset``, default ``pydoc``; see ``hyperkeras.data.text.CORPORA``) predict the next
          one, a classification over the training vocabulary. Train on the train split, test on the
          test split.

Batch normalisation: a generated network trained in training mode (HyperGAN) has no moving statistics
of its own; before evaluation each one gets its own statistics from ``--bn_calibration_batches``
training batches (`TargetNetwork.calibrate_state`, "precise BN").

    python -m experiments.zoo_run --target=resnet20 --steps=300
    python -m experiments.zoo_run --target=gru_text --steps=2000 --methods=direct,hypergan

Writes metrics.json, report.md, accuracy.png, flags.json, direct.keras, <method>.keras, checkpoints/ and
logs/ (TensorBoard) into ``--output_dir`` (default ``runs/zoo_<target>``). A folder holding a run with
other flags is refused (resuming the same run continues from its checkpoints).
"""

from __future__ import annotations

import json
import os
import time

from absl import flags, logging

from experiments import common

TEXT_TARGETS = ("gru_text", "transformer_text")
METHODS = ("direct", "hypergan", "deutsch")

common.define_flags(dataset="auto", steps=500, batch_size=32)
flags.FLAGS.set_default("output_dir", "")
flags.DEFINE_string(
    "target", "resnet20", "Zoo target: resnet20, gru_text, transformer_text (or another registered image target)."
)
flags.DEFINE_string("model_kwargs", "{}", "Extra build_model arguments as JSON, e.g. '{\"width\": 8}'.")
flags.DEFINE_list("methods", ["direct", "hypergan"], f"Which of {', '.join(METHODS)} to train.")
flags.DEFINE_integer("train_subset", None, "Images: use only this many training examples.", lower_bound=1)
flags.DEFINE_integer("eval_subset", 5000, "Evaluate on this many test examples (0: all).", lower_bound=0)
# text
flags.DEFINE_string("text_file", None, "UTF-8 file for --dataset=text.")
flags.DEFINE_integer("max_chars", None, "Text: use only the first this many characters of the corpus.", lower_bound=100)
flags.DEFINE_integer("seq_len", 32, "Text: characters of context per example.", lower_bound=1)
flags.DEFINE_integer(
    "window_stride", 1, "Text: distance between the starts of consecutive training windows.", lower_bound=1
)
# direct baseline
flags.DEFINE_float(
    "baseline_learning_rate", 1e-3, "Adam learning rate of the directly trained network.", lower_bound=0.0
)
common.renamed_flag(
    "learning_rate",
    "baseline_learning_rate",
    "the directly trained network's rate; the hypernetworks' is --hyper_learning_rate",
)
# hypernetworks
flags.DEFINE_integer("networks_per_step", 8, "Networks generated per training step (K).", lower_bound=2)
flags.DEFINE_float("hyper_learning_rate", 3e-4, "Adam learning rate of the hypernetworks.", lower_bound=0.0)
flags.DEFINE_float(
    "d_learning_rate", 3e-4, "HyperGAN: Adam learning rate of the latent discriminator.", lower_bound=0.0
)
flags.DEFINE_integer("noise_dim", 64, "Noise size of both hypernetworks.", lower_bound=1)
flags.DEFINE_integer("code_dim", 64, "HyperGAN: size of each layer code.", lower_bound=1)
flags.DEFINE_integer("units", 256, "HyperGAN: hidden units of mixer, generators and discriminator.", lower_bound=1)
flags.DEFINE_float("beta", 1.0, "HyperGAN: weight β of the adversarial term.", lower_bound=0.0)
flags.DEFINE_integer("pretrain_steps", 200, "HyperGAN: mixer pretraining steps.", lower_bound=0)
flags.DEFINE_float("lam", 1e3, "Deutsch: λ, weight of the cross-entropy against the entropy.", lower_bound=0.0)
flags.DEFINE_enum(
    "gauge",
    "none",
    ("transform", "penalty", "none"),
    "Deutsch: gauge fixing (transform/penalty need a chain target of homogeneous layers).",
)
# evaluation
flags.DEFINE_integer(
    "eval_networks", 16, "Generated networks evaluated (N): single-network mean and ensemble.", lower_bound=1
)
flags.DEFINE_integer(
    "bn_calibration_batches", 20, "Training batches for each generated network's BN statistics.", lower_bound=1
)
flags.DEFINE_integer("eval_batch_size", 250, "Test examples per evaluation step.", lower_bound=1)
flags.DEFINE_integer("eval_chunk", 4, "Generated networks per evaluation step.", lower_bound=1)
common.quick_defaults(
    dataset="digits",
    steps=150,
    model_kwargs='{"width": 8, "blocks_per_stage": 1}',
    networks_per_step=4,
    noise_dim=32,
    code_dim=32,
    units=64,
    pretrain_steps=20,
    eval_networks=8,
    bn_calibration_batches=2,
)
FLAGS = flags.FLAGS


# ---------------------------------------------------------------------------------------------- data
def next_token_windows(ids, seq_len, stride=1):
    """Next-token classification examples from a sequence of ids.

    Args:
        ids: ``[T]`` integer ids (e.g. ``Vocabulary.encode(symbols)``).
        seq_len: context length.
        stride: distance between consecutive window starts.

    Returns:
        ``(x, y)``: ``x [N, seq_len]`` int32 windows ``ids[s : s + seq_len]`` and ``y [N]`` int32 labels
        ``ids[s + seq_len]`` for ``s = 0, stride, 2·stride, ...`` (every window has its next token).
    """
    import numpy as np

    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"next_token_windows expects a 1-D array of integer ids, got {ids.dtype} {ids.shape}.")
    if int(seq_len) < 1 or int(stride) < 1:
        raise ValueError(f"seq_len and stride must be >= 1, got {seq_len} and {stride}.")
    if len(ids) < seq_len + 1:
        raise ValueError(f"a sequence of {len(ids)} ids has no window of {seq_len} tokens plus a next one.")
    starts = np.arange(0, len(ids) - seq_len, stride)
    x = np.lib.stride_tricks.sliding_window_view(ids, seq_len)[starts].astype(np.int32)
    return x, ids[starts + seq_len].astype(np.int32)


def load_task(seed):
    """``(x, y, xt, yt, build_kwargs, description)`` for the target's task (see module docstring)."""
    import numpy as np

    from hyperkeras import data
    from hyperkeras.data import text

    if FLAGS.target in TEXT_TARGETS:
        corpus = "pydoc" if FLAGS.dataset == "auto" else FLAGS.dataset
        if corpus not in text.CORPORA:
            raise flags.ValidationError(
                f"--target={FLAGS.target} is a text target: --dataset must be one of "
                f"{', '.join(text.CORPORA)}, got {corpus!r}."
            )
        train, _, test = text.load_corpus(
            corpus, data_dir=FLAGS.data_dir, text_file=FLAGS.text_file, max_chars=FLAGS.max_chars
        )
        vocab = text.Vocabulary(train)
        x, y = next_token_windows(vocab.encode(train), FLAGS.seq_len, FLAGS.window_stride)
        xt, yt = next_token_windows(vocab.encode(test), FLAGS.seq_len)
        kwargs = {"seq_len": FLAGS.seq_len, "vocab_size": len(vocab), "num_classes": len(vocab)}
        desc = (
            f"next-character prediction on `{corpus}` ({len(train):,} train / {len(test):,} test characters, "
            f"vocabulary {len(vocab)}, context {FLAGS.seq_len})"
        )
    else:
        dataset = "fashion_mnist" if FLAGS.dataset == "auto" else FLAGS.dataset
        if dataset not in data.DATASETS or dataset in ("gaussian_mixture_2d", "cubic"):
            raise flags.ValidationError(
                f"--target={FLAGS.target}: --dataset must be an image dataset of "
                f"hyperkeras.data.DATASETS, got {dataset!r}."
            )
        x, y = data.load_arrays(dataset, "train", data_dir=FLAGS.data_dir, subset=FLAGS.train_subset, seed=seed)
        xt, yt = data.load_arrays(dataset, "test", data_dir=FLAGS.data_dir)
        kwargs = {"input_shape": tuple(x.shape[1:]), "num_classes": int(max(y.max(), yt.max())) + 1}
        desc = f"`{dataset}` classification ({len(y):,} train images, {tuple(x.shape[1:])})"
    if FLAGS.eval_subset and FLAGS.eval_subset < len(yt):
        idx = np.sort(np.random.RandomState(seed + 1).permutation(len(yt))[: FLAGS.eval_subset])
        xt, yt = xt[idx], yt[idx]
    return x, y, xt, yt, kwargs, desc


# ---------------------------------------------------------------------------------------------- models
def build_target(build_kwargs, seed):
    from hyperkeras import targets

    try:
        extra = json.loads(FLAGS.model_kwargs)
    except json.JSONDecodeError as e:
        raise flags.ValidationError(f"--model_kwargs is not valid JSON: {e}") from None
    if not isinstance(extra, dict):
        raise flags.ValidationError(f"--model_kwargs must be a JSON object, got {FLAGS.model_kwargs!r}.")
    return targets.build_model(FLAGS.target, seed=seed, **{**build_kwargs, **extra})


def make_dataset_fn(x, y, ctx):
    """``start_step -> infinite batched dataset`` positioned at `start_step` (see common.train)."""
    return common.array_stream(x, y, ctx.batch_size, ctx.seed, shuffle_buffer=100_000)


# ---------------------------------------------------------------------------------------------- evaluation
def summarise_generated(member_probs, yt):
    import numpy as np

    from hyperkeras import metrics

    member_acc = np.array([metrics.accuracy(p, yt) for p in member_probs])
    member_nll = np.array([metrics.negative_log_likelihood(p, yt) for p in member_probs])
    ensemble = metrics.classification_summary(member_probs.mean(axis=0), yt)
    return {
        "single_accuracy_mean": float(member_acc.mean()),
        "single_accuracy_std": float(member_acc.std()),
        "single_accuracy_min": float(member_acc.min()),
        "single_accuracy_max": float(member_acc.max()),
        "single_nll_mean": float(member_nll.mean()),
        "ensemble_accuracy": ensemble["accuracy"],
        "ensemble_nll": ensemble["nll"],
        "ensemble_ece": ensemble["ece"],
        "member_accuracies": [float(a) for a in member_acc],
    }


# ---------------------------------------------------------------------------------------------- main
def main(argv):
    start_time = time.time()
    bad = [m for m in FLAGS.methods if m not in METHODS]
    if bad or not FLAGS.methods:
        raise flags.ValidationError(f"--methods must be a non-empty list of {', '.join(METHODS)}; got {FLAGS.methods}.")
    if not FLAGS.output_dir:
        FLAGS.output_dir = os.path.join("runs", f"zoo_{FLAGS.target}" + ("_quick" if FLAGS.quick else ""))
    ctx = common.setup(argv)  # refuses a folder holding a run with other flags (resuming the same run continues)
    import keras
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf

    from hyperkeras import TargetNetwork, ensembles, metrics

    x, y, xt, yt, build_kwargs, task = load_task(ctx.seed)
    logging.info("task: %s; %d test examples", task, len(yt))
    results, timings, sizes = {}, {}, {}

    if "direct" in FLAGS.methods:
        t0 = time.time()
        with ctx.strategy.scope():
            model = build_target(build_kwargs, ctx.seed)
            model.compile(
                optimizer=keras.optimizers.Adam(FLAGS.baseline_learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
        common.train(model, make_dataset_fn(x, y, ctx), ctx, name="direct")
        timings["direct_train_s"] = time.time() - t0
        with common.stage("direct: predicting %d test examples", len(yt)):
            probs = tf.nn.softmax(model.predict(xt, batch_size=FLAGS.eval_batch_size, verbose=common.verbose())).numpy()
        results["direct"] = metrics.classification_summary(probs, yt)
        sizes["target_params"] = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
        common.save_model(model, ctx.path("direct.keras"))
        logging.info("direct: %s", results["direct"])

    for method in (m for m in FLAGS.methods if m != "direct"):
        t0 = time.time()
        with ctx.strategy.scope():
            target = TargetNetwork(build_target(build_kwargs, ctx.seed))
            hyper = common.build_hypernetwork(
                method,  # hypergan, or deutsch: an EntropyHypernetwork whose networks share the batch out
                target,
                num_networks=FLAGS.networks_per_step,
                seed=FLAGS.seed,
                shared_batch=True if method == "deutsch" else None,
                noise_dim=FLAGS.noise_dim,
                code_dim=FLAGS.code_dim,
                mixer_units=FLAGS.units,
                generator_units=FLAGS.units,
                discriminator_units=FLAGS.units,
                beta=FLAGS.beta,
                lam=FLAGS.lam,
                gauge=FLAGS.gauge,
                learning_rate=FLAGS.hyper_learning_rate,
                discriminator_learning_rate=FLAGS.d_learning_rate,
                name=method,
            )
        sizes["target_params"] = target.num_params
        sizes[f"{method}_params"] = int(sum(int(np.prod(v.shape)) for v in hyper.trainable_variables))
        if method == "hypergan" and FLAGS.pretrain_steps:
            with common.stage("mixer pretraining (%d steps)", FLAGS.pretrain_steps):
                stats = hyper.pretrain_mixer(steps=FLAGS.pretrain_steps, seed=ctx.seed, verbose=common.verbose())
            logging.info("mixer pretraining: %s", stats)
        common.train(hyper, make_dataset_fn(x, y, ctx), ctx, name=method)
        timings[f"{method}_train_s"] = time.time() - t0
        t0 = time.time()
        params = hyper.sample(FLAGS.eval_networks, seed=ctx.seed + 77)
        # HyperGAN trains its networks in training mode (batch statistics): give each one its own BN
        # statistics. EntropyHypernetwork trains them in inference mode with the target's own state.
        state = None
        if method == "hypergan" and any(s.momentum is not None for s in target.state_specs):
            with common.stage("%s: BN statistics of %d generated networks", method, FLAGS.eval_networks):
                state = target.calibrate_state(
                    params,
                    x[
                        np.random.RandomState(ctx.seed + 3).permutation(len(x))[
                            : FLAGS.bn_calibration_batches * ctx.batch_size
                        ]
                    ],
                    batch_size=ctx.batch_size,
                )
        with common.stage("%s: %d generated networks on %d test examples", method, FLAGS.eval_networks, len(yt)):
            member_probs = ensembles.predict(
                params,
                xt,
                target=target,
                state="shared" if state is None else state,  # the target's own statistics, or each network's
                batch_size=FLAGS.eval_batch_size,
                chunk_size=FLAGS.eval_chunk,
                keep_member_probs=True,
                verbose=common.verbose(),
            ).member_probs
        results[method] = summarise_generated(member_probs, yt)
        results[method]["bn_calibrated"] = state is not None
        timings[f"{method}_eval_s"] = time.time() - t0
        common.save_model(hyper, ctx.path(f"{method}.keras"))
        logging.info("%s: %s", method, {k: v for k, v in results[method].items() if k != "member_accuracies"})

    timings["total_s"] = time.time() - start_time  # this process (a resumed run counts from its restart)

    # ------------------------------------------------------------------ figure
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels, values, errors = [], [], []
    if "direct" in results:
        labels.append("direct")
        values.append(results["direct"]["accuracy"])
        errors.append(0.0)
    for method in (m for m in FLAGS.methods if m != "direct"):
        r = results[method]
        labels += [f"{method}\nsingle (N={FLAGS.eval_networks})", f"{method}\nensemble"]
        values += [r["single_accuracy_mean"], r["ensemble_accuracy"]]
        errors += [r["single_accuracy_std"], 0.0]
    ax.bar(range(len(values)), values, yerr=errors, color="tab:blue", capsize=4)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{FLAGS.target}: {ctx.steps} steps")
    fig.tight_layout()
    from hyperkeras.io import save_figure

    save_figure(fig, ctx.path("accuracy.png"))  # atomically, and closes it

    # ------------------------------------------------------------------ report
    rows = []
    if "direct" in results:
        r = results["direct"]
        rows.append({"method": "direct (one network)", "accuracy": r["accuracy"], "nll": r["nll"], "ece": r["ece"]})
    for method in (m for m in FLAGS.methods if m != "direct"):
        r = results[method]
        rows.append(
            {
                "method": f"{method}: single generated network (mean ± std of {FLAGS.eval_networks})",
                "accuracy": f"{r['single_accuracy_mean']:.4f} ± {r['single_accuracy_std']:.4f}",
                "nll": r["single_nll_mean"],
                "ece": "",
            }
        )
        rows.append(
            {
                "method": f"{method}: ensemble of {FLAGS.eval_networks} (mean probabilities)",
                "accuracy": r["ensemble_accuracy"],
                "nll": r["ensemble_nll"],
                "ece": r["ensemble_ece"],
            }
        )
    metrics_out = {
        "target": FLAGS.target,
        "task": task,
        "steps": ctx.steps,
        "batch_size": ctx.batch_size,
        "networks_per_step": FLAGS.networks_per_step,
        "eval_networks": FLAGS.eval_networks,
        "test_examples": int(len(yt)),
        "methods": list(FLAGS.methods),
        "results": results,
        "timings_s": timings,
        "sizes": sizes,
    }
    report = "\n".join(
        [
            f"# Zoo run: {FLAGS.target}",
            "",
            f"Task: {task}; {len(yt):,} test examples. Every method trained for **{ctx.steps} steps** of batch "
            f"{ctx.batch_size}; hypernetworks generate K = {FLAGS.networks_per_step} networks per step.",
            "",
            common.markdown_table(rows),
            "",
            "Wall-clock (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
            "",
            "Sizes: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()),
            "",
            "Flags: see flags.json. ![accuracy](accuracy.png)",
            "",
        ]
    )
    common.write_results(ctx, metrics_out, report)
    print(report)


if __name__ == "__main__":
    common.run(main)

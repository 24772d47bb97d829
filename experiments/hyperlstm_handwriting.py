"""Handwriting generation with a HyperLSTM and a mixture-density output (Ha, Dai & Le, section 4.3; Graves 2013).

Each time step is a pen offset (dx, dy) and an end-of-stroke bit. The HyperLSTM's output parameterises a
mixture of `--mixtures` bivariate Gaussians for the next offset and a Bernoulli for the next end-of-stroke;
the loss is the negative log-likelihood in nats, summed over a window of `--seq_len` steps. Training
windows are scaled by independent random factors in [0.9, 1.1] for x and y (±10% augmentation). The run
reports validation log-loss (nats per window and per step) and draws sampled handwriting coloured by how
much the hyper cell changes the main LSTM's hidden-to-gate weights.

Data (``--dataset``):
  iam        IAM On-Line Handwriting Database (IAM-OnDB) line strokes. Not redistributable: register at
             https://fki.tic.heia-fr.ch/databases/iam-on-line-handwriting-database, download
             ``lineStrokes-all.tar.gz`` and extract it into ``--data_dir`` (the XML files are searched
             recursively). Sequences are split 90% / 10% into training / validation by file name order.
  strokes    ``strokes.npz`` in ``--data_dir``: an object array ``strokes`` of ``[T, 3]`` float arrays
             (dx, dy, end_of_stroke) — the format ``--dataset=synthetic`` writes to ``--output_dir``.
  synthetic  generated cursive-like loops with pen lifts between "words" (for tests and smoke runs).

Offsets are divided by one global scale (the training offsets' standard deviation) so log-losses are in
those normalised units; the paper's −1162 nats (HyperLSTM on IAM-OnDB, Graves' preprocessing) is not
directly comparable unless the preprocessing matches. Paper configuration (defaults): 900 units, hyper 128
units, N_z 4, batch 32, Adam 1e-4, gradient clip 5.0, 20 mixture components.

    python -m experiments.hyperlstm_handwriting --dataset=iam --data_dir=/data/iam-ondb --output_dir=runs/hw
    python -m experiments.hyperlstm_handwriting --dataset=synthetic --steps=200 --units=128 --output_dir=runs/hw_syn
"""

from __future__ import annotations

from absl import flags

from experiments import common

common.define_flags(dataset="iam", steps=2000, batch_size=32)
flags.DEFINE_integer("units", 900, "Main LSTM units (paper: 900).", lower_bound=1)
flags.DEFINE_integer("hyper_units", 128, "Hyper LSTM units (paper: 128).", lower_bound=1)
flags.DEFINE_integer("nz", 4, "Hyper embedding size N_z (paper: 4).", lower_bound=1)
flags.DEFINE_bool("layer_norm", False, "Layer norm in the HyperLSTM (the paper's handwriting result is without).")
flags.DEFINE_integer("mixtures", 20, "Bivariate Gaussian mixture components.", lower_bound=1)
flags.DEFINE_integer("seq_len", 300, "Training window length in pen steps.", lower_bound=2)
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate (paper: 1e-4).", lower_bound=0.0)
flags.DEFINE_float("clip_norm", 5.0, "Global gradient-norm clip (paper: 5.0).", lower_bound=0.0)
flags.DEFINE_float("keep_prob", 0.9, "Keep probability of the recurrent dropout.")
flags.DEFINE_float(
    "scale_augment",
    0.1,
    "Random x/y scale factors in [1 - a, 1 + a] for training windows.",
    lower_bound=0.0,
    upper_bound=0.9,
)
flags.DEFINE_integer("synthetic_sequences", 256, "Sequences generated for --dataset=synthetic.", lower_bound=2)
flags.DEFINE_integer("max_sequences", None, "Use at most this many sequences.")
flags.DEFINE_integer("sample_len", 700, "Pen steps to sample for the figure.", lower_bound=1)
common.quick_defaults(
    dataset="synthetic",
    synthetic_sequences=64,
    steps=100,
    checkpoint_every=50,
    batch_size=16,
    units=64,
    hyper_units=32,
    mixtures=5,
    seq_len=50,
    sample_len=200,
)
FLAGS = flags.FLAGS


def build_model(units, hyper_units, nz, layer_norm, mixtures, keep_prob, seed=0):
    import keras
    import tensorflow as tf

    from hyperkeras.data.strokes import mdn_nll
    from hyperkeras.layers import HyperLSTMCell

    inp = keras.Input((None, 3), name="strokes")
    rnn = keras.layers.RNN(
        HyperLSTMCell(
            units,
            use_recurrent_dropout=keep_prob < 1.0,
            dropout_keep_prob=keep_prob,
            use_layer_norm=layer_norm,
            hyper_num_units=hyper_units,
            hyper_embedding_size=nz,
            seed=seed,
        ),
        return_sequences=True,
        name="rnn",
    )
    head = keras.layers.Dense(6 * mixtures + 1, name="mdn")
    model = keras.Model(inp, head(rnn(inp)), name="hyperlstm_handwriting")

    def loss(y_true, y_pred):  # nats per window (sum over steps), averaged over the batch by Keras
        return tf.reduce_sum(mdn_nll(y_true, y_pred, mixtures), axis=-1)

    return model, loss


def sample_strokes(model, mixtures, length, seed):
    """Samples `length` pen steps one at a time; returns ([T, 3] offsets, [T, 4] weight-change intensity)."""
    import numpy as np
    import tensorflow as tf

    from hyperkeras.data.strokes import mdn_split
    from hyperkeras.layers.hyper_lstm_cell import weight_change_intensity

    rnn, head = model.get_layer("rnn"), model.get_layer("mdn")
    cell = rnn.cell

    @tf.function
    def step(x, states, key):
        h, states, scales = cell.call_with_scales(x, states)
        log_pi, mu1, mu2, log_s1, log_s2, rho, eos_logit = mdn_split(head(h), mixtures)
        k1, k2, k3 = tf.unstack(tf.random.experimental.stateless_split(key, 3))
        j = tf.random.stateless_categorical(log_pi, 1, seed=k1)[0, 0]
        n = tf.random.stateless_normal([2], seed=k2)
        s1, s2, r = tf.exp(log_s1[0, j]), tf.exp(log_s2[0, j]), rho[0, j]
        dx = mu1[0, j] + s1 * n[0]
        dy = mu2[0, j] + s2 * (r * n[0] + tf.sqrt(1 - r * r) * n[1])
        e = tf.cast(tf.random.stateless_uniform([], seed=k3) < tf.sigmoid(eos_logit[0]), tf.float32)
        return tf.reshape(tf.stack([dx, dy, e]), [1, 3]), states, scales[0]

    states = [tf.zeros((1, s)) for s in cell.state_size]
    x = tf.zeros((1, 3))
    out, scales = [], []
    for i in range(length):
        x, states, sc = step(x, states, tf.constant([seed, i], tf.int64))
        out.append(x.numpy()[0])
        scales.append(sc.numpy())
    return np.stack(out), weight_change_intensity(np.stack(scales))


def draw_handwriting(strokes, intensity, path, title=""):
    """Sampled pen trajectory (pen lifts break the line), points coloured by the dominant gate's change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from hyperkeras.io import save_figure
    from hyperkeras.layers.hyper_lstm_cell import GATES

    colours = np.array([[0.84, 0.15, 0.16], [0.17, 0.63, 0.17], [0.12, 0.47, 0.71], [0.58, 0.40, 0.74]])
    xy = np.cumsum(strokes[:, :2], axis=0)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 4.5), gridspec_kw={"height_ratios": [3, 1]})
    start = 0
    for k in range(len(strokes)):
        if strokes[k, 2] > 0.5 or k == len(strokes) - 1:
            ax.plot(xy[start : k + 1, 0], xy[start : k + 1, 1], color="black", linewidth=1.0)
            start = k + 1
    strength = intensity.max(1)
    rgb = colours[intensity.argmax(1)]
    ax.scatter(xy[:, 0], xy[:, 1], c=np.concatenate([rgb, strength[:, None]], 1), s=18, linewidths=0)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    for g in range(4):
        ax2.plot(intensity[:, g], color=colours[g], linewidth=0.8, label=f"{GATES[g]} W_h")
    ax2.set_xlabel("pen step")
    ax2.set_ylabel("weight change")
    ax2.legend(ncol=4, fontsize=7, frameon=False)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- main
def main(argv):
    ctx = common.setup(argv)
    import keras
    import numpy as np
    import tensorflow as tf

    if not 0.0 < FLAGS.keep_prob <= 1.0:
        raise flags.ValidationError(f"--keep_prob must be in (0, 1], got {FLAGS.keep_prob}.")
    from hyperkeras.data.strokes import load_strokes

    seqs = load_strokes(FLAGS.dataset, FLAGS.data_dir, FLAGS.synthetic_sequences, ctx.seed, FLAGS.max_sequences)
    if FLAGS.dataset == "synthetic":
        import io

        from hyperkeras.io import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, strokes=np.array(seqs, dtype=object))
        atomic_write_bytes(ctx.path("strokes.npz"), buf.getvalue())
    n_valid = max(1, len(seqs) // 10)
    train, valid = seqs[:-n_valid], seqs[-n_valid:]
    win = FLAGS.seq_len + 1
    train = [s for s in train if len(s) >= win]
    valid = [s for s in valid if len(s) >= win]
    if not train or not valid:
        raise ValueError(f"no training/validation sequence is longer than --seq_len={FLAGS.seq_len}; lower it.")
    scale = float(np.concatenate([s[:, :2] for s in train]).std())
    norm = np.array([scale, scale, 1.0], "float32")
    # Fixed training windows pool: every start of every training sequence, drawn per step from a stateless RNG.
    flat = np.concatenate(train) / norm
    offsets = np.cumsum([0] + [len(s) for s in train[:-1]])
    starts = np.concatenate([o + np.arange(len(s) - win + 1) for o, s in zip(offsets, train)]).astype("int64")
    flat_t, starts_t = tf.constant(flat), tf.constant(starts)
    batch, a = ctx.batch_size, FLAGS.scale_augment
    print(f"{FLAGS.dataset}: {len(train)} training / {len(valid)} validation sequences, offset scale {scale:.3f}")

    def make_dataset(start_step):
        def windows(step):
            seed = tf.stack([tf.cast(ctx.seed, tf.int64), step])
            k1, k2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            idx = tf.random.stateless_uniform([batch], seed=k1, maxval=len(starts), dtype=tf.int64)
            w = tf.gather(flat_t, tf.gather(starts_t, idx)[:, None] + tf.range(win, dtype=tf.int64)[None])
            s = tf.random.stateless_uniform([batch, 1, 2], seed=k2, minval=1 - a, maxval=1 + a)
            w = tf.concat([w[..., :2] * s, w[..., 2:]], axis=-1)
            return w[:, :-1], w[:, 1:]

        return tf.data.Dataset.counter(start_step).map(windows).prefetch(2)

    with ctx.strategy.scope():
        model, loss = build_model(
            FLAGS.units, FLAGS.hyper_units, FLAGS.nz, FLAGS.layer_norm, FLAGS.mixtures, FLAGS.keep_prob, ctx.seed
        )
        model.compile(
            optimizer=keras.optimizers.Adam(FLAGS.learning_rate, global_clipnorm=FLAGS.clip_norm or None), loss=loss
        )
    print(f"HyperLSTM handwriting model: {model.count_params():,} parameters")
    common.train(model, make_dataset, ctx)

    # Validation: non-overlapping windows of every validation sequence, no augmentation, no dropout.
    vw = np.stack([s[k : k + win] / norm for s in valid for k in range(0, len(s) - win + 1, FLAGS.seq_len)])
    from hyperkeras.data.strokes import mdn_nll

    per_window = []
    bar = keras.utils.Progbar(len(vw), unit_name="window", verbose=common.verbose())
    with common.stage("validation: %d windows of %d pen steps", len(vw), FLAGS.seq_len):
        for k in range(0, len(vw), 64):
            out = model(vw[k : k + 64, :-1], training=False)
            per_window.append(tf.reduce_sum(mdn_nll(tf.constant(vw[k : k + 64, 1:]), out, FLAGS.mixtures), -1).numpy())
            bar.update(min(k + 64, len(vw)))
    per_window = np.concatenate(per_window)
    val_loss = float(per_window.mean())
    with common.stage("sampling %d pen steps", FLAGS.sample_len):
        strokes, intensity = sample_strokes(model, FLAGS.mixtures, FLAGS.sample_len, ctx.seed)
    draw_handwriting(
        strokes * norm,
        intensity,
        ctx.path("handwriting_sample.png"),
        title=f"HyperLSTM sample after {ctx.steps} steps ({FLAGS.dataset})",
    )
    metrics = {
        "dataset": FLAGS.dataset,
        "steps": ctx.steps,
        "params": int(model.count_params()),
        "valid_nats_per_window": val_loss,
        "valid_nats_per_step": val_loss / FLAGS.seq_len,
        "seq_len": FLAGS.seq_len,
        "valid_windows": int(len(vw)),
        "offset_scale": scale,
        "train_sequences": len(train),
        "valid_sequences": len(valid),
    }
    report = (
        f"# HyperLSTM handwriting model on `{FLAGS.dataset}`\n\n"
        + common.markdown_table([metrics])
        + "\n\nLog-loss in nats (negative log-likelihood of normalised offsets + end-of-stroke), "
        f"summed over windows of {FLAGS.seq_len} pen steps.\n\n![sample](handwriting_sample.png)\n"
    )
    common.write_results(ctx, metrics, report)
    common.save_model(model, ctx.path("model.keras"))
    print(f"validation log-loss {val_loss:.1f} nats per {FLAGS.seq_len}-step window -> {ctx.output_dir}")


if __name__ == "__main__":
    common.run(main)

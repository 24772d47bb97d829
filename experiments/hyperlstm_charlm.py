"""Character-level language modelling with the HyperLSTM (Ha, Dai & Le, section 4.1) vs a plain LSTM.

Trains `RNN(HyperLSTMCell)` and a `keras.layers.LSTM` baseline with (about) the same number of parameters
for the same number of steps, reports validation and test bits per character, samples text with a
temperature and draws the blog's figure: generated text coloured by how much the hyper cell changes the
four hidden-to-gate weight matrices (through their scaling vectors d_h) at each character.

Corpora (``--dataset``):
  pydoc   (default, no download) CPython's own ``pydoc_data.topics``, ≈465 K characters of English
          documentation; split 90% / 5% / 5% in order.
  ptb     Penn Treebank characters: ``ptb.char.{train,valid,test}.txt`` in ``--data_dir`` (tokens separated by
          spaces, ``_`` between words; every line ends with a newline token).
  enwik8  the ``enwik8`` file in ``--data_dir``: bytes, first 90 M / next 5 M / next 5 M.
  text    any UTF-8 file given by ``--text_file``; split 90% / 5% / 5% in order.

The paper's PTB model: 1000 units, hyper 128 units, N_z 4, batch 128, sequence 100, Adam 1e-3, gradient
clip 1.0 (global norm), keep probability 0.9 on input, output and recurrent (candidate) dropout; test bpc
1.265 (HyperLSTM), 1.250 (with layer norm). Reproduce with
``--units=1000 --hyper_units=128 --nz=4 --batch_size=128 --seq_len=100 --keep_prob=0.9 --dataset=ptb``.
The defaults below are sized for a 2-core CPU (a few minutes per thousand steps).

    python -m experiments.hyperlstm_charlm --output_dir=runs/charlm --steps=1500
"""

from __future__ import annotations

import math
import os
import sys
import time

from absl import flags

from experiments import common

common.define_flags(dataset="pydoc", steps=800, batch_size=32)
flags.DEFINE_string("text_file", None, "UTF-8 text file for --dataset=text.")
flags.DEFINE_integer("max_chars", None, "Use only the first this many characters of the corpus (before splitting).")
flags.DEFINE_integer("units", 128, "Main LSTM units (paper PTB: 1000).", lower_bound=1)
flags.DEFINE_integer("hyper_units", 64, "Hyper LSTM units (paper: 128).", lower_bound=1)
flags.DEFINE_integer("nz", 4, "Hyper embedding size N_z (paper PTB: 4).", lower_bound=1)
flags.DEFINE_bool("layer_norm", True, "Layer-normalised HyperLSTM (paper's best PTB model).")
flags.DEFINE_integer("embed_dim", 32, "Character embedding size.", lower_bound=1)
flags.DEFINE_integer("seq_len", 100, "Training sequence length (paper: 100).", lower_bound=2)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (paper: 1e-3).", lower_bound=0.0)
flags.DEFINE_float("clip_norm", 1.0, "Global gradient-norm clip (paper: 1.0).", lower_bound=0.0)
flags.DEFINE_float("keep_prob", 0.9, "Keep probability of input, output and recurrent dropout (paper: 0.9).")
flags.DEFINE_bool(
    "baseline", True, "Also train the plain keras.layers.LSTM baseline with a comparable parameter count."
)
flags.DEFINE_integer("eval_chars", None, "Evaluate on at most this many validation/test characters (default: all).")
flags.DEFINE_integer("curve_chars", 20000, "Validation characters for the bpc-vs-step curve (0: no curve).")
flags.DEFINE_integer("sample_len", 600, "Characters to sample for the report and the figure.", lower_bound=1)
flags.DEFINE_float("temperature", 0.8, "Sampling temperature.", lower_bound=1e-3)
flags.DEFINE_string("prime", "The ", "Text the sample starts from.")
common.quick_defaults(
    steps=150,
    checkpoint_every=50,
    max_chars=300000,
    units=64,
    hyper_units=32,
    seq_len=50,
    eval_chars=20000,
    curve_chars=5000,
    sample_len=200,
)
FLAGS = flags.FLAGS

GATE_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:purple")


# ---------------------------------------------------------------------------------------------- models
def lstm_params(units, embed_dim, vocab):
    return 4 * units * (embed_dim + units + 1) + units * vocab + vocab + vocab * embed_dim


def matching_lstm_units(target_params, embed_dim, vocab):
    """Largest LSTM width whose model has no more parameters than `target_params` (or the closer of the two)."""
    u = 1
    while lstm_params(u + 1, embed_dim, vocab) <= target_params:
        u += 1
    if abs(lstm_params(u + 1, embed_dim, vocab) - target_params) < abs(
        lstm_params(u, embed_dim, vocab) - target_params
    ):
        u += 1
    return u


def build_model(kind, vocab, units, embed_dim, keep_prob, hyper_units=128, nz=4, layer_norm=True, seed=0):
    """Embedding → dropout → RNN (HyperLSTM or LSTM, returning sequences and state) → dropout → logits."""
    import keras

    from hyperkeras.layers import HyperLSTMCell

    drop = 1.0 - keep_prob
    inp = keras.Input((None,), dtype="int32", name="chars")
    emb = keras.layers.Embedding(vocab, embed_dim, name="embedding")
    if kind == "hyper":
        rnn = keras.layers.RNN(
            HyperLSTMCell(
                units,
                use_recurrent_dropout=keep_prob < 1.0,
                dropout_keep_prob=keep_prob,
                use_layer_norm=layer_norm,
                hyper_num_units=hyper_units,
                hyper_embedding_size=nz,
                hyper_use_recurrent_dropout=keep_prob < 1.0,
                seed=seed,
            ),
            return_sequences=True,
            return_state=True,
            name="rnn",
        )
    else:
        rnn = keras.layers.LSTM(units, recurrent_dropout=0.0, return_sequences=True, return_state=True, name="rnn")
    head = keras.layers.Dense(vocab, name="logits")
    x = keras.layers.Dropout(drop, seed=seed)(emb(inp)) if drop > 0 else emb(inp)
    seq, *_ = rnn(x)
    if drop > 0:
        seq = keras.layers.Dropout(drop, seed=seed + 1)(seq)
    return keras.Model(inp, head(seq), name=f"{kind}_charlm")


def evaluate_bpc(model, ids, seq_len, streams=32, max_chars=None, progress=True):
    """Bits per character over `ids`, read as `streams` parallel streams, state carried across windows."""
    import keras
    import numpy as np
    import tensorflow as tf

    ids = np.asarray(ids[:max_chars] if max_chars else ids)
    streams = max(1, min(streams, (len(ids) - 1) // 2))
    per = (len(ids) - 1) // streams
    if per > seq_len:
        per -= per % seq_len  # equal windows: one trace (drops < streams * seq_len trailing symbols)
    x = ids[: streams * per].reshape(streams, per)
    y = ids[1 : streams * per + 1].reshape(streams, per)
    window = getattr(model, "_hk_eval_window", None)
    if window is None:  # one traced function per model, reused by every evaluation
        emb, rnn, head = model.get_layer("embedding"), model.get_layer("rnn"), model.get_layer("logits")

        @tf.function(reduce_retracing=True)
        def window(xw, yw, states):
            seq, *new_states = rnn(emb(xw), initial_state=states, training=False)
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(yw, head(seq))
            return tf.reduce_sum(nll), new_states

        model._hk_eval_window = window
    rnn = model.get_layer("rnn")

    states = [tf.zeros((streams, s)) for s in _state_sizes(rnn)]
    total = 0.0
    bar = keras.utils.Progbar(per, verbose=1 if progress and os.isatty(1) else 0)
    for t in range(0, per, seq_len):
        s, states = window(x[:, t : t + seq_len], y[:, t : t + seq_len], states)
        total += float(s)
        bar.update(min(t + seq_len, per))
    return total / (streams * per) / math.log(2.0)


def _state_sizes(rnn):
    sizes = rnn.cell.state_size
    return list(sizes) if isinstance(sizes, (list, tuple)) else [sizes]


def sample(model, vocab, prime, length, temperature, seed, with_scales=False):
    """Temperature sampling one character at a time; optionally the hidden-to-gate scales at every step."""
    import numpy as np
    import tensorflow as tf

    emb, rnn, head = model.get_layer("embedding"), model.get_layer("rnn"), model.get_layer("logits")
    cell = rnn.cell

    @tf.function(reduce_retracing=True)
    def step(char, states, key):
        e = emb(char)
        if with_scales:
            h, states, scales = cell.call_with_scales(e, states)
        else:
            h, states = cell(e, states)
            scales = tf.zeros((1, 4, 1))
        logits = head(h) / temperature
        nxt = tf.random.stateless_categorical(logits, 1, seed=key)[:, 0]
        return tf.cast(nxt, tf.int32), states, scales[0]

    states = [tf.zeros((1, s)) for s in _state_sizes(rnn)]
    prime_ids = vocab.encode(list(prime)) if prime else vocab.encode([vocab.symbols[1]])
    out, scales = [], []
    nxt = None
    for i in range(len(prime_ids) + length - 1):
        char = tf.constant([prime_ids[i]] if i < len(prime_ids) else [int(nxt[0])], tf.int32)
        nxt, states, sc = step(char, states, tf.constant([seed, i], tf.int32))
        if i >= len(prime_ids) - 1:
            out.append(int(nxt[0]))
            scales.append(sc.numpy())
    symbols = list(prime) + vocab.decode(out)
    return symbols, np.stack(scales)  # scales[k] were used to produce out[k]


def draw_weight_changes(symbols, intensity, path, width=64, title=""):
    """The blog's figure: each generated character on four gate-coloured bands, opacity = weight change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from hyperkeras.io import save_figure
    from hyperkeras.layers.hyper_lstm_cell import GATES

    cells, row, col = [], 0, 0
    for k, s in enumerate(symbols):
        if s == "\n":
            cells.append((row, col, "↵", k))
            row, col = row + 1, 0
            continue
        if col >= width:
            row, col = row + 1, 0
        cells.append((row, col, s, k))
        col += 1
    rows = row + 1
    fig, ax = plt.subplots(figsize=(width * 0.16, rows * 0.34 + 0.8))
    for r, c, s, k in cells:
        if k < len(intensity):
            for g in range(4):
                ax.add_patch(
                    Rectangle(
                        (c, -r - 1 + g * 0.25),
                        1,
                        0.25,
                        color=GATE_COLOURS[g],
                        alpha=float(intensity[k, g]),
                        linewidth=0,
                    )
                )
        ax.text(c + 0.5, -r - 0.5, s, ha="center", va="center", fontsize=8, family="monospace")
    ax.set_xlim(0, width)
    ax.set_ylim(-rows, 0)
    ax.axis("off")
    handles = [Rectangle((0, 0), 1, 1, color=GATE_COLOURS[g]) for g in range(4)]
    ax.legend(
        handles,
        [f"{g} gate W_h" for g in GATES],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def draw_curves(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hyperkeras.io import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation bits per character")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- main
def main(argv):
    ctx = common.setup(argv)
    import keras
    import numpy as np
    import tensorflow as tf

    if not 0.0 < FLAGS.keep_prob <= 1.0:
        raise flags.ValidationError(f"--keep_prob must be in (0, 1], got {FLAGS.keep_prob}.")
    from hyperkeras.data.text import Vocabulary, as_text, load_corpus

    train_s, valid_s, test_s = load_corpus(FLAGS.dataset, FLAGS.data_dir, FLAGS.text_file, FLAGS.max_chars)
    vocab = Vocabulary(train_s)
    train_ids, valid_ids, test_ids = (vocab.encode(s) for s in (train_s, valid_s, test_s))
    if len(train_ids) <= FLAGS.seq_len + 1:
        raise ValueError(f"training split has {len(train_ids)} symbols; --seq_len={FLAGS.seq_len} needs more.")
    print(f"corpus {FLAGS.dataset}: {len(train_ids)}/{len(valid_ids)}/{len(test_ids)} symbols, vocabulary {len(vocab)}")

    train_tensor = tf.constant(train_ids)
    seq, batch = FLAGS.seq_len, ctx.batch_size

    def make_dataset(start_step):
        """Random windows of seq_len + 1 symbols; batch k depends only on (seed, k), so resuming is exact."""

        def windows(step):
            starts = tf.random.stateless_uniform(
                [batch],
                seed=tf.stack([tf.cast(ctx.seed, tf.int64), step]),
                maxval=len(train_ids) - seq - 1,
                dtype=tf.int64,
            )
            w = tf.gather(train_tensor, starts[:, None] + tf.range(seq + 1, dtype=tf.int64)[None])
            return w[:, :-1], w[:, 1:]

        return tf.data.Dataset.counter(start_step).map(windows).prefetch(2)

    specs = {
        "hyper": dict(
            kind="hyper", units=FLAGS.units, hyper_units=FLAGS.hyper_units, nz=FLAGS.nz, layer_norm=FLAGS.layer_norm
        )
    }
    hyper_params = build_model(
        "hyper",
        len(vocab),
        FLAGS.units,
        FLAGS.embed_dim,
        FLAGS.keep_prob,
        FLAGS.hyper_units,
        FLAGS.nz,
        FLAGS.layer_norm,
    ).count_params()
    if FLAGS.baseline:
        specs["lstm"] = dict(kind="lstm", units=matching_lstm_units(hyper_params, FLAGS.embed_dim, len(vocab)))

    results, curves, models = {}, {}, {}
    for name, spec in specs.items():
        with ctx.strategy.scope():
            model = build_model(
                spec["kind"],
                len(vocab),
                spec["units"],
                FLAGS.embed_dim,
                FLAGS.keep_prob,
                spec.get("hyper_units", 128),
                spec.get("nz", 4),
                spec.get("layer_norm", True),
                ctx.seed,
            )
            model.compile(
                optimizer=keras.optimizers.Adam(FLAGS.learning_rate, global_clipnorm=FLAGS.clip_norm or None),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        curve = curves.setdefault(name, [])

        class _Curve(keras.callbacks.Callback):
            def __init__(self, curve):
                super().__init__()
                self.curve = curve

            def on_epoch_end(self, epoch, logs=None):
                if FLAGS.curve_chars > 0:
                    self.curve.append(
                        (
                            min((epoch + 1) * ctx.checkpoint_every, ctx.steps),
                            evaluate_bpc(self.model, valid_ids, seq, max_chars=FLAGS.curve_chars, progress=False),
                        )
                    )

        print(f"== {name}: {model.count_params():,} parameters, units {spec['units']}")
        t0 = time.time()
        common.train(model, make_dataset, ctx, name=name, callbacks=[_Curve(curve)])
        minutes = (time.time() - t0) / 60
        with common.stage(
            "%s: bits per character on the validation and test characters (%s each)", name, FLAGS.eval_chars or "all"
        ):
            valid_bpc = evaluate_bpc(model, valid_ids, seq, max_chars=FLAGS.eval_chars)
            test_bpc = evaluate_bpc(model, test_ids, seq, max_chars=FLAGS.eval_chars)
        results[name] = {
            "params": int(model.count_params()),
            "units": spec["units"],
            "valid_bpc": valid_bpc,
            "test_bpc": test_bpc,
            "train_minutes": minutes,
        }
        print(f"{name}: valid bpc {valid_bpc:.4f}  test bpc {test_bpc:.4f}  ({minutes:.1f} min)")
        models[name] = model
        common.save_model(model, ctx.path(f"{name}.keras"))

    hyper = models["hyper"]
    symbols, scales = sample(hyper, vocab, FLAGS.prime, FLAGS.sample_len, FLAGS.temperature, ctx.seed, with_scales=True)
    text = as_text(symbols)
    from hyperkeras.layers.hyper_lstm_cell import weight_change_intensity

    intensity = weight_change_intensity(scales)
    # Pad the prime (its scales are not drawn) so that intensity[k] lines up with symbols[k].
    full = np.concatenate([np.zeros((len(FLAGS.prime), 4)), intensity], 0) if FLAGS.prime else intensity
    draw_weight_changes(
        list(text),
        full,
        ctx.path("weight_changes.png"),
        title=f"HyperLSTM sample (T={FLAGS.temperature}); opacity = change of the W_h scaling vector",
    )
    draw_curves(curves, ctx.path("valid_bpc.png"))
    from hyperkeras.io import atomic_write_text

    atomic_write_text(ctx.path("sample.txt"), text)
    metrics = {
        "dataset": FLAGS.dataset,
        "steps": ctx.steps,
        "batch_size": batch,
        "seq_len": seq,
        "vocab": len(vocab),
        "python": sys.version.split()[0],
        "temperature": FLAGS.temperature,
        "models": results,
        "valid_bpc_curves": curves,
        "mean_weight_change_by_gate": intensity.mean(0).tolist(),
    }
    rows = [{"model": k, **v} for k, v in results.items()]
    report = (
        f"# HyperLSTM character-level LM on `{FLAGS.dataset}`\n\n"
        f"{ctx.steps} steps, batch {batch}, sequence {seq}, vocabulary {len(vocab)}, keep prob {FLAGS.keep_prob}.\n\n"
        + common.markdown_table(rows, ["model", "params", "units", "valid_bpc", "test_bpc", "train_minutes"])
        + "\n\n![validation bpc](valid_bpc.png)\n\n## Sample (temperature "
        + f"{FLAGS.temperature})\n\n```\n{text}\n```\n\n![weight changes](weight_changes.png)\n"
    )
    common.write_results(ctx, metrics, report)


if __name__ == "__main__":
    common.run(main)

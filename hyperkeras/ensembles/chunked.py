"""Chunked evaluation of N networks: reductions inside the compiled graph, bounded memory, progress bars."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from hyperkeras import probabilities
from hyperkeras.ensembles.results import EnsemblePrediction, RegressionPrediction
from hyperkeras.ensembles.sources import MCDropout, Members, TargetMembers, as_members, log_probs, task_of
from hyperkeras.targets import TargetNetwork

__all__ = ["predict", "predict_regression", "probability_fn", "log_mean_probs", "default_chunk_size"]

# Activation memory budget (bytes) used to choose the default chunk size.
_DEFAULT_MEMORY_BUDGET = 128 * 2**20
# member_probs is kept by default up to this many floats (256 MB).
_KEEP_PROBS_LIMIT = 64 * 2**20


def _make_classification_reducer(output: str, keep_probs: bool):
    def reduce(out, mask):
        if out.shape.rank != 3:
            raise ValueError(
                f"ensembles.predict expects class scores [B, C] per network, got outputs of shape {out.shape[1:]}; "
                "use predict_regression for other outputs."
            )
        if out.shape[-1] == 1:
            raise ValueError(
                "ensembles.predict: the networks have one output unit, and a softmax over one class is always 1; "
                "use predict_regression for regression outputs (a binary classifier needs two class scores)."
            )
        out = probabilities.full_precision(out)  # half-precision probabilities would not sum to 1
        logp = log_probs(out, output)
        logits = out if output == "logits" else logp
        probs = tf.exp(logp)
        m = tf.cast(mask, out.dtype)
        m3 = m[:, None, None]
        pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
        num_classes = out.shape[-1]
        ent = probabilities.entropy_from_log_probs(logp)
        result = {
            "sum_probs": tf.reduce_sum(probs * m3, axis=0),
            "sum_logits": tf.reduce_sum(logits * m3, axis=0),
            "votes": tf.reduce_sum(tf.one_hot(pred, num_classes, dtype=out.dtype) * m3, axis=0),
            "sum_entropy": tf.reduce_sum(ent * m[:, None], axis=0),
            "pred": pred,
        }
        if keep_probs:
            result["probs"] = probs
        return result

    return reduce


def _make_regression_reducer(keep_outputs: bool):
    def reduce(out, mask):
        m = tf.reshape(tf.cast(mask, out.dtype), [-1] + [1] * (out.shape.rank - 1))
        count = tf.reduce_sum(m)
        mean = tf.reduce_sum(out * m, axis=0) / count
        m2 = tf.reduce_sum(tf.square(out - mean) * m, axis=0)
        result = {"mean": mean, "m2": m2}
        if keep_outputs:
            result["outputs"] = out
        return result

    return reduce


_REDUCERS = {}


def _reducer(kind, *args):
    key = (kind,) + args
    if key not in _REDUCERS:
        _REDUCERS[key] = _make_classification_reducer(*args) if kind == "cls" else _make_regression_reducer(*args)
    return _REDUCERS[key]


# ---------------------------------------------------------------------- evaluation loop
def _batches(x, batch_size):
    """Yields (x_batch, y_batch or None); returns total examples if known via the first element."""
    if isinstance(x, tf.data.Dataset):
        for elem in x:
            if isinstance(elem, (tuple, list)):
                yield elem[0], (elem[1] if len(elem) > 1 else None)
            elif isinstance(elem, dict):
                raise TypeError("dataset elements must be x or (x, y, ...) tuples, not dicts.")
            else:
                yield elem, None
        return
    arr = x
    for i in range(0, int(arr.shape[0]), batch_size):
        yield arr[i : i + batch_size], None


def _num_examples(x):
    if isinstance(x, tf.data.Dataset):
        return None
    return int(x.shape[0])


def _prepare_x(x, members):
    if isinstance(x, tf.data.Dataset):
        return x
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if not (isinstance(x, np.ndarray) or tf.is_tensor(x)):
        raise TypeError(f"x must be an array, a tensor or a tf.data.Dataset, got {type(x).__name__}.")
    shape = tuple(x.shape)
    if members.input_shape is not None:
        expect = tuple(members.input_shape)
        if len(shape) != len(expect) + 1 or any(e is not None and d != e for d, e in zip(shape[1:], expect)):
            raise ValueError(f"x must have shape [B, {', '.join(map(str, expect))}], got {shape}.")
    if isinstance(x, np.ndarray) and x.dtype != np.float32:
        x = x.astype(np.float32)
    return x


def _output_size(members) -> int:
    if isinstance(members, TargetMembers):
        return int(np.prod(members.target.output_shape))
    model = members.model if isinstance(members, MCDropout) else getattr(members, "models", [None])[0]
    try:
        return int(np.prod(model.outputs[0].shape[1:]))
    except (AttributeError, IndexError, TypeError):
        return 10


def default_chunk_size(members: Members, batch_size: int, memory_budget: int = _DEFAULT_MEMORY_BUDGET) -> int:
    """Networks per chunk (≤ 32) so that chunk × batch × the largest activation stays within
    `memory_budget` bytes (128 MB: small working sets measured faster on CPU than large ones)."""
    target = getattr(members, "target", None)
    per_example = 4 * 64  # bytes, for sources whose activations are unknown
    if target is not None:
        biggest = int(np.prod([d or 1 for d in target.input_shape]))
        for _, shape in target.layer_output_shapes():
            biggest = max(biggest, int(np.prod([d or 1 for d in shape[1:]])))
        per_example = 4 * biggest
    chunk = memory_budget // max(1, per_example * batch_size)
    return int(max(1, min(32, chunk, members.num_networks)))


def _run(members, x, batch_size, chunk_size, reducer, verbose, consume):
    """Runs every chunk of networks on every batch; `consume(batch_index, start, valid, result)`."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if chunk_size is None:
        chunk_size = default_chunk_size(members, batch_size)
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    chunk_size = int(min(chunk_size, members.num_networks))
    n = members.num_networks
    num_chunks = math.ceil(n / chunk_size)
    total = _num_examples(x)
    steps = None if total is None else math.ceil(total / batch_size) * num_chunks
    bar = keras.utils.Progbar(steps, unit_name="chunk") if verbose else None
    run = members._chunk_fn(chunk_size, reducer)
    labels = []
    done = 0
    for b, (xb, yb) in enumerate(_batches(x, int(batch_size))):
        if yb is not None:
            labels.append(np.asarray(yb))
        for c in range(num_chunks):
            start = c * chunk_size
            valid = min(chunk_size, n - start)
            result = run(start, valid, xb)
            consume(b, start, valid, {k: v.numpy() for k, v in result.items()})
            done += 1
            if bar is not None:
                bar.update(done)
    if bar is not None and steps is None:
        bar.update(done, finalize=True)
    return np.concatenate(labels) if labels else None


def predict(
    source,
    x,
    n: int | None = None,
    seed: int | None = None,
    *,
    target: TargetNetwork | None = None,
    batch_size: int = 128,
    chunk_size: int | None = None,
    keep_member_probs: bool | None = None,
    output: str = "auto",
    verbose: int = 1,
    state: dict | str | None = None,
    calibration_data=None,
) -> EnsemblePrediction:
    """Evaluates an ensemble of N classifiers on `x`.

    Args:
        source: generator, params dict (with `target`), list of keras.Models, keras.Model, `MCDropout`
            or `Members` (see `as_members`).
        x: examples ``[B, *input_shape]`` (array or tensor) or a `tf.data.Dataset` of batches ``x`` or
            ``(x, y)`` (labels are collected into the result's ``labels``).
        n: number of networks (required for generators and MC dropout).
        seed: sampling seed for generators (a fresh ensemble for every seed).
        target: `TargetNetwork` of a params-dict source.
        batch_size: examples per step (arrays only; datasets keep their batches).
        chunk_size: networks per step (default: `default_chunk_size`, e.g. 10 for the 28×28 MNIST targets).
        keep_member_probs: keep ``member_probs [N, B, C]``; default only when it is ≤ 256 MB (for a
            dataset of unknown size: kept until it passes 256 MB, then dropped).
        output: ``"auto"``, ``"logits"`` or ``"probs"`` (what the networks output).
        verbose: 1 shows a progress bar over (example batch, network chunk) steps.
        state: for generated networks of a target with BatchNorm moving statistics, each network's own
            ``{name: [N, *shape]}`` (``target.calibrate_state(params, training_images)``), or ``"shared"``
            for the wrapped model's (see `as_members`); not needed for targets without them.
        calibration_data: instead of `state`, training inputs on which each network's own BatchNorm
            statistics are computed first (`TargetNetwork.calibrate_state`).

    Returns:
        `EnsemblePrediction`.

    Raises:
        ValueError: a regression source (``source.task == "regression"``, or networks with one output unit:
            use `predict_regression`), a BatchNorm target's networks without `state` / `calibration_data`,
            or any other problem `as_members` names.
    """
    if task_of(source) == "regression":
        raise ValueError(
            f"ensembles.predict: the {type(source).__name__} solves task='regression'; use "
            "ensembles.predict_regression (mean and standard deviation of the outputs)."
        )
    members = as_members(
        source, n=n, seed=seed, target=target, output=output, state=state, calibration_data=calibration_data
    )
    x = _prepare_x(x, members)
    total = _num_examples(x)
    n_net = members.num_networks
    lazy = keep_member_probs is None and total is None  # dataset: keep until the size limit is passed
    if keep_member_probs is None:
        keep_member_probs = total is None or n_net * total * _output_size(members) <= _KEEP_PROBS_LIMIT
    reducer = _reducer("cls", members.output, bool(keep_member_probs))
    acc = {}
    preds, probs = [], []
    kept = [0]

    def consume(b, start, valid, r):
        nonlocal probs
        for key in ("sum_probs", "sum_logits", "votes", "sum_entropy"):
            val = r[key].astype(np.float64)
            if (b, key) in acc:
                acc[(b, key)] += val
            else:
                acc[(b, key)] = val
        if start == 0:
            preds.append([])
            if probs is not None:
                probs.append([])
        preds[b].append(r["pred"][:valid])
        if keep_member_probs and probs is not None:
            probs[b].append(r["probs"][:valid])
            kept[0] += r["probs"][:valid].size
            if lazy and kept[0] > _KEEP_PROBS_LIMIT:
                probs = None

    labels = _run(members, x, batch_size, chunk_size, reducer, verbose, consume)
    nb = len(preds)
    if nb == 0:
        raise ValueError("x is empty: no examples to evaluate.")

    def cat(key):
        return np.concatenate([acc[(b, key)] for b in range(nb)], axis=0)

    member_probs = None
    if keep_member_probs and probs is not None:
        member_probs = np.concatenate([np.concatenate(p, axis=0) for p in probs], axis=1).astype(np.float32)
    return EnsemblePrediction(
        num_networks=n_net,
        mean_probs=cat("sum_probs") / n_net,
        fused_logits=cat("sum_logits") / n_net,
        vote_counts=np.rint(cat("votes")).astype(np.int64),
        member_predictions=np.concatenate([np.concatenate(p, axis=0) for p in preds], axis=1).astype(np.int32),
        member_probs=member_probs,
        expected_entropy=cat("sum_entropy") / n_net,
        labels=labels,
    )


def predict_regression(
    source,
    x,
    n: int | None = None,
    seed: int | None = None,
    *,
    target: TargetNetwork | None = None,
    batch_size: int = 128,
    chunk_size: int | None = None,
    keep_member_outputs: bool | None = None,
    verbose: int = 1,
    state: dict | str | None = None,
    calibration_data=None,
) -> RegressionPrediction:
    """Evaluates an ensemble of N regression networks: mean and standard deviation over networks.

    Arguments as in `predict`; ``keep_member_outputs`` (default: when N·B·outputs ≤ 64 M floats) keeps
    every network's outputs.
    """
    members = as_members(
        source, n=n, seed=seed, target=target, output="logits", state=state, calibration_data=calibration_data
    )
    x = _prepare_x(x, members)
    total = _num_examples(x)
    n_net = members.num_networks
    if keep_member_outputs is None:
        keep_member_outputs = total is not None and n_net * total * _output_size(members) <= _KEEP_PROBS_LIMIT
    reducer = _reducer("reg", bool(keep_member_outputs))
    stats, outs = [], []

    def consume(b, start, valid, r):
        if start == 0:
            stats.append(None)
            outs.append([])
        mean, m2 = r["mean"].astype(np.float64), r["m2"].astype(np.float64)
        if stats[b] is None:
            stats[b] = (valid, mean, m2)
        else:  # Chan et al.'s parallel combination of means and squared deviations
            na, ma, m2a = stats[b]
            nt = na + valid
            delta = mean - ma
            stats[b] = (nt, ma + delta * valid / nt, m2a + m2 + delta**2 * na * valid / nt)
        if keep_member_outputs:
            outs[b].append(r["outputs"][:valid])

    labels = _run(members, x, batch_size, chunk_size, reducer, verbose, consume)
    if not stats:
        raise ValueError("x is empty: no examples to evaluate.")
    mean = np.concatenate([s[1] for s in stats], axis=0)
    var = np.concatenate([s[2] / s[0] for s in stats], axis=0)
    member_outputs = None
    if keep_member_outputs:
        member_outputs = np.concatenate([np.concatenate(o, axis=0) for o in outs], axis=1)
    return RegressionPrediction(n_net, mean, np.sqrt(np.maximum(var, 0.0)), member_outputs, labels)


# ---------------------------------------------------------------------- differentiable ensemble probabilities
def log_mean_probs(members: Members, x) -> tf.Tensor:
    """``log(mean_k softmax_k(x))`` ``[B, C]``, computed stably (logsumexp over networks); differentiable."""
    logp = members.log_probs(x)
    return tf.reduce_logsumexp(logp, axis=0) - tf.math.log(tf.cast(members.num_networks, logp.dtype))


def probability_fn(
    source,
    n: int | None = None,
    seed: int | None = None,
    *,
    target: TargetNetwork | None = None,
    output: str = "auto",
    state: dict | str | None = None,
    calibration_data=None,
):
    """A differentiable function ``x -> mean_k softmax_k(x)`` ``[B, C]`` of a fixed ensemble.

    The networks are drawn once (for generators, with `seed`) and reused on every call, so gradients
    with respect to ``x`` (attacks) see one fixed ensemble. The returned function has a ``members``
    attribute (`Members`). `state` / `calibration_data`: the networks' BatchNorm statistics, as in `predict`.
    """
    members = as_members(
        source, n=n, seed=seed, target=target, output=output, state=state, calibration_data=calibration_data
    )

    def fn(x):
        return tf.exp(log_mean_probs(members, x))

    fn.members = members
    return fn

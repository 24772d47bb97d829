"""Ensembles of networks: sample N networks in one generator pass, evaluate them all, fuse predictions.

One API serves every source of networks in the library:

* a **generator** — any object with ``.target`` (a `hyperkeras.TargetNetwork`) and
  ``.sample(n, seed) -> params {name: [n, *shape]}`` (`HyperGAN`, `EntropyHypernetwork`, ...): the N
  networks are sampled in ONE generator pass;
* a **params dict** ``{name: [N, *shape]}`` together with ``target=``;
* a **list of trained keras.Models** (deep-ensemble baseline); if they share an architecture that
  `TargetNetwork` can run, their weights are stacked and evaluated like generated networks;
* `MCDropout(model)` — N stochastic forward passes of one model with dropout active (MC dropout);
* a single keras.Model (an "ensemble" of one).

`predict` evaluates all networks on an array or a `tf.data.Dataset` in one vectorised computation,
chunked over networks (`chunk_size`) and examples (`batch_size`) so that memory stays bounded for
N = 1,000, with a progress bar. Per chunk the reductions (sums of probabilities, logits, votes,
entropies) happen inside the compiled graph; only [B, C]-sized results leave it.

Example:

```python
from hyperkeras import ensembles, metrics

pred = ensembles.predict(hypergan, x_test, n=100, seed=1, batch_size=500)
pred.mean_probs            # [B, C]  mean of the networks' softmax probabilities
pred.fused_logits          # [B, C]  mean of the networks' logits (logit fusion); .fused_probs
pred.majority_vote         # [B]     most frequent per-network class (ties -> lowest class)
pred.member_predictions    # [N, B]  each network's class
pred.member_probs          # [N, B, C] each network's probabilities (kept when small; see keep_member_probs)
pred.predictive_entropy    # [B]     entropy of mean_probs (OOD / adversarial score)
metrics.accuracy(pred.mean_probs, y_test)

deep = ensembles.predict([model_a, model_b, model_c], x_test)            # deep ensemble
mc = ensembles.predict(ensembles.MCDropout(dropout_model), x_test, n=50)  # MC dropout
reg = ensembles.predict_regression(hypergan, x_grid, n=1000)             # reg.mean, reg.std

prob_fn = ensembles.probability_fn(hypergan, n=10, seed=3)   # differentiable x -> mean probs [B, C]
```

Sources that output probabilities (last layer softmax) are detected (``output="auto"``); their
log-probabilities stand in for logits in logit fusion (this gives the same fused probabilities).
"""

from __future__ import annotations

import dataclasses
import math
import weakref

import keras
import numpy as np
import tensorflow as tf

from hyperkeras.targets import TargetNetwork
from hyperkeras.targets.specs import output_activation

__all__ = [
    "EnsemblePrediction",
    "RegressionPrediction",
    "Members",
    "TargetMembers",
    "ModelMembers",
    "MCDropout",
    "as_members",
    "stack_params",
    "stack_state",
    "predict",
    "predict_regression",
    "probability_fn",
    "log_mean_probs",
]

# Activation memory budget (bytes) used to choose the default chunk size.
_DEFAULT_MEMORY_BUDGET = 128 * 2**20
# member_probs is kept by default up to this many floats (256 MB).
_KEEP_PROBS_LIMIT = 64 * 2**20


# ---------------------------------------------------------------------- results
@dataclasses.dataclass
class EnsemblePrediction:
    """Predictions of N networks on B examples with C classes (NumPy arrays).

    Attributes:
        num_networks: N.
        mean_probs: ``[B, C]`` mean over networks of the softmax probabilities.
        fused_logits: ``[B, C]`` mean over networks of the logits (logit fusion).
        vote_counts: ``[B, C]`` number of networks predicting each class.
        member_predictions: ``[N, B]`` int32, each network's predicted class.
        member_probs: ``[N, B, C]`` float32 probabilities of each network, or None when not kept.
        expected_entropy: ``[B]`` mean over networks of each network's predictive entropy.
        labels: ``[B]`` labels found in the dataset (``(x, y)`` elements), else None.
    """

    num_networks: int
    mean_probs: np.ndarray
    fused_logits: np.ndarray
    vote_counts: np.ndarray
    member_predictions: np.ndarray
    member_probs: np.ndarray | None
    expected_entropy: np.ndarray
    labels: np.ndarray | None = None

    @property
    def fused_probs(self) -> np.ndarray:
        """``[B, C]`` softmax of the fused (mean) logits."""
        z = self.fused_logits - self.fused_logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    @property
    def mean_prediction(self) -> np.ndarray:
        """``[B]`` argmax of `mean_probs`."""
        return self.mean_probs.argmax(axis=1)

    @property
    def fused_prediction(self) -> np.ndarray:
        """``[B]`` argmax of `fused_logits`."""
        return self.fused_logits.argmax(axis=1)

    @property
    def majority_vote(self) -> np.ndarray:
        """``[B]`` most frequent per-network class (ties go to the lowest class index)."""
        return self.vote_counts.argmax(axis=1)

    @property
    def predictive_entropy(self) -> np.ndarray:
        """``[B]`` entropy (nats) of `mean_probs`: total predictive uncertainty."""
        p = self.mean_probs
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)

    @property
    def mutual_information(self) -> np.ndarray:
        """``[B]`` predictive entropy minus expected entropy (disagreement between networks)."""
        return np.maximum(self.predictive_entropy - self.expected_entropy, 0.0)

    @property
    def agreement(self) -> np.ndarray:
        """``[B]`` fraction of networks voting for the majority class."""
        return self.vote_counts.max(axis=1) / float(self.num_networks)

    def member_accuracy(self, labels) -> np.ndarray:
        """``[N]`` accuracy of each network."""
        labels = np.asarray(labels)
        return np.mean(self.member_predictions == labels[None, :], axis=1)


@dataclasses.dataclass
class RegressionPrediction:
    """Outputs of N regression networks on B examples (NumPy arrays).

    Attributes:
        num_networks: N.
        mean: ``[B, *output_shape]`` mean over networks.
        std: ``[B, *output_shape]`` standard deviation over networks (population, ddof = 0).
        member_outputs: ``[N, B, *output_shape]`` or None when not kept.
    """

    num_networks: int
    mean: np.ndarray
    std: np.ndarray
    member_outputs: np.ndarray | None
    labels: np.ndarray | None = None


# ---------------------------------------------------------------------- sources of networks
def _output_kind(model) -> str:
    """"probs" if the model's output comes out of a softmax, else "logits" (see
    `hyperkeras.targets.specs.output_activation`)."""
    return "probs" if output_activation(model) == "softmax" else "logits"


def _check_output(output):
    if output not in ("auto", "logits", "probs"):
        raise ValueError(f"output must be 'auto', 'logits' or 'probs', got {output!r}.")


class Members:
    """A fixed set of N networks that can be run on a batch. Subclasses implement `outputs`.

    Attributes:
        num_networks: N.
        output: ``"logits"`` or ``"probs"`` (what `outputs` returns for classifiers).
        input_shape: shape of one example.
    """

    num_networks: int
    output: str
    input_shape: tuple

    def outputs(self, x, start: int = 0, stop: int | None = None) -> tf.Tensor:
        """Raw outputs of networks ``start:stop`` on batch `x`: ``[stop - start, B, *output_shape]``.

        Differentiable with respect to `x` (used by `hyperkeras.attacks`)."""
        raise NotImplementedError

    def log_probs(self, x, start: int = 0, stop: int | None = None) -> tf.Tensor:
        """Per-network log-probabilities ``[stop - start, B, C]`` (differentiable)."""
        return _log_probs(self.outputs(x, start, stop), self.output)

    def _chunk_fn(self, chunk_size: int, reducer):
        """A callable ``(start, valid, x) -> reducer(outputs, mask)`` for chunks of `chunk_size`."""

        def run(start, valid, x):
            out = self.outputs(x, start, start + valid)
            mask = tf.ones([valid], out.dtype)
            return reducer(out, mask)

        return run


class TargetMembers(Members):
    """N networks given as a params dict ``{name: [N, *shape]}`` for a `TargetNetwork`.

    Args:
        target: the `hyperkeras.TargetNetwork`.
        params: ``{name: [N, *shape]}`` tensors or arrays.
        output: ``"auto"`` (softmax-ended targets give ``"probs"``), ``"logits"`` or ``"probs"``.
        state: optional per-network non-trainable state ``{name: [N, *shape]}`` (BatchNorm moving
            statistics, see `TargetNetwork.state_specs`); default: the target model's own, shared.
    """

    def __init__(self, target: TargetNetwork, params: dict, output: str = "auto", state: dict | None = None):
        if not isinstance(target, TargetNetwork):
            raise TypeError(f"target must be a hyperkeras.TargetNetwork, got {type(target).__name__}.")
        _check_output(output)
        params = {k: tf.convert_to_tensor(v) for k, v in params.items()} if isinstance(params, dict) else params
        k = target._check_params(params)
        if k is None:
            raise ValueError("params must have a static number of networks (first axis).")
        self.target = target
        self.params = params
        self.num_networks = int(k)
        self.output = _output_kind(target.model) if output == "auto" else output
        self.input_shape = tuple(target.input_shape)
        self.state = None if state is None else target._check_state(state, self.num_networks)

    def outputs(self, x, start=0, stop=None):
        stop = self.num_networks if stop is None else stop
        p = {k: v[start:stop] for k, v in self.params.items()}
        st = None if self.state is None else {k: v[start:stop] for k, v in self.state.items()}
        return self.target.apply(p, x, state=st)

    def _chunk_fn(self, chunk_size, reducer):
        cache = _FN_CACHE.setdefault(self.target, {})
        dtype = self.params[self.target.param_specs[0].name].dtype
        with_state = self.state is not None
        key = (chunk_size, reducer, dtype, with_state)
        fn = cache.get(key)
        in_dtype = tf.as_dtype(self.target.input_dtype)
        if not in_dtype.is_integer:
            in_dtype = tf.float32
        if fn is None:
            target = self.target
            signature = [
                {s.name: tf.TensorSpec([chunk_size, *s.shape], dtype) for s in target.param_specs},
                tf.TensorSpec([chunk_size], dtype),
                tf.TensorSpec([None, *target.input_shape], in_dtype),
                {s.name: tf.TensorSpec([chunk_size, *s.shape], s.dtype) for s in target.state_specs} if with_state else None,
            ]
            if not with_state:
                signature = signature[:3]

            @tf.function(input_signature=signature)
            def fn(params, mask, x, state=None):
                return reducer(target.apply(params, x, state=state), mask)

            cache[key] = fn
        n = self.num_networks

        def take(tensors, idx, valid, start):
            if valid == chunk_size:
                return {k: v[start : start + chunk_size] for k, v in tensors.items()}
            return {k: tf.gather(v, np.minimum(idx, n - 1)) for k, v in tensors.items()}

        def run(start, valid, x):
            idx = np.arange(start, start + chunk_size)
            idx[valid:] = start  # pad the last chunk with copies of its first network (masked out)
            mask = tf.constant((np.arange(chunk_size) < valid).astype(dtype.as_numpy_dtype))
            args = [take(self.params, idx, valid, start), mask, tf.cast(x, in_dtype)]
            if with_state:
                args.append(take(self.state, idx, valid, start))
            return fn(*args)

        return run


_FN_CACHE: "weakref.WeakKeyDictionary[TargetNetwork, dict]" = weakref.WeakKeyDictionary()


class ModelMembers(Members):
    """A list of keras.Models evaluated one after another (fallback for architectures `TargetNetwork`
    cannot run, or models with different architectures). Prefer `as_members`, which stacks models of
    one supported architecture into a faster `TargetMembers`."""

    def __init__(self, models, output: str = "auto"):
        models = list(models)
        if not models or not all(isinstance(m, keras.Model) for m in models):
            raise TypeError("ModelMembers expects a non-empty list of keras.Models.")
        _check_output(output)
        self.models = models
        self.num_networks = len(models)
        kinds = {_output_kind(m) for m in models} if output == "auto" else {output}
        if len(kinds) != 1:
            raise ValueError("the models disagree on their output (some end in softmax, some in logits).")
        self.output = kinds.pop()
        self.input_shape = tuple(models[0].inputs[0].shape[1:]) if models[0].inputs else None

    def outputs(self, x, start=0, stop=None):
        stop = self.num_networks if stop is None else stop
        return tf.stack([m(x, training=False) for m in self.models[start:stop]], axis=0)


class MCDropout(Members):
    """MC dropout: `num_samples` stochastic forward passes of one keras.Model with dropout active
    (``model(x, training=True)``). The model must contain Dropout layers; avoid models with
    BatchNormalization (training mode would use and update batch statistics).

    Args:
        model: a keras.Model with Dropout layers (e.g. ``targets.build_model(name, dropout=0.5)`` or
            `hyperkeras.baselines.with_dropout`).
        num_samples: default number of passes when `predict` gets no ``n``.
        output: ``"auto"``, ``"logits"`` or ``"probs"``.
    """

    def __init__(self, model, num_samples: int | None = None, output: str = "auto"):
        if not isinstance(model, keras.Model):
            raise TypeError(f"MCDropout expects a keras.Model, got {type(model).__name__}.")
        if not any(type(l).__name__.endswith("Dropout") for l in _all_layers(model)):
            raise ValueError(
                f"MCDropout: model {model.name!r} has no Dropout layer, so its passes would all be identical; "
                "build it with dropout (e.g. hyperkeras.baselines.with_dropout)."
            )
        _check_output(output)
        self.model = model
        self.num_networks = int(num_samples) if num_samples else 0
        self.output = _output_kind(model) if output == "auto" else output
        self.input_shape = tuple(model.inputs[0].shape[1:]) if model.inputs else None
        self._fns = {}

    def with_samples(self, n: int) -> "MCDropout":
        other = MCDropout.__new__(MCDropout)
        other.__dict__.update(self.__dict__)
        other.num_networks = int(n)
        return other

    def outputs(self, x, start=0, stop=None):
        stop = self.num_networks if stop is None else stop
        return tf.stack([self.model(x, training=True) for _ in range(stop - start)], axis=0)

    def _chunk_fn(self, chunk_size, reducer):
        key = (chunk_size, reducer)
        if key not in self._fns:
            model = self.model

            @tf.function(reduce_retracing=True)
            def fn(mask, x):
                out = tf.stack([model(x, training=True) for _ in range(chunk_size)], axis=0)
                return reducer(out, mask)

            self._fns[key] = fn
        fn = self._fns[key]

        def run(start, valid, x):
            mask = tf.constant((np.arange(chunk_size) < valid).astype(np.float32))
            return fn(mask, tf.cast(x, tf.float32))

        return run


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def stack_params(models, target: TargetNetwork | None = None) -> dict:
    """Stacks the weights of keras.Models of one architecture into a params dict ``{name: [N, *shape]}``.

    Args:
        models: list of keras.Models with the same layer names and weight shapes.
        target: their `TargetNetwork` (default: built from ``models[0]``).
    """
    models = list(models)
    if not models or not all(isinstance(m, keras.Model) for m in models):
        raise TypeError("stack_params expects a non-empty list of keras.Models.")
    target = target or TargetNetwork(models[0])
    per_model = []
    for i, m in enumerate(models):
        try:
            p = target.get_params(m)
        except ValueError as e:
            raise ValueError(f"stack_params: model {i} ({m.name!r}) lacks a layer of the target: {e}") from None
        for spec in target.param_specs:
            if tuple(p[spec.name].shape[1:]) != spec.shape:
                raise ValueError(
                    f"stack_params: model {i} ({m.name!r}) has {spec.name} of shape {tuple(p[spec.name].shape[1:])}, "
                    f"expected {spec.shape}."
                )
        per_model.append(p)
    return {s.name: tf.concat([p[s.name] for p in per_model], axis=0) for s in target.param_specs}


def stack_state(models, target: TargetNetwork) -> dict | None:
    """The non-trainable state (BatchNorm moving statistics) of keras.Models of one architecture as
    ``{name: [N, *shape]}``, or None when the target has none."""
    if not target.state_specs:
        return None
    per_model = []
    for m in models:
        variables = [v for v in m.non_trainable_variables if v.name != "seed_generator_state"]
        if len(variables) != len(target.state_specs):
            raise ValueError(f"model {m.name!r} has {len(variables)} state variables; the target has {len(target.state_specs)}.")
        per_model.append(variables)
    return {s.name: tf.stack([tf.convert_to_tensor(vs[i]) for vs in per_model], axis=0)
            for i, s in enumerate(target.state_specs)}


def _is_generator(source) -> bool:
    return hasattr(source, "sample") and isinstance(getattr(source, "target", None), TargetNetwork)


def as_members(source, n: int | None = None, seed: int | None = None, target: TargetNetwork | None = None,
               output: str = "auto") -> Members:
    """Turns any supported source of networks into `Members` (see the module docstring).

    Args:
        source: generator (``.target`` + ``.sample(n, seed)``), params dict (with `target`), list of
            keras.Models, a keras.Model, `MCDropout`, or `Members`.
        n: number of networks: required for generators and `MCDropout` without ``num_samples``;
            for params dicts and model lists, the first `n` are used (default: all).
        seed: sampling seed for generators (default: a random one).
        target: the `TargetNetwork` of a params dict.
        output: ``"auto"``, ``"logits"`` or ``"probs"``.
    """
    _check_output(output)
    if n is not None and (int(n) != n or n < 1):
        raise ValueError(f"n must be a positive integer number of networks, got {n!r}.")
    if isinstance(source, MCDropout):
        k = n or source.num_networks
        if not k:
            raise ValueError("MC dropout needs a number of passes: give n=... or MCDropout(model, num_samples=...).")
        return source.with_samples(k)
    if isinstance(source, Members):
        if n is not None and n != source.num_networks:
            raise ValueError(f"n={n} but the Members hold {source.num_networks} networks.")
        return source
    if _is_generator(source):
        if n is None:
            raise ValueError("n (the number of networks to sample) is required for a generator source.")
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        params = source.sample(int(n), seed=int(seed))
        if not isinstance(params, dict):
            raise TypeError(f"{type(source).__name__}.sample(n, seed) must return a params dict, got {type(params).__name__}.")
        return TargetMembers(source.target, params, output)
    if isinstance(source, dict):
        if target is None:
            raise ValueError("a params dict source needs target= (the TargetNetwork the params belong to).")
        members = TargetMembers(target, source, output)
        if n is not None:
            if n > members.num_networks:
                raise ValueError(f"n={n} but the params hold only {members.num_networks} networks.")
            members = TargetMembers(target, {k: v[:n] for k, v in members.params.items()}, output)
        return members
    if isinstance(source, keras.Model):
        source = [source]
    if isinstance(source, (list, tuple)):
        models = list(source)
        if not models or not all(isinstance(m, keras.Model) for m in models):
            raise TypeError("a list source must be a non-empty list of keras.Models.")
        if n is not None:
            if n > len(models):
                raise ValueError(f"n={n} but only {len(models)} models were given.")
            models = models[:n]
        try:
            tgt = target if target is not None else TargetNetwork(models[0])
            kind = _output_kind(models[0]) if output == "auto" else output
            return TargetMembers(tgt, stack_params(models, tgt), kind, state=stack_state(models, tgt))
        except (ValueError, TypeError):
            return ModelMembers(models, output)
    raise TypeError(
        "source must be a generator (with .target and .sample(n, seed)), a params dict with target=, a list "
        f"of keras.Models, a keras.Model or an MCDropout; got {type(source).__name__}."
    )


# ---------------------------------------------------------------------- in-graph reductions
def _log_probs(out, output):
    if output == "logits":
        return tf.nn.log_softmax(out, axis=-1)
    return tf.math.log(tf.maximum(out, tf.cast(1e-30, out.dtype)))


def _make_classification_reducer(output: str, keep_probs: bool):
    def reduce(out, mask):
        if out.shape.rank != 3:
            raise ValueError(
                f"ensembles.predict expects class scores [B, C] per network, got outputs of shape {out.shape[1:]}; "
                "use predict_regression for other outputs."
            )
        logp = _log_probs(out, output)
        logits = out if output == "logits" else logp
        probs = tf.exp(logp)
        m = tf.cast(mask, out.dtype)
        m3 = m[:, None, None]
        pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
        num_classes = out.shape[-1]
        ent = -tf.reduce_sum(probs * logp, axis=-1)
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
        if len(shape) != len(expect) + 1 or any(
            e is not None and d != e for d, e in zip(shape[1:], expect)
        ):
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


def predict(source, x, n: int | None = None, seed: int | None = None, *, target: TargetNetwork | None = None,
            batch_size: int = 128, chunk_size: int | None = None, keep_member_probs: bool | None = None,
            output: str = "auto", verbose: int = 1) -> EnsemblePrediction:
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

    Returns:
        `EnsemblePrediction`.
    """
    members = as_members(source, n=n, seed=seed, target=target, output=output)
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


def predict_regression(source, x, n: int | None = None, seed: int | None = None, *,
                       target: TargetNetwork | None = None, batch_size: int = 128, chunk_size: int | None = None,
                       keep_member_outputs: bool | None = None, verbose: int = 1) -> RegressionPrediction:
    """Evaluates an ensemble of N regression networks: mean and standard deviation over networks.

    Arguments as in `predict`; ``keep_member_outputs`` (default: when N·B·outputs ≤ 64 M floats) keeps
    every network's outputs.
    """
    members = as_members(source, n=n, seed=seed, target=target, output="logits")
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


def probability_fn(source, n: int | None = None, seed: int | None = None, *, target: TargetNetwork | None = None,
                   output: str = "auto"):
    """A differentiable function ``x -> mean_k softmax_k(x)`` ``[B, C]`` of a fixed ensemble.

    The networks are drawn once (for generators, with `seed`) and reused on every call, so gradients
    with respect to ``x`` (attacks) see one fixed ensemble. The returned function has a ``members``
    attribute (`Members`).
    """
    members = as_members(source, n=n, seed=seed, target=target, output=output)

    def fn(x):
        return tf.exp(log_mean_probs(members, x))

    fn.members = members
    return fn

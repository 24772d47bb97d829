"""Sources of N networks, one interface (`Members`): generated params, generators, lists of trained
Keras models (stacked into one `TargetNetwork` computation where they share an architecture), MC dropout."""

from __future__ import annotations

import functools
import warnings

import keras
import numpy as np
import tensorflow as tf

from hyperkeras import probabilities
from hyperkeras.targets import TargetNetwork
from hyperkeras.targets.specs import output_activation, state_variables

__all__ = [
    "Members",
    "TargetMembers",
    "ModelMembers",
    "MCDropout",
    "as_members",
    "stack_params",
    "stack_state",
    "architecture",
    "output_kind",
    "task_of",
    "log_probs",
    "has_batchnorm_statistics",
    "batchnorm_state_error",
    "resolve_state",
]


def output_kind(model) -> str:
    """ "probs" if the model's output comes out of a softmax, else "logits" (see
    `hyperkeras.targets.specs.output_activation` and `hyperkeras.probabilities.kind_of`)."""
    return probabilities.kind_of(output_activation(model))


TASKS = ("classification", "regression")


def task_of(source, task: str | None = None) -> str:
    """What the networks of `source` solve, ``"classification"`` or ``"regression"``: `task` when given,
    else the source's own ``.task`` (a `hyperkeras.models.Hypernetwork`'s), else ``"classification"``.

    Raises:
        ValueError: an unknown task, or a `task` that contradicts the source's ``.task``.
    """
    own = getattr(source, "task", None)
    if own is not None and own not in TASKS:
        own = None  # not a task in this sense
    if task is None:
        return own or "classification"
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or None, got {task!r}.")
    if own is not None and task != own:
        raise ValueError(f"task={task!r} but the {type(source).__name__} was trained for task={own!r}.")
    return task


def _check_output(output):
    if output not in ("auto", *probabilities.KINDS):
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
        return log_probs(self.outputs(x, start, stop), self.output)

    def _chunk_fn(self, chunk_size: int, reducer):
        """A callable ``(start, valid, x) -> reducer(outputs, mask)`` for chunks of `chunk_size`."""

        def run(start, valid, x):
            out = self.outputs(x, start, start + valid)
            mask = tf.ones([valid], out.dtype)
            return reducer(out, mask)

        return run


def has_batchnorm_statistics(target: TargetNetwork) -> bool:
    """True if the target has BatchNormalization moving statistics that training updates
    (`TargetNetwork.batch_statistics`): every generated network then needs statistics of its own to run in
    inference mode."""
    return bool(target.batch_statistics)


def batchnorm_state_error(target: TargetNetwork, where: str) -> ValueError:
    """The refusal when networks of a BatchNorm target are to be run without saying whose statistics."""
    layers = sorted({s.layer for s in target.batch_statistics})
    return ValueError(
        f"{where}: the target {target.model.name!r} has BatchNormalization layers ({', '.join(layers)}) whose "
        "moving statistics belong to the wrapped model, not to the generated networks. Pass state= with each "
        "network's own statistics (state=target.calibrate_state(params, training_images)), or calibration_data="
        "training_images (ensembles.predict, as_members, export_ensemble) to calibrate them there, or "
        "state='shared' to run every network on the wrapped model's statistics."
    )


def resolve_state(target: TargetNetwork, params, state=None, calibration_data=None, where: str = "state"):
    """The state to run the networks `params` of `target` with: a per-network dict ``{name: [N, *shape]}``
    (`state` itself, or ``target.calibrate_state(params, calibration_data)``), or None for the wrapped
    model's own (``state="shared"``, or a target without BatchNorm moving statistics).

    Raises:
        ValueError: a BatchNorm target with neither `state` nor `calibration_data` (`batchnorm_state_error`,
            prefixed with `where`), both given, or a `state` string other than ``"shared"``.
    """
    if state is not None and calibration_data is not None:
        raise ValueError(f"{where}: give state= or calibration_data=, not both.")
    if calibration_data is not None:
        return target.calibrate_state(params, calibration_data)
    if isinstance(state, str):
        if state != "shared":
            raise ValueError(f"{where}: state must be a dict {{name: [N, *shape]}}, 'shared' or None, got {state!r}.")
        return None
    if state is None and has_batchnorm_statistics(target):
        raise batchnorm_state_error(target, where)
    return state


class TargetMembers(Members):
    """N networks given as a params dict ``{name: [N, *shape]}`` for a `TargetNetwork`.

    Args:
        target: the `hyperkeras.TargetNetwork`.
        params: ``{name: [N, *shape]}`` tensors or arrays.
        output: ``"auto"`` (softmax-ended targets give ``"probs"``), ``"logits"`` or ``"probs"``.
        state: the networks' non-trainable state: a per-network dict ``{name: [N, *shape]}`` (BatchNorm
            moving statistics, see `TargetNetwork.state_specs`; e.g. from `TargetNetwork.calibrate_state`),
            or ``"shared"`` for the target model's own. Default None: the target model's own, except for a
            target with BatchNorm moving statistics, which needs one of the two.

    Raises:
        ValueError: params or state that do not match the target, or a BatchNorm target without `state`.
    """

    def __init__(self, target: TargetNetwork, params: dict, output: str = "auto", state: dict | str | None = None):
        if not isinstance(target, TargetNetwork):
            raise TypeError(f"target must be a hyperkeras.TargetNetwork, got {type(target).__name__}.")
        _check_output(output)
        params = {k: tf.convert_to_tensor(v) for k, v in params.items()} if isinstance(params, dict) else params
        k = target.check_params(params)
        if k is None:
            raise ValueError("params must have a static number of networks (first axis).")
        self.target = target
        self.params = params
        self.num_networks = int(k)
        self.output = output_kind(target.model) if output == "auto" else output
        self.input_shape = tuple(target.input_shape)
        state = resolve_state(target, params, state, None, "TargetMembers")
        self.state = None if state is None else target.check_state(state, self.num_networks)

    def outputs(self, x, start=0, stop=None):
        stop = self.num_networks if stop is None else stop
        p = {k: v[start:stop] for k, v in self.params.items()}
        st = None if self.state is None else {k: v[start:stop] for k, v in self.state.items()}
        return self.target.apply(p, x, state=st)

    def _chunk_fn(self, chunk_size, reducer):
        # One traced function per (target, chunk size, reducer, dtype), kept on the target and reused by
        # every TargetMembers of it; its input signature takes any batch size, so it is traced once.
        cache = _cache_of(self.target).setdefault("chunk_fns", {})
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
                {s.name: tf.TensorSpec([chunk_size, *s.shape], s.dtype) for s in target.state_specs}
                if with_state
                else None,
            ]
            if not with_state:
                signature = signature[:3]
            fn = cache[key] = _traced(_target_chunk, target, reducer, input_signature=signature)
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


def _traced(fn, *bound, input_signature=None):
    """``tf.function`` of `fn` with its first arguments `bound` (a target, a reducer, ...), for a function
    cached per target (or model) and per static shape, and traced once.

    Made from a ``functools.partial`` of a module-level function, not from a closure: TensorFlow's
    frequent-retracing detector keys its records by the traced function's code object, so the closures of
    one ``def`` (one function per target, chunk size and reducer, each traced once by design) would count as
    retraces of a single function and trigger its "triggered tf.function retracing" warning. A partial
    has no code object, so each function keeps its own record, and a function that really retraces still
    warns. Without `input_signature`: ``reduce_retracing=True``."""
    return tf.function(
        functools.partial(fn, *bound), input_signature=input_signature, reduce_retracing=input_signature is None
    )


def _target_chunk(target, reducer, params, mask, x, state=None):
    return reducer(target.apply(params, x, state=state), mask)


def _mc_dropout_chunk(model, chunk_size, reducer, mask, x):
    out = tf.stack([model(x, training=True) for _ in range(chunk_size)], axis=0)
    return reducer(out, mask)


def _cache_of(obj) -> dict:
    """A dict kept on `obj` (a `TargetNetwork` or a keras.Model) for the traced functions and targets
    made for it. Kept on the object, not in a module-level weak dict: the cached functions refer to
    `obj`, so such a dict's entries would never be freed. Set with ``object.__setattr__`` so that Keras
    does not track the dict (it holds no variables or layers of the model)."""
    cache = obj.__dict__.get("_hyperkeras_cache")
    if cache is None:
        cache = {}
        object.__setattr__(obj, "_hyperkeras_cache", cache)
    return cache


def _target_of(model) -> TargetNetwork:
    """The `TargetNetwork` of keras.Model `model`, made once and reused while the model's variables stay
    the same ones (a layer made (non-)trainable since changes them), so that the functions traced for it
    (`predict`'s chunks, the attacks' gradients) are traced once, not on every call with a list of models."""
    cache = _cache_of(model)
    key = (tuple(id(v) for v in model.trainable_variables), tuple(id(v) for v in model.non_trainable_variables))
    kept = cache.get("target")
    if kept is None or kept[0] != key:
        kept = cache["target"] = (key, TargetNetwork(model))
    return kept[1]


class ModelMembers(Members):
    """A list of keras.Models evaluated one after another, each its own forward pass (for models of
    different architectures, subclassed models, or architectures `TargetNetwork` cannot run). Prefer
    `as_members`, which stacks models of one architecture (see `architecture`) into a faster
    `TargetMembers` and falls back to this class otherwise."""

    def __init__(self, models, output: str = "auto"):
        models = list(models)
        if not models or not all(isinstance(m, keras.Model) for m in models):
            raise TypeError("ModelMembers expects a non-empty list of keras.Models.")
        _check_output(output)
        self.models = models
        self.num_networks = len(models)
        kinds = {output_kind(m) for m in models} if output == "auto" else {output}
        if len(kinds) != 1:
            raise ValueError("the models disagree on their output (some end in softmax, some in logits).")
        self.output = kinds.pop()
        try:
            inputs = models[0].inputs
        except (AttributeError, ValueError):  # a subclassed model has no symbolic inputs
            inputs = None
        self.input_shape = tuple(inputs[0].shape[1:]) if inputs else None

    def outputs(self, x, start=0, stop=None):
        stop = self.num_networks if stop is None else stop
        return tf.stack([m(x, training=False) for m in self.models[start:stop]], axis=0)


class MCDropout(Members):
    """MC dropout: `num_networks` stochastic forward passes of one keras.Model with dropout active
    (``model(x, training=True)``), each pass one network of the ensemble. The model must contain Dropout
    layers; avoid models with BatchNormalization (training mode would use and update batch statistics).

    Args:
        model: a keras.Model with Dropout layers (e.g. ``targets.build_model(name, dropout=0.5)`` or
            `hyperkeras.baselines.with_dropout`).
        num_networks: default number of passes when `predict` gets no ``n`` (``num_samples`` is its
            deprecated name: K is ``num_networks`` everywhere).
        output: ``"auto"``, ``"logits"`` or ``"probs"``.
    """

    def __init__(self, model, num_networks: int | None = None, output: str = "auto", num_samples: int | None = None):
        if num_samples is not None:
            warnings.warn(
                "MCDropout(num_samples=...) is deprecated: use num_networks=.", DeprecationWarning, stacklevel=2
            )
            num_networks = num_samples
        if not isinstance(model, keras.Model):
            raise TypeError(f"MCDropout expects a keras.Model, got {type(model).__name__}.")
        if not any(type(l).__name__.endswith("Dropout") for l in _all_layers(model)):
            raise ValueError(
                f"MCDropout: model {model.name!r} has no Dropout layer, so its passes would all be identical; "
                "build it with dropout (e.g. hyperkeras.baselines.with_dropout)."
            )
        _check_output(output)
        self.model = model
        self.num_networks = int(num_networks) if num_networks else 0
        self.output = output_kind(model) if output == "auto" else output
        self.input_shape = tuple(model.inputs[0].shape[1:]) if model.inputs else None

    def with_samples(self, n: int) -> MCDropout:
        other = MCDropout.__new__(MCDropout)
        other.__dict__.update(self.__dict__)
        other.num_networks = int(n)
        return other

    def outputs(self, x, start=0, stop=None):
        stop = self.num_networks if stop is None else stop
        return tf.stack([self.model(x, training=True) for _ in range(stop - start)], axis=0)

    def _chunk_fn(self, chunk_size, reducer):
        # Kept on the model: every MCDropout of it (one per call of an attack or a predict) reuses the
        # functions traced for it. With the model's input shape known, any batch size takes one trace.
        fns = _cache_of(self.model).setdefault("mc_dropout_fns", {})
        key = (chunk_size, reducer)
        if key not in fns:
            model = self.model
            signature = (
                None
                if self.input_shape is None
                else [tf.TensorSpec([chunk_size], tf.float32), tf.TensorSpec([None, *self.input_shape], tf.float32)]
            )

            fns[key] = _traced(_mc_dropout_chunk, model, chunk_size, reducer, input_signature=signature)
        fn = fns[key]

        def run(start, valid, x):
            mask = tf.constant((np.arange(chunk_size) < valid).astype(np.float32))
            return fn(mask, tf.cast(x, tf.float32))

        return run


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _is_graph_model(model) -> bool:
    """A Sequential or functional model: one whose forward pass is fully described by its config."""
    cls = type(model)
    return cls is keras.Sequential or (cls.__name__ == "Functional" and cls.__module__.startswith("keras."))


# Config entries that do not change what a model computes from given weights in inference: how weights are
# initialised, regularised or constrained in training, and the seeds of random layers (inactive in
# inference; `TargetNetwork` draws its own masks in training mode).
_TRAINING_ONLY_KEYS = ("_initializer", "_regularizer", "_constraint")


def architecture(model):
    """The function a keras.Model computes from its weights, as a comparable value: its serialised config
    with layer and model names replaced by the layers' positions, and initialisers, regularisers,
    constraints and seeds left out. Two models with equal architectures compute the same outputs from
    the same weights and state. None when that cannot be established from the config: subclassed models
    (their ``call`` is Python code the config need not describe) and layers whose config cannot be read.
    """
    if not _is_graph_model(model):
        return None
    try:
        config = model.get_config()
    except Exception:  # noqa: BLE001 -- a layer without get_config: nothing to compare
        return None
    names = {}  # layer name -> position, in the order of the config's layer lists (nested models included)

    def collect(cfg):
        for entry in cfg.get("layers", []) if isinstance(cfg, dict) else []:
            inner = entry.get("config", {}) if isinstance(entry, dict) else {}
            if isinstance(inner.get("name"), str):
                names.setdefault(inner["name"], ("layer", len(names)))
            collect(inner)

    collect(config)
    names.setdefault(config.get("name"), ("model",))

    def rename(obj):  # every layer name inside an input_layers / output_layers / keras_history entry
        if isinstance(obj, str):
            return names.get(obj, obj)
        if isinstance(obj, (list, tuple)):
            return [rename(v) for v in obj]
        return obj

    def canon(obj):
        if isinstance(obj, dict):
            out = {}
            for key, value in obj.items():
                if key == "seed" or key.endswith(_TRAINING_ONLY_KEYS):
                    continue
                if key == "dtype":
                    out[key] = value  # a dtype policy's "name" is a dtype, not a layer
                elif key == "name" and isinstance(value, str):
                    out[key] = names.get(value, value)
                elif key in ("keras_history", "input_layers", "output_layers"):
                    out[key] = rename(value)
                else:
                    out[key] = canon(value)
            return out
        if isinstance(obj, (list, tuple)):
            return [canon(v) for v in obj]
        return obj

    return (type(model).__name__, canon(config))


def _architecture_difference(model, reference) -> str | None:
    """Why `model` may compute a different function of its weights than `reference`, or None if it
    provably computes the same (the same object, or equal `architecture`s)."""
    if model is reference:
        return None
    mine, theirs = architecture(model), architecture(reference)
    if mine is None or theirs is None:
        which = model if mine is None else reference
        return (
            f"{which.name!r} is not a Sequential or functional model with a readable config, so its "
            "architecture cannot be compared"
        )
    if mine == theirs:
        return None
    a, b = mine[1].get("layers", []), theirs[1].get("layers", [])
    for i, (la, lb) in enumerate(zip(a, b)):
        if la != lb:
            name_a, name_b = (m.get_config()["layers"][i].get("config", {}).get("name") for m in (model, reference))
            return (
                f"layer {name_a!r} ({la.get('class_name')}) and layer {name_b!r} ({lb.get('class_name')}) "
                "differ in config or connections"
            )
    if len(a) != len(b):
        return f"they have {len(a)} and {len(b)} layers"
    return "their configs differ"


def stack_params(models, target: TargetNetwork | None = None) -> dict:
    """Stacks the weights of keras.Models of one architecture into a params dict ``{name: [N, *shape]}``.

    Args:
        models: list of keras.Models of the target model's architecture: the same layers (classes,
            configs and connections; names, initialisers and seeds may differ, see `architecture`).
        target: their `TargetNetwork` (default: built from ``models[0]``).

    Raises:
        ValueError: a model's architecture differs from the target model's (it would compute a different
            function of the same weights: an activation, pooling, Dropout rate, BatchNorm epsilon, layer
            order, ...), or a weight's shape differs. Evaluate such models one by one (`ModelMembers`).
    """
    models = list(models)
    if not models or not all(isinstance(m, keras.Model) for m in models):
        raise TypeError("stack_params expects a non-empty list of keras.Models.")
    target = target or _target_of(models[0])
    per_model = []
    for i, m in enumerate(models):
        why = _architecture_difference(m, target.model)
        if why is not None:
            raise ValueError(
                f"stack_params: model {i} ({m.name!r}) may compute a different function of its weights "
                f"than the target's model {target.model.name!r}: {why}."
            )
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
        variables = state_variables(m)
        if len(variables) != len(target.state_specs):
            raise ValueError(
                f"model {m.name!r} has {len(variables)} state variables; the target has {len(target.state_specs)}."
            )
        per_model.append(variables)
    return {
        s.name: tf.stack([tf.convert_to_tensor(vs[i]) for vs in per_model], axis=0)
        for i, s in enumerate(target.state_specs)
    }


def _is_generator(source) -> bool:
    return hasattr(source, "sample") and isinstance(getattr(source, "target", None), TargetNetwork)


def _own_state(source, n, seed):
    """A Hypernetwork's kept per-network state when (n, seed) are its fixed networks': ``(params, state)``,
    ``(None, "shared")`` when it says the wrapped model's state is its networks' own, else None."""
    if not hasattr(source, "target_state") or not isinstance(getattr(source, "num_networks", None), int):
        return None
    kept = source.target_state
    if kept is None:  # the model's networks use the wrapped model's statistics (BatchNorm not trained on batches)
        return None, "shared"
    fixed = getattr(source, "seed", None)
    fixed = 0 if fixed is None else fixed
    if not isinstance(kept, dict) or n != source.num_networks or seed != fixed:
        return None
    try:
        params = source.sample(n, seed=seed, canonical=False)  # the networks target_state belongs to
    except TypeError:
        return None
    return params, kept


def as_members(
    source,
    n: int | None = None,
    seed: int | None = None,
    target: TargetNetwork | None = None,
    output: str = "auto",
    *,
    state: dict | str | None = None,
    calibration_data=None,
) -> Members:
    """Turns any supported source of networks into `Members` (see the module docstring).

    Args:
        source: generator (``.target`` + ``.sample(n, seed)``), params dict (with `target`), list of
            keras.Models, a keras.Model, `MCDropout`, or `Members`.
        n: number of networks: required for generators and `MCDropout` without ``num_networks``;
            for params dicts and model lists, the first `n` are used (default: all).
        seed: sampling seed for generators (default: a random one).
        target: the `TargetNetwork` of a params dict.
        output: ``"auto"``, ``"logits"`` or ``"probs"``.
        state: for generated networks (generators, params dicts) of a target with BatchNorm moving
            statistics: each network's own, ``{name: [N, *shape]}`` (``target.calibrate_state(params,
            data)``; for a params dict with `n`, the first `n` are used), or ``"shared"`` for the wrapped
            model's. Without it (and without `calibration_data`) such a source is refused, unless it is a
            `Hypernetwork` whose kept ``target_state`` belongs to these networks (``n == num_networks``
            and its own seed) or whose networks use the wrapped model's statistics. Targets without
            BatchNorm statistics need none. Keras models carry their own state.
        calibration_data: instead of `state`, inputs (array or dataset of batches) on which each network's
            own BatchNorm statistics are computed (`TargetNetwork.calibrate_state`).

    Raises:
        ValueError: a BatchNorm target's networks without `state` / `calibration_data` (the message says
            what to pass), `state` for a source that carries its own, or a mismatch of n, params or state.
    """
    _check_output(output)
    if n is not None and (int(n) != n or n < 1):
        raise ValueError(f"n must be a positive integer number of networks, got {n!r}.")
    generated = _is_generator(source) or isinstance(source, dict)
    if not generated and (state is not None or calibration_data is not None):
        raise ValueError(
            f"as_members: state= and calibration_data= are for generated networks (a generator or a params "
            f"dict); a {type(source).__name__} source runs with its own state."
        )
    if isinstance(source, MCDropout):
        k = n or source.num_networks
        if not k:
            raise ValueError("MC dropout needs a number of passes: give n=... or MCDropout(model, num_networks=...).")
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
        tgt, params = source.target, None
        if state is None and calibration_data is None and has_batchnorm_statistics(tgt):
            params, state = _own_state(source, int(n), int(seed)) or (None, None)
        if params is None:
            params = source.sample(int(n), seed=int(seed))
        if not isinstance(params, dict):
            raise TypeError(
                f"{type(source).__name__}.sample(n, seed) must return a params dict, got {type(params).__name__}."
            )
        state = resolve_state(
            tgt, params, state, calibration_data, f"ensembles: the {n} sampled networks of the {type(source).__name__}"
        )
        return TargetMembers(tgt, params, output, state="shared" if state is None else state)
    if isinstance(source, dict):
        if target is None:
            raise ValueError("a params dict source needs target= (the TargetNetwork the params belong to).")
        params = {k: tf.convert_to_tensor(v) for k, v in source.items()}
        k = target.check_params(params)
        if n is not None:
            if k is not None and n > k:
                raise ValueError(f"n={n} but the params hold only {k} networks.")
            params = {name: v[:n] for name, v in params.items()}
            if isinstance(state, dict):
                state = {name: tf.convert_to_tensor(v)[:n] for name, v in state.items()}
        state = resolve_state(target, params, state, calibration_data, "ensembles: the params' networks")
        return TargetMembers(target, params, output, state="shared" if state is None else state)
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
            tgt = target if target is not None else _target_of(models[0])
            kind = output_kind(models[0]) if output == "auto" else output
            return TargetMembers(tgt, stack_params(models, tgt), kind, state=stack_state(models, tgt) or "shared")
        except (ValueError, TypeError):
            return ModelMembers(models, output)
    raise TypeError(
        "source must be a generator (with .target and .sample(n, seed)), a params dict with target=, a list "
        f"of keras.Models, a keras.Model or an MCDropout; got {type(source).__name__}."
    )


# Ensembles floor probabilities at 1e-30 before their log (the training losses at float32's smallest normal,
# `probabilities.TINY`).
PROBS_FLOOR = 1e-30


def log_probs(out, output):
    """Per-network log-probabilities of outputs of kind `output` (``"logits"`` or ``"probs"``):
    `hyperkeras.probabilities.as_log_probs`, probabilities floored at `PROBS_FLOOR`."""
    return probabilities.as_log_probs(out, output, floor=PROBS_FLOOR)

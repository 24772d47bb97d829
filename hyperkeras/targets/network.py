"""`TargetNetwork`: an ordinary Keras model run with externally supplied weights, for K samples at once.

The params structure is a dict ``{"<layer name>/<weight>": [K, *shape]}`` with one entry per trainable
variable of the model (`param_specs`). Generators produce it, objectives consume it; neither needs to
know about the other.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from hyperkeras import probabilities
from hyperkeras.targets.fast import ChainPlan
from hyperkeras.targets.reference import Reference
from hyperkeras.targets.specs import (
    LayerSpec,
    Params,
    ParamSpec,
    StateSpec,
    layer_specs,
    output_activation,
    param_and_state_specs,
    state_variables,
)

__all__ = ["TargetNetwork", "ParamSpec", "LayerSpec", "StateSpec"]


class TargetNetwork:
    """A Keras model run with externally supplied weights, for K weight samples at once.

    Args:
        model: any built `keras.Model` with one input and one output tensor: Sequential, functional
            (branches, residual adds, concatenations, shared layers), or a subclassed model that has been
            built (then pass `input_shape`, or build it with ``model.build(shape)``). Every layer Keras
            offers works: Conv/Dense, BatchNormalization, LayerNormalization, Embedding, LSTM/GRU,
            MultiHeadAttention, Dropout, ... Its trainable variables are the generated weights.
        unroll_limit: with a statically known number of networks K ≤ `unroll_limit`, `apply` unrolls a
            per-network loop inside the graph (fastest on CPU); otherwise it maps over groups of 10
            networks with `tf.map_fn`, whose activation memory during backprop is that of all K networks.
        input_shape: shape of one example, for subclassed models without ``model.inputs``.
        fast_path: where `apply` takes the chain fast path (`hyperkeras.targets.fast`) instead of the
            reference path; only ever where the plan's preconditions hold (a chain of Conv2D/Dense and
            allow-listed weightless layers, no layer losses, no mixed precision), with the same result.
            ``"auto"`` (default): the plan without active dropout, running the layers in the model's own
            order (the same ops as Keras), with convolution gradients as forward convolutions where the
            CPU runs them faster (`hyperkeras.convolution.forward_form_pays`; on an AVX2 machine a Deutsch
            training step measured about 1.3x faster than the reference path), and trailing Dense layers
            on per-network matrices as one batched matmul for all K networks. True: the plan wherever it applies, dropout included
            (masks drawn per network by the plan), and for a shared batch its wide first layer and the
            other optimisations of `hyperkeras.targets.fast`, which measured slower than the reference on
            a 2-core CPU (docs/results/targets.md). False: always the reference path.

    Attributes:
        param_specs: one `ParamSpec` per trainable variable, in ``model.trainable_variables`` order.
        num_params: total number of generated weights per network.
        layers: `LayerSpec` (filter layout) of every top-level Conv1D/2D/3D and Dense layer.
        plain_specs: the `ParamSpec`s not covered by `layers` (BatchNorm γ/β, embeddings, RNN kernels,
            attention, ...): generators produce these as plain tensors.
        state_specs: one `StateSpec` per non-trainable variable (BatchNorm moving statistics).
        output_activation: name of the last activation on the output (``"softmax"``, ``"linear"``,
            ...), read from the layer that produces it; None for subclassed models.
        output_kind: ``"probs"`` when that activation is a softmax, else ``"logits"`` (the kinds of
            `hyperkeras.probabilities`).
        has_layer_losses: True if the model has layer losses (`apply` with ``return_losses=True``).

    State and randomness: non-trainable state (BatchNormalization moving statistics) is shared from the
    wrapped model unless `apply` gets a per-network ``state`` (see `initial_state`, `calibrate_state`);
    ``training=True`` makes every network use its own batch statistics (a frozen BatchNormalization,
    ``trainable=False``, keeps its moving statistics, as in Keras); Dropout and other random layers
    draw an independent mask per network (reproducible with `seed`). The model's layer losses (weight
    and activity regularisers) are computed per network with ``apply(..., return_losses=True)``.

    How `apply` runs: the reference path calls ``model.stateless_call`` per network (see
    `hyperkeras.targets.reference`). Chains of Conv2D/Dense and allow-listed weightless layers take a
    fast path with the same result (`hyperkeras.targets.fast`), entered only where its preconditions
    hold and `fast_path` says.

    The rule: every model, layer, dtype policy and option this class accepts gives, for each network,
    Keras's own answer for the same weights — the output (and state, and layer losses) of the plain
    model `to_keras_model(params, k, state)` called on the same inputs — or is refused with an error
    naming the model or layer and the reason, when the TargetNetwork is built
    (tests/test_targets_generic.py checks it on random architectures).

    Example:

    ```python
    model = hyperkeras.targets.build_model("resnet20", input_shape=(28, 28, 1))
    target = hyperkeras.TargetNetwork(model)
    params = target.unflatten(tf.random.normal([4, target.num_params]) * 0.05)
    logits = target.apply(params, images)        # images [B, 28, 28, 1] -> logits [4, B, 10]
    net = target.to_keras_model(params, index=2)  # a plain keras.Model with network 2's weights
    ```
    """

    def __init__(self, model: keras.Model, unroll_limit: int = 128, input_shape=None, fast_path="auto"):
        if not isinstance(model, keras.Model):
            raise TypeError(f"TargetNetwork expects a keras.Model, got {type(model).__name__}.")
        if not model.built:
            raise ValueError(
                "TargetNetwork needs a built model: give it a keras.Input, call it once, or call "
                "model.build(input_shape) before wrapping it."
            )
        self.model = model
        self.unroll_limit = int(unroll_limit)
        try:
            inputs = list(model.inputs or [])
        except (AttributeError, ValueError):  # a subclassed model has no symbolic inputs
            inputs = []
        if inputs:
            if len(model.inputs) != 1 or len(model.outputs) != 1:
                raise ValueError(
                    f"TargetNetwork supports models with exactly one input and one output tensor; "
                    f"{model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs."
                )
            self.input_shape = tuple(model.inputs[0].shape[1:])
            self.input_dtype = model.inputs[0].dtype or "float32"
        else:
            shape = input_shape
            if shape is None:
                shapes = getattr(model, "_build_shapes_dict", None) or {}
                if len(shapes) == 1:
                    shape = tuple(next(iter(shapes.values())))[1:]
            if shape is None:
                raise ValueError(
                    f"TargetNetwork: cannot tell the input shape of subclassed model {model.name!r}; "
                    "pass input_shape=(...) (one example's shape)."
                )
            self.input_shape = tuple(shape)
            self.input_dtype = "float32"
        self.input_dtype = str(keras.backend.standardize_dtype(self.input_dtype))
        spec = keras.KerasTensor((None, *self.input_shape), dtype=self.input_dtype)
        try:
            model.compute_output_spec(spec)  # the first run may still build layers (subclassed models)
            n_vars = len(model.variables)
            out_spec = model.compute_output_spec(spec)
        except Exception as e:  # noqa: BLE001 -- report what Keras said, with context
            raise ValueError(
                f"TargetNetwork: model {model.name!r} cannot run on inputs of shape {(None, *self.input_shape)}: {e}"
            ) from e
        if isinstance(out_spec, (list, tuple, dict)):
            raise ValueError(
                f"TargetNetwork supports models with exactly one output tensor; {model.name!r} returns "
                f"{type(out_spec).__name__} of {len(out_spec)}."
            )
        if len(model.variables) != n_vars:
            raise ValueError(
                f"TargetNetwork: model {model.name!r} creates variables every time it runs (a layer makes "
                "weights in call()); create weights in build() so that they can be supplied from outside."
            )
        self.output_shape = tuple(out_spec.shape[1:])
        specs, self.state_specs = param_and_state_specs(model)
        if not specs:
            raise ValueError(f"TargetNetwork: model {model.name!r} has no trainable weights to generate.")
        self.layers, chain = layer_specs(model, specs, self.input_shape)
        in_layout = {s.kernel.name: s.kernel for s in self.layers}
        in_layout.update({s.bias.name: s.bias for s in self.layers if s.bias is not None})
        self.param_specs: list[ParamSpec] = [in_layout.get(s.name, s) for s in specs]
        self.plain_specs: list[ParamSpec] = [s for s in self.param_specs if s.name not in in_layout]
        self._spec_by_name = {s.name: s for s in self.param_specs}
        self.num_params = int(sum(s.size for s in self.param_specs))
        self.output_activation = output_activation(model)
        self._reference = Reference(
            model, self.param_specs, self.state_specs, tf.TensorSpec((None, *self.input_shape), self.input_dtype)
        )
        if not any(fast_path is v for v in (True, False)) and fast_path != "auto":
            raise ValueError(f'fast_path must be "auto", True or False, got {fast_path!r}.')
        self.fast_path = fast_path
        # The fast path computes no layer losses: only for models that have none.
        self._fast = (
            ChainPlan.from_model(model, self.layers, self.param_specs, self.input_shape)
            if fast_path is not False and not self.has_layer_losses
            else None
        )

    @property
    def batch_statistics(self) -> list:
        """The `state_specs` that training mode updates from batch statistics (the moving mean and
        variance of every BatchNormalization layer that is not frozen): what `calibrate_state` computes,
        and what each generated network needs of its own to run in inference mode."""
        return [s for s in self.state_specs if s.momentum is not None and s.name in self._reference.updated_state]

    @property
    def has_layer_losses(self) -> bool:
        """True if the model has layer losses (``model.losses``: weight or activity regularisers, ``add_loss``),
        which `apply` returns with ``return_losses=True``."""
        return self._reference.has_losses

    @property
    def has_fast_path(self) -> bool:
        """True if `apply` can take the chain fast path (`hyperkeras.targets.fast`) for this model."""
        return self._fast is not None

    def takes_fast_path(self, training=False) -> bool:
        """True if `apply` (in `training` mode, without per-network state or counts) runs the fast path
        (see `fast_path`)."""
        if self._fast is None:
            return False
        if self.fast_path is True:
            return True
        return not (self._fast.has_dropout and training is not False)

    # ------------------------------------------------------------------ params utilities
    @staticmethod
    def _as_tensors(params):
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict name -> [K, *shape] tensor, got {type(params).__name__}.")
        return {n: t if isinstance(t, (tf.Tensor, tf.Variable)) else tf.convert_to_tensor(t) for n, t in params.items()}

    def check_params(self, params):
        """Checks the names, shapes and dtypes of a params dict against `param_specs`; returns the static
        number of networks K (None when unknown at trace time). Raises ValueError naming the problem."""
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict name -> [K, *shape] tensor, got {type(params).__name__}.")
        missing = [s.name for s in self.param_specs if s.name not in params]
        extra = [k for k in params if k not in self._spec_by_name]
        if missing or extra:
            raise ValueError(f"params do not match the target: missing {missing}, unexpected {extra}.")
        k_static = None
        for spec in self.param_specs:
            t = params[spec.name]
            shape = tuple(t.shape)
            if len(shape) != len(spec.shape) + 1 or any(
                d is not None and d != e for d, e in zip(shape[1:], spec.shape)
            ):
                raise ValueError(
                    f"params[{spec.name!r}] has shape {shape}; expected [K, {', '.join(map(str, spec.shape))}]."
                )
            dtype = getattr(t, "dtype", None)
            if dtype is not None and not tf.as_dtype(dtype).is_floating:
                raise ValueError(
                    f"params[{spec.name!r}] has dtype {tf.as_dtype(dtype).name}; weights must be floating."
                )
            if shape[0] is not None:
                if k_static is not None and shape[0] != k_static:
                    raise ValueError(
                        f"params have different numbers of networks K: {spec.name!r} has {shape[0]}, "
                        f"earlier weights have {k_static}."
                    )
                k_static = shape[0]
        return k_static

    def flatten(self, params) -> tf.Tensor:
        """Concatenates params into one matrix ``[K, num_params]`` in `param_specs` order."""
        params = self._as_tensors(params)
        self.check_params(params)
        parts = [tf.reshape(params[s.name], [-1, s.size]) for s in self.param_specs]
        return tf.concat(parts, axis=1)

    def unflatten(self, flat) -> dict:
        """Inverse of `flatten`: ``[K, num_params]`` -> params dict."""
        flat = tf.convert_to_tensor(flat)
        if flat.shape.rank != 2 or (flat.shape[1] is not None and flat.shape[1] != self.num_params):
            raise ValueError(f"unflatten expects [K, {self.num_params}] (num_params of this target), got {flat.shape}.")
        sizes = [s.size for s in self.param_specs]
        parts = tf.split(flat, sizes, axis=1)
        return {s.name: tf.reshape(p, [-1, *s.shape]) for s, p in zip(self.param_specs, parts)}

    def to_filters(self, params) -> dict:
        """Per Conv/Dense layer of `layers`, the weights arranged filter by filter:
        ``{layer name: [K, num_filters, filter_size]}``. Weights outside the filter layout (`plain_specs`)
        are not included.

        Row f holds the kernel slice of output filter f (flattened in kernel order) followed by its bias.
        """
        params = self._as_tensors(params)
        self.check_params(params)
        out = {}
        for spec in self.layers:
            k = params[spec.kernel.name]
            k = tf.reshape(k, [-1, spec.filter_size - (spec.bias is not None), spec.num_filters])
            k = tf.transpose(k, [0, 2, 1])
            if spec.bias is not None:
                k = tf.concat([k, params[spec.bias.name][:, :, None]], axis=2)
            out[spec.name] = k
        return out

    def from_filters(self, filters) -> dict:
        """Inverse of `to_filters`: the params of the layers in `layers` (merge `plain_specs` weights in
        yourself to get a complete params dict)."""
        params = {}
        for spec in self.layers:
            f = tf.convert_to_tensor(filters[spec.name])
            if f.shape.rank != 3 or tuple(f.shape[1:]) != (spec.num_filters, spec.filter_size):
                raise ValueError(
                    f"filters[{spec.name!r}] has shape {f.shape}; expected [K, {spec.num_filters}, {spec.filter_size}]."
                )
            nk = spec.filter_size - (spec.bias is not None)
            params[spec.kernel.name] = tf.reshape(tf.transpose(f[:, :, :nk], [0, 2, 1]), [-1, *spec.kernel.shape])
            if spec.bias is not None:
                params[spec.bias.name] = f[:, :, nk]
        return params

    def get_params(self, model: keras.Model | None = None) -> dict:
        """The weights of `model` (default: the wrapped model; any model of the same architecture) as a
        params dict with K = 1."""
        model = model or self.model
        variables = model.trainable_variables
        if len(variables) != len(self.param_specs):
            raise ValueError(
                f"model {model.name!r} has {len(variables)} trainable variables; the target has {len(self.param_specs)}."
            )
        out = {}
        for spec, v in zip(self.param_specs, variables):
            if tuple(v.shape) != spec.shape:
                raise ValueError(
                    f"model {model.name!r}: variable {v.path} has shape {tuple(v.shape)}, expected {spec.shape} for {spec.name!r}."
                )
            out[spec.name] = tf.convert_to_tensor(v)[None]
        return out

    def initial_state(self, k: int = 1) -> dict:
        """The wrapped model's non-trainable state, repeated for `k` networks: ``{name: [k, *shape]}``."""
        variables = state_variables(self.model)
        return {
            s.name: tf.repeat(tf.convert_to_tensor(v)[None], k, axis=0) for s, v in zip(self.state_specs, variables)
        }

    def to_keras_model(self, params, index: int = 0, state=None) -> keras.Model:
        """A standalone copy of the architecture holding network `index`'s weights (savable as .keras).

        Args:
            params: params dict ``{name: [K, *shape]}`` (tensors or NumPy arrays).
            index: which network.
            state: optional per-network state ``{name: [K, *shape]}`` (e.g. from `calibrate_state`);
                default: the wrapped model's own state is copied.
        """
        params = self._as_tensors(params)
        k = self.check_params(params)
        if k is not None and not -k <= index < k:
            raise IndexError(f"index {index} out of range for {k} networks.")
        clone = keras.models.clone_model(self.model, clone_function=_clone_layer)
        if not clone.built:
            clone.build((None, *self.input_shape))
        for spec, v in zip(self.param_specs, clone.trainable_variables):
            v.assign(params[spec.name][index])
        own, theirs = state_variables(self.model), state_variables(clone)
        for spec, mine, v in zip(self.state_specs, own, theirs):
            v.assign(mine if state is None else tf.convert_to_tensor(state[spec.name])[index])
        return clone

    # ------------------------------------------------------------------ forward
    def apply(
        self,
        params: Params,
        x,
        training: bool = False,
        seed=None,
        state: dict | None = None,
        return_state: bool = False,
        return_losses: bool = False,
        counts=None,
    ):
        """Runs K networks.

        Args:
            params: dict name -> ``[K, *shape]`` (see `param_specs`); tensors, variables or NumPy arrays.
            x: ``[B, *input_shape]`` (every network sees the same batch) or ``[K, B, *input_shape]``
                (network k sees ``x[k]``). Integer inputs (token ids) for models with an integer input.
            training: runs the layers in training mode (Dropout active, BatchNormalization on batch
                statistics).
            seed: optional int seed for random layers (each network still draws its own masks).
            state: optional per-network non-trainable state ``{name: [K, *shape]}`` (see `state_specs`,
                `initial_state`, `calibrate_state`); default: the wrapped model's state, shared.
            return_state: also return the updated state (BatchNorm moving statistics after this batch
                in training mode).
            return_losses: also return each network's layer losses: ``[K]``, the sum of the model's
                ``model.losses`` (weight and activity regularisers, ``add_loss``) that Keras computes
                for network k's weights on its batch; zeros if the model has none (`has_layer_losses`).
            counts: optional ``[K]`` integers for per-network batches ``x`` of shape ``[K, B, ...]``:
                network k's real examples are ``x[k, :counts[k]]`` (the rest is padding). Each network
                then runs on its real examples only (batch statistics and activity regularisers see
                nothing else), and its outputs past ``counts[k]`` are 0. A network with ``counts[k] = 0``
                runs on an empty batch, as Keras would (batch statistics of nothing are NaN).

        Returns:
            ``[K, B, *output_shape]``, followed by the new state dict if `return_state`, then the layer
            losses ``[K]`` if `return_losses` (a tuple when either is asked for). Differentiable with
            respect to `params` (and `x`).
        """
        params = self._as_tensors(params)
        k_static = self.check_params(params)
        x = tf.convert_to_tensor(x)
        rank = len(self.input_shape)
        if x.shape.rank == rank + 1:
            shared = True
        elif x.shape.rank == rank + 2:
            shared = False
            if k_static is not None and x.shape[0] is not None and x.shape[0] != k_static:
                raise ValueError(f"x has {x.shape[0]} per-network batches but params hold {k_static} networks.")
        else:
            raise ValueError(
                f"x must have shape [B, {', '.join(map(str, self.input_shape))}] or [K, B, ...]; got {tuple(x.shape)}."
            )
        feat = tuple(x.shape[-rank:]) if rank else ()
        if any(d is not None and e is not None and d != e for d, e in zip(feat, self.input_shape)):
            raise ValueError(f"x has example shape {feat}; the target expects {self.input_shape}.")
        dtype = params[self.param_specs[0].name].dtype
        if tf.as_dtype(self.input_dtype).is_integer:
            if x.dtype.is_floating:
                raise ValueError(
                    f"the target's input is {self.input_dtype} (e.g. token ids); got x of dtype {x.dtype.name}."
                )
            x = tf.cast(x, self.input_dtype)
        else:
            x = tf.cast(x, dtype)
        if state is not None:
            state = self.check_state(state, k_static)
        if counts is not None:
            if shared:
                raise ValueError("counts are for per-network batches x [K, B, ...]; x is one shared batch.")
            counts = tf.convert_to_tensor(counts)
            if (
                not counts.dtype.is_integer
                or counts.shape.rank != 1
                or (k_static is not None and counts.shape[0] not in (None, k_static))
            ):
                raise ValueError(
                    f"counts must be integers [K], got {counts.dtype.name} of shape {tuple(counts.shape)}."
                )
            with tf.control_dependencies(
                [
                    tf.debugging.assert_equal(
                        tf.reduce_all((counts >= 0) & (counts <= tf.cast(tf.shape(x)[1], counts.dtype))),
                        True,
                        message="counts must lie in [0, B] for x of shape [K, B, ...]",
                    )
                ]
            ):
                counts = tf.identity(counts)
        use_fast = self.takes_fast_path(training) and state is None and not return_state and counts is None
        if use_fast:
            exact = self.fast_path is not True  # "auto": the model's own op order, exact for every value
            out = self._fast.apply(params, x, shared, k_static, training, seed, self.unroll_limit, exact)
            if shared and not exact and self._fast.needs_finite:
                # Exact for finite values only: with a non-finite input or weight, the reference decides. The
                # fast result is computed outside the cond (inside it, forward + backward measured 1.7x slower).
                finite = tf.reduce_all(tf.math.is_finite(x)) & tf.reduce_all(
                    [tf.reduce_all(tf.math.is_finite(t)) for t in params.values()]
                )
                out = tf.cond(
                    finite,
                    lambda: tf.identity(out),
                    lambda: self._reference.apply(
                        params, x, shared, k_static, training, seed, None, self.unroll_limit, False
                    ),
                )
            # The fast path is only built for models without layer losses.
            return (out, tf.zeros(tf.shape(out)[:1], out.dtype)) if return_losses else out
        return self._reference.apply(
            params, x, shared, k_static, training, seed, state, self.unroll_limit, return_state, return_losses, counts
        )

    def feature_layers(self) -> tuple:
        """Names of the layers whose outputs `features` returns by default: every Conv/Dense layer but the
        last (the hidden layers of a classifier; their outputs after the layer's activation)."""
        return tuple(s.name for s in self.layers[:-1])

    def features(self, params: Params, x, layers=None, training: bool = False) -> list:
        """The K networks' hidden features: ``[K, B, D_l]`` per layer in `layers` (each layer's output,
        flattened per example).

        Runs a view of the wrapped model that ends at those layers (built on first use for each tuple of
        layer names, outside a ``tf.function``: call it once eagerly, e.g. in a regulariser's ``setup``), on
        the params of the layers it needs — the same reference path as `apply`. Needs a Functional or
        Sequential model (layer outputs are defined); a subclassed model raises a ValueError.

        Args:
            params: ``{name: [K, *shape]}`` of this target.
            x: ``[B, *input_shape]`` (every network sees the same batch).
            layers: Keras layer names (default: `feature_layers`).
            training: runs the layers in training mode.
        """
        names = tuple(layers) if layers is not None else self.feature_layers()
        if not names:
            raise ValueError(f"features: {self.model.name!r} has no hidden Conv/Dense layer; name the layers.")
        view, sizes = self._feature_view(names)
        params = self._as_tensors(params)
        flat = view.apply({s.name: params[s.name] for s in view.param_specs}, x, training=training)
        return tf.split(flat, sizes, axis=-1)

    def _feature_view(self, names):
        cache = self.__dict__.setdefault("_feature_views", {})
        if names in cache:
            return cache[names]
        model = self.model
        try:
            inputs, outputs = model.inputs, [model.get_layer(n).output for n in names]
        except (AttributeError, ValueError) as e:
            raise ValueError(
                f"features: cannot read the outputs of layers {list(names)} of {model.name!r} ({e}); "
                "features need a Functional or Sequential model and existing layer names."
            ) from None
        taken = {layer.name for layer in model._flatten_layers(include_self=False, recursive=True)}
        prefix = next(
            f"features{i}_" for i in range(len(taken) + 1) if not any(t.startswith(f"features{i}_") for t in taken)
        )
        flat = [
            keras.layers.Flatten(name=f"{prefix}flatten{i}")(o) if len(o.shape) != 2 else o
            for i, o in enumerate(outputs)
        ]
        sizes = [int(np.prod(o.shape[1:])) for o in outputs]
        joined = flat[0] if len(flat) == 1 else keras.layers.Concatenate(name=f"{prefix}concat")(flat)
        view = TargetNetwork(keras.Model(inputs, joined), unroll_limit=self.unroll_limit, input_shape=self.input_shape)
        mine = {s.name: s.shape for s in self.param_specs}
        if any(mine.get(s.name) != s.shape for s in view.param_specs):
            raise ValueError(f"features: the layers {list(names)} of {model.name!r} do not map onto its params.")
        cache[names] = (view, sizes)
        return cache[names]

    def check_state(self, state, k_static=None):
        """Checks a per-network state dict against `state_specs` (and K); returns it as tensors."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict name -> [K, *shape], got {type(state).__name__}.")
        names = {s.name for s in self.state_specs}
        if set(state) != names:
            raise ValueError(
                f"state does not match the target: missing {sorted(names - set(state))}, "
                f"unexpected {sorted(set(state) - names)}."
            )
        out = {}
        for s in self.state_specs:
            t = tf.convert_to_tensor(state[s.name])
            if tuple(t.shape[1:]) != s.shape or (k_static is not None and t.shape[0] not in (None, k_static)):
                raise ValueError(
                    f"state[{s.name!r}] has shape {tuple(t.shape)}; expected [K, {', '.join(map(str, s.shape))}]."
                )
            out[s.name] = t
        return out

    def calibrate_state(
        self, params, data, batch_size: int = 128, max_batches: int | None = None, verbose: int = 0
    ) -> dict:
        """Each network's own BatchNormalization statistics on `data` (precise BN).

        Runs every network in training mode on each batch and averages the batch means and variances
        each BatchNormalization layer sees (downstream layers see their inputs normalised by batch
        statistics, as in training). Only the statistics that Keras updates in training mode are
        calibrated: those of a frozen BatchNormalization layer (``trainable=False``, which runs in
        inference mode), and all other state, are copied from the wrapped model.

        Args:
            params: params dict ``{name: [K, *shape]}``.
            data: images ``[N, *input_shape]`` (NumPy or tensor, cut into `batch_size` batches), or a
                `tf.data.Dataset` / iterable of batches ``x`` or ``(x, ...)``.
            batch_size: batch size when `data` is an array.
            max_batches: use at most this many batches.
            verbose: 1 shows a progress bar.

        Returns:
            state dict ``{name: [K, *shape]}`` for `apply(..., state=...)` and `to_keras_model(..., state=...)`.
        """
        params = self._as_tensors(params)
        k = self.check_params(params)
        if k is None:
            raise ValueError("calibrate_state needs params with a static number of networks K.")
        state = self.initial_state(k)
        bn = self.batch_statistics
        if not bn:
            return state
        if isinstance(data, (np.ndarray, tf.Tensor)):
            n = int(data.shape[0])
            batches = (data[i : i + batch_size] for i in range(0, n, batch_size))
            total = -(-n // batch_size)
        else:
            batches, total = iter(data), None
        if max_batches is not None:
            total = max_batches if total is None else min(total, max_batches)
        # Moving statistics start at zero, so after one step they hold (1 - momentum) · batch statistic.
        start = dict(state)
        start.update({s.name: tf.zeros_like(state[s.name]) for s in bn})

        @tf.function
        def step(p, x):
            new = self.apply(p, x, training=True, state=start, return_state=True)[1]
            return {s.name: new[s.name] / (1.0 - s.momentum) for s in bn}

        sums, count = None, 0
        bar = keras.utils.Progbar(total, verbose=verbose) if verbose else None
        for batch in batches:
            if max_batches is not None and count >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            stats = step(params, tf.convert_to_tensor(x))
            sums = stats if sums is None else {n: sums[n] + v for n, v in stats.items()}
            count += 1
            if bar is not None:
                bar.update(count)
        if not count:
            raise ValueError("calibrate_state: data holds no batch.")
        state.update({n: v / count for n, v in sums.items()})
        return state

    @property
    def output_kind(self) -> str:
        """``"probs"`` if the model ends in a softmax, else ``"logits"`` (`hyperkeras.probabilities.kind_of`)."""
        return probabilities.kind_of(self.output_activation)

    def as_logits(self, outputs):
        """Class outputs as logits for a softmax cross-entropy: the log of the probabilities when the
        target ends in a softmax (``log_softmax(log p) = log p``), the outputs themselves otherwise
        (`hyperkeras.probabilities.as_logits`)."""
        return probabilities.as_logits(outputs, self.output_kind)

    def layer_output_shapes(self) -> list:
        """``[(keras layer, output shape (None, ...))]`` of the model's top-level layers where Keras
        records them (functional and Sequential models); for a subclassed model, only its output."""
        out = []
        for layer in self.model.layers:
            try:
                out.append((layer, tuple(layer.output.shape)))
            except (AttributeError, ValueError):  # subclassed model, or a layer used more than once
                return [(self.model, (None, *self.output_shape))]
        return out

    def __repr__(self):
        rows = ", ".join(f"{s.name}:{s.kind}[{s.num_filters}x{s.filter_size}]" for s in self.layers)
        plain = f", {len(self.plain_specs)} plain tensors" if self.plain_specs else ""
        return f"TargetNetwork({rows}{plain}; num_params={self.num_params})"


def _clone_layer(layer):
    """A fresh copy of `layer` for `keras.models.clone_model`. A Lambda layer keeps its Python function
    (the model is in memory, so there is nothing untrusted to deserialise)."""
    if isinstance(layer, keras.layers.Lambda):
        config = layer.get_config()
        return keras.layers.Lambda(
            layer.function,
            output_shape=layer._output_shape,
            mask=layer.mask,
            arguments=config.get("arguments"),
            name=layer.name,
        )
    return layer.__class__.from_config(layer.get_config())

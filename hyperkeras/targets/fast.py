"""Fast paths for chain-structured targets: an optimisation of the reference `apply`, never a replacement.

`TargetNetwork(model, fast_path=...)` decides how it runs: by default ("auto", ``exact=True`` here) it
runs the layers in the model's own order, exact for every value, with convolution gradients as forward
convolutions on CPUs where those measured faster (`hyperkeras.convolution.forward_form_pays`: on a 2-core
AVX2 machine the Deutsch step ran 1.3x faster than on the reference path, `reference.py`,
`Model.stateless_call`; on an AVX-512 machine TensorFlow's own gradients were faster and are used there);
with ``fast_path=True`` a shared batch takes the optimisations below, which on the AVX2 machine measured
slower than the reference (see docs/results/targets.md) and stay as a tested optimisation for hardware
where the wide first layer pays.
`ChainPlan.from_model` accepts only a single chain of Conv2D/Dense layers and allow-listed weightless
per-example layers (`specs.WEIGHTLESS_LAYERS`), without mixed precision; for anything else it returns
None and the reference path runs (`TargetNetwork` builds no plan either for a model with layer losses,
which the plan does not compute). What the plan does differently for a shared batch, with the same
result:

- with a shared input, weightless layers before the first weighted layer run once for all networks;
- the first weighted layer runs for all K networks as one layer with their kernels side by side
  (K·C output channels, in slices of 8 images for convolutions), together with the per-channel layers
  after it, but only where every op in that segment is elementwise or per-channel (allow-listed
  activations and layers: a softmax there would mix the K networks);
- a shared-input first convolution with small filters runs as one matmul on image patches made once
  per batch, its max-pool as a max over the pool positions' matmuls;
- a convolution's max-pool runs before its bias and activation when these are non-decreasing.

In every form (also the exact one), the trailing Dense layers of a chain whose per-network input is a
matrix ``[B, d]`` (after a Flatten, or an MLP's input) run for all K networks at once as batched matmuls on
``[K, B, d]`` (`_tail_start`), with only elementwise or last-axis activations and inactive dropout between
them: the same products, one op each instead of K (a smaller graph to trace), exact for every value.

The last two are exact for finite values only (TF's CPU max-pool maps NaN to -3.4e38), so for a plan that
uses them (`needs_finite`) `TargetNetwork` returns the reference's result for a shared batch whenever the
input or a weight is not finite. `tests/test_targets.py` checks plan and reference against each other.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from hyperkeras import convolution
from hyperkeras.targets.specs import (
    ELEMENTWISE_ACTIVATIONS,
    MONOTONE_ACTIVATIONS,
    WEIGHTLESS_LAYERS,
    activation_name,
    chain_layers,
    layer_activation,
)

# Weightless layers that act on every channel separately, so K networks' channels can share one tensor
# (activation layers only with an elementwise activation, see `_per_channel`).
_PER_CHANNEL_LAYERS = {
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "MaxPooling1D",
    "MaxPooling2D",
    "AveragePooling1D",
    "AveragePooling2D",
    "ZeroPadding2D",
    "Identity",
    "Dropout",
}
# With a shared input and a convolution first, all K networks run on slices of this many images:
# the first layer's K·C-channel output of a small slice stays in cache (measured about 3x faster than
# per-network convolutions for a 1-channel 5x5 input layer on a 2-core CPU), and no activation larger
# than one slice's is ever stacked or transposed.
_WIDE_BATCH = 8
# A shared-input first convolution whose filters read at most this many values (kh·kw·C_in) runs as one
# matmul on image patches extracted once per batch (shared by all groups of networks), with its max-pool
# taken over the matmuls of the pool's positions. For a 1-channel 5×5 input layer with 320 outputs that
# is 1.99 ms per network per 128 images against 2.98 ms for the direct convolution (+ pool, bias,
# activation, split), measured on a 2-core AVX2 CPU; with deep inputs the patches would be too large.
_PATCH_MAX_DEPTH = 75
# ... and when one image's patches stay small (they exist for the whole batch at once): at most this many values.
_PATCH_MAX_VALUES_PER_IMAGE = 65536
_WEIGHTED = ("Dense", "Conv2D")
# Weightless layers that may sit in the stacked dense tail (`ChainPlan._tail_start`; dropout there only when
# inactive): with an elementwise activation (`_per_channel`) they act on each value alone, so K networks'
# [B, d] outputs stacked as [K, B, d] give the same result.
_TAIL_LAYERS = {"Activation", "ReLU", "LeakyReLU", "ELU", "Identity"}
# Activations that act on the last axis of a feature vector (besides the elementwise ones).
_LAST_AXIS_ACTIVATIONS = {"softmax", "log_softmax"}


def _monotone(layer) -> bool:
    """True if a weightless layer is an elementwise non-decreasing function."""
    act = layer_activation(layer)
    if act == "relu_variant":
        return float(layer.negative_slope) >= 0.0
    if act == "leaky_relu":
        return float(layer.negative_slope) >= 0.0
    if act == "elu" and type(layer).__name__ == "ELU":
        return float(layer.alpha) >= 0.0
    return act in MONOTONE_ACTIVATIONS


def _per_channel(layer) -> bool:
    """True if a weightless layer acts on every channel on its own (allow-list)."""
    cls = type(layer).__name__
    if cls not in _PER_CHANNEL_LAYERS:
        return False
    act = layer_activation(layer)
    return act is None or act == "relu_variant" or act in ELEMENTWISE_ACTIVATIONS


class ChainPlan:
    """The forward pass of a chain target for K networks, with the optimisations listed above.

    Build with `ChainPlan.from_model`; run with `apply`. Plan entries: ``("weighted", layer, spec,
    pool_layer_or_None)``, ``("dropout", layer, None, None)``, ``("stateless", layer, None, None)``.
    """

    def __init__(self, chain, layer_specs, input_shape):
        self.input_shape = tuple(input_shape)
        specs = {s.name: s for s in layer_specs}
        self._steps = []
        for layer in chain:
            cls = type(layer).__name__
            if cls in _WEIGHTED:
                self._steps.append(("weighted", layer, specs[layer.name]))
            else:
                self._steps.append(("dropout" if cls == "Dropout" else "stateless", layer, None))
        self._plan = self._make_plan()
        # The layers in the model's own order (no moved pool, no patches): the same ops as Keras, exact
        # for every value; per-network batches and `exact` calls run it, and need no finite check.
        self._exact_plan = [(kind, layer, spec, None) for kind, layer, spec in self._steps]
        self.needs_finite = any(p is not None for _, _, _, p in self._plan) or self._uses_patches()
        self.has_dropout = any(kind == "dropout" and layer.rate > 0 for kind, layer, _ in self._steps)
        self._input_ranks = _input_ranks(chain, self.input_shape)

    @classmethod
    def from_model(cls, model, layer_specs, param_specs, input_shape):
        """A plan for `model`, or None if the model is not a chain of Conv2D/Dense and allow-listed
        weightless layers whose every weight is a Conv2D/Dense kernel or bias, each layer computing in
        the dtype of its weights (the plan's ops compute in the params' dtype: no mixed precision)."""
        chain = chain_layers(model)
        if chain is None or not layer_specs:
            return None
        if any(
            l.dtype_policy.compute_dtype != l.dtype_policy.variable_dtype or l.dtype_policy.quantization_mode
            for l in chain
        ):
            return None
        covered = {s.kernel.name for s in layer_specs} | {s.bias.name for s in layer_specs if s.bias is not None}
        if {s.name for s in param_specs} != covered:
            return None
        names = {s.name for s in layer_specs}
        for layer in chain:
            c = type(layer).__name__
            if c in _WEIGHTED:
                if layer.name not in names or (c == "Conv2D" and layer.get_config().get("groups", 1) != 1):
                    return None
            elif c not in WEIGHTLESS_LAYERS or layer.weights and c != "Dropout":
                return None
        return cls(chain, layer_specs, input_shape)

    def _make_plan(self):
        """`_steps` with each conv's max-pool moved before its bias and activation when everything in
        between is non-decreasing (same result for finite values, less work)."""
        plan, skip = [], set()
        for i, (kind, layer, spec) in enumerate(self._steps):
            if i in skip:
                continue
            pool = None
            if (
                kind == "weighted"
                and spec.kind == "conv2d"
                and activation_name(layer.activation) in MONOTONE_ACTIVATIONS
            ):
                j = i + 1
                while j < len(self._steps) and self._steps[j][0] == "stateless" and _monotone(self._steps[j][1]):
                    j += 1
                if j < len(self._steps) and type(self._steps[j][1]).__name__ == "MaxPooling2D":
                    pool = self._steps[j][1]
                    skip.add(j)
            plan.append((kind, layer, spec, pool))
        return plan

    def _uses_patches(self):
        start = 0
        while start < len(self._plan) and self._plan[start][0] != "weighted":
            start += 1
        return (
            start < len(self._plan)
            and self._plan[start][2].kind == "conv2d"
            and self._wide_end(start, False) is not None
            and self._patch_conv(start)
        )

    def apply(self, params, x, shared, k_static, training, seed, unroll_limit, exact=False):
        """K networks on `x` (already checked and cast by `TargetNetwork.apply`); ``[K, B, ...]``. With
        `exact`, every network runs the layers in the model's own order (no shared-input optimisations, no
        moved pool): the same ops as Keras, exact for every value; otherwise a shared `x` takes the
        optimisations of the module docstring (exact for finite values only, see `needs_finite`)."""
        from hyperkeras.targets.reference import over_network_groups

        dtype = params[next(iter(params))].dtype
        prepared = self._prepare_shared(x, training) if shared and not exact else None
        if k_static is not None and k_static <= unroll_limit:
            return self._apply_static(params, x, shared, k_static, training, seed, 0, prepared, exact)
        return over_network_groups(
            lambda p, xk, offset, c: self._apply_static(
                p, x if shared else xk, shared, c, training, seed, offset, prepared, exact
            ),
            params,
            x,
            shared,
            k_static,
            dtype,
        )

    def _wide_end(self, start, training) -> int | None:
        """End of the segment from `start` (a weighted layer reading the shared input) that can run for
        all networks in one wide tensor (channels of network k at ``[k*C, (k+1)*C)``), or None."""
        if start >= len(self._plan) or self._plan[start][0] != "weighted":
            return None
        if activation_name(self._plan[start][1].activation) not in ELEMENTWISE_ACTIVATIONS:
            return None  # e.g. a softmax over K·C channels would mix the networks
        end = start + 1
        while end < len(self._plan):
            kind, layer = self._plan[end][:2]
            if kind == "weighted" or not _per_channel(layer):
                break
            if kind == "dropout" and training and layer.rate > 0:  # masks differ per network
                break
            end += 1
        return end

    def _prepare_shared(self, x, training):
        """The part of a shared-input forward pass that does not depend on the weights, done once for
        all networks (and all groups of them): the leading weightless layers, then the first weighted
        layer's input cut into batch slices, or as image patches when it runs as a matmul.

        Returns ``(start, end, x, slices)``: plan index of the first weighted layer, end of the wide
        segment (None: run network by network), the input after the leading layers, and None (dense
        first layer, or no wide segment), ``("images", xs [n, S, ...], b)`` or
        ``("patches", [n, q, S·P, D], b)`` (q pool positions, P pooled output pixels per image)."""
        start = 0
        while start < len(self._plan) and self._plan[start][0] != "weighted":
            kind, layer = self._plan[start][:2]
            if kind == "dropout" and training and layer.rate > 0:
                break  # a dropout mask per network: leave it to the per-network loop
            if kind == "stateless":
                x = layer.call(x)
            start += 1
        end = self._wide_end(start, training)
        if end is None or self._plan[start][2].kind != "conv2d":
            return start, end, x, None
        xs, b = _batch_slices(x)
        if not self._patch_conv(start):
            return start, end, x, ("images", xs, b)
        return start, end, x, ("patches", self._patches(xs, start), b)

    def _patch_conv(self, start) -> bool:
        """True if plan entry `start` (a convolution) runs as a matmul on patches (see _PATCH_MAX_DEPTH)."""
        _, layer, spec, pool = self._plan[start]
        depth = int(np.prod(spec.kernel.shape[:-1]))
        shape = self._output_shape(start)
        if depth > _PATCH_MAX_DEPTH or depth * int(np.prod(shape[1:-1])) > _PATCH_MAX_VALUES_PER_IMAGE:
            return False
        return pool is None or (tuple(pool.pool_size) == tuple(pool.strides) and pool.padding == "valid")

    def _output_shape(self, start):
        """Output shape ``(None, ...)`` of plan entry `start`'s layer (before its moved pool, if any)."""
        shape = (None, *self.input_shape)
        for _, layer, _, _ in self._plan[: start + 1]:
            shape = tuple(layer.compute_output_shape(shape))
        return shape

    def _pooled_shape(self, start):
        """``(Hp, Wp)``: spatial size of the convolution at plan entry `start` after its moved max-pool."""
        shape = self._output_shape(start)
        pool = self._plan[start][3]
        ph, pw = pool.pool_size if pool is not None else (1, 1)
        return int(shape[1]) // ph, int(shape[2]) // pw

    def _patches(self, xs, start):
        """Patches of batch slices `xs` [n, S, H, W, C] for the convolution at plan entry `start`,
        grouped by position in its max-pool window: ``[n, q, S·Hp·Wp, kh·kw·C]``."""
        _, layer, spec, pool = self._plan[start]
        n, size = tf.shape(xs)[0], xs.shape[1]
        # Patches as a convolution with a one-hot kernel (exact: one product by 1 per output; 2.5x faster
        # than tf.image.extract_patches here): [n·S, Ho, Wo, D], D in kernel order (row, column, channel).
        depth = int(np.prod(spec.kernel.shape[:-1]))
        one_hot = tf.reshape(tf.eye(depth, dtype=xs.dtype), [*spec.kernel.shape[:-1], depth])
        p = self._linear(layer, spec, tf.reshape(xs, [-1, *xs.shape[2:]]), one_hot)
        ph, pw = pool.pool_size if pool is not None else (1, 1)
        hp, wp = self._pooled_shape(start)
        p = tf.reshape(p[:, : hp * ph, : wp * pw], [n, size, hp, ph, wp, pw, depth])
        p = tf.transpose(p, [0, 3, 5, 1, 2, 4, 6])
        return tf.reshape(p, [n, ph * pw, size * hp * wp, depth])

    def _apply_static(self, params, x, shared, k, training, seed, offset, prepared=None, exact=False):
        """`apply` for a static number `k` of networks: unrolled per-network loop; with a shared input,
        the leading weightless layers run once and the first weighted layer (with the per-channel
        layers after it) runs for all networks in one wide tensor, slice by slice of the batch."""
        plan = self._exact_plan if exact or not shared else self._plan
        tail = self._tail_start(plan, training)
        stacked = {
            s.name
            for _, _, spec, _ in plan[tail:]
            if spec is not None
            for s in (spec.kernel, spec.bias)
            if s is not None
        }
        # Split every other weight into its k networks once (unstack, whose gradient is one stack;
        # indexing t[i] would build a full-size zero gradient per network, and again in every batch slice).
        split = [n for n in params if n not in stacked]
        per_network = [dict(zip(split, ws)) for ws in zip(*(tf.unstack(params[n], num=k) for n in split))]
        if not per_network:  # every weight is in the tail (an MLP)
            per_network = [{}] * k

        def run_each(inputs, start, slice_index):
            return self._forward_each(
                params, per_network, inputs, training, seed, offset, start, slice_index, plan, tail
            )

        if exact or not shared:
            return run_each([x] * k if shared else tf.unstack(x, num=k, axis=0), 0, None)
        start, end, x, slices = prepared if prepared is not None else self._prepare_shared(x, training)
        if end is not None:
            wide = self._wide_weights(params, k, start)
            from_patches = slices is not None and slices[0] == "patches"

            def run(xs, slice_index):
                return run_each(self._forward_wide(wide, xs, k, start, end, from_patches), end, slice_index)

            if slices is None:
                return run(x, None)
            return _over_slices(run, slices[1], slices[2], x.shape[0], x.dtype)
        return run_each([x] * k, start, None)

    def _forward_each(self, params, per_network, inputs, training, seed, offset, start, slice_index, plan, tail):
        """Plan entries [start, tail) network by network, then the stacked tail [tail, end) for all at once."""
        outs = [
            self._forward_one(weights, h, training, seed, offset + i, start, slice_index, plan[:tail])
            for i, (weights, h) in enumerate(zip(per_network, inputs))
        ]
        shared_tail = tail < len(plan) and all(o is outs[0] for o in outs)
        if shared_tail:  # one shared input reaches the tail: [1, B, d], broadcast by the batched matmul
            # (also keeps Grappler from rewriting a stack of identical tensors, which failed on the last,
            # smaller batch of a `fit` on TF 2.21: tests/test_conditioning.py)
            h = outs[0][None]
        else:
            h = tf.stack(outs, axis=0)
        for kind, layer, spec, _ in plan[max(tail, start) :]:
            if kind == "weighted":  # [K, B, d] @ [K, d, u] (+ [K, 1, u])
                h = tf.matmul(h, params[spec.kernel.name])
                if spec.bias is not None:
                    h = h + params[spec.bias.name][:, None, :]
                h = layer.activation(h)
            elif kind == "stateless":  # dropout in the tail is inactive (see _tail_start)
                h = layer.call(h)
        return h

    def _tail_start(self, plan, training) -> int:
        """Index of the first plan entry of the stacked tail, ``len(plan)`` if there is none: the longest
        suffix that starts with a Dense layer on a per-network matrix ``[B, d]`` and holds only such Dense
        layers (elementwise or last-axis activations), allow-listed activation layers and dropout that is
        inactive in this call — ops for which K networks' outputs stacked as ``[K, B, d]`` give each network's
        own result."""
        tail = len(plan)
        for i in range(len(plan) - 1, -1, -1):
            kind, layer, spec, pool = plan[i]
            if kind == "weighted":
                act = activation_name(layer.activation)
                if not (
                    spec.kind == "dense"
                    and pool is None
                    and self._input_ranks.get(id(layer)) == 2
                    and (act in ELEMENTWISE_ACTIVATIONS or act in _LAST_AXIS_ACTIVATIONS)
                ):
                    break
                tail = i
            elif kind == "dropout":
                if training and layer.rate > 0:
                    break
            elif not (type(layer).__name__ in _TAIL_LAYERS and _per_channel(layer)):
                break
        return tail

    @staticmethod
    def _linear(layer, spec, h, kernel):
        if spec.kind == "conv2d":
            return convolution.conv2d(
                h, kernel, strides=layer.strides, padding=layer.padding.upper(), dilations=layer.dilation_rate
            )
        return tf.matmul(h, kernel) if h.shape.rank == 2 else tf.tensordot(h, kernel, axes=1)

    def _weighted(self, layer, spec, pool, h, kernel, bias, pooled=False):
        """The layer (and its moved max-pool) on `h`; with ``pooled=True`` `h` is already its pooled
        linear output."""
        if not pooled:
            h = self._linear(layer, spec, h, kernel)
            if pool is not None:
                h = pool.call(h)
        if bias is not None:
            h = tf.nn.bias_add(h, bias)  # = h + bias; its gradient is one BiasAddGrad op, not a broadcast sum
        return layer.activation(h)

    def _wide_weights(self, params, k, start):
        """The k networks' kernels of plan entry `start` side by side: ``[..., k*C]`` (and bias ``[k*C]``)."""
        spec = self._plan[start][2]
        kernel = params[spec.kernel.name]  # [k, ..., C]
        rank = kernel.shape.rank
        kernel = tf.transpose(kernel, list(range(1, rank - 1)) + [0, rank - 1])
        kernel = tf.reshape(kernel, [*spec.kernel.shape[:-1], k * spec.num_filters])
        bias = None if spec.bias is None else tf.reshape(params[spec.bias.name], [k * spec.num_filters])
        return kernel, bias

    def _forward_wide(self, wide, x, k, start, end, from_patches=False):
        """Plan entries [start, end) for k networks on one shared input (for convolutions, one slice of
        the batch) as one layer with k·C outputs (`wide` from `_wide_weights`); `x` may be the slice's
        patches ``[q, S·P, D]`` (see `_patches`). Returns the k networks' outputs, a list of ``[B, ..., C]``."""
        _, layer, spec, pool = self._plan[start]
        if from_patches:
            kernel = tf.reshape(wide[0], [x.shape[-1], -1])
            outs = [tf.matmul(p, kernel) for p in tf.unstack(x, num=x.shape[0])]
            while len(outs) > 1:  # max over the pool window's positions, as a tree
                outs = [tf.maximum(a, b) for a, b in zip(outs[0::2], outs[1::2])] + outs[len(outs) - len(outs) % 2 :]
            h = tf.reshape(outs[0], [-1, *self._pooled_shape(start), k * spec.num_filters])
            h = self._weighted(layer, spec, pool, h, None, wide[1], pooled=True)
        else:
            h = self._weighted(layer, spec, pool, x, *wide)
        for kind, later, _, _ in self._plan[start + 1 : end]:
            if kind == "stateless":  # dropout here is inactive (see _wide_end)
                h = later.call(h)
        r = h.shape.rank  # [b, ..., k*C] -> k x [b, ..., C]
        h = tf.reshape(h, tf.concat([tf.shape(h)[:-1], [k, spec.num_filters]], 0))
        return tf.unstack(tf.transpose(h, [r - 1] + list(range(r - 1)) + [r]), num=k, axis=0)

    def _forward_one(self, weights, h, training, seed, k, start=0, slice_index=None, plan=None):
        for kind, layer, spec, pool in (self._plan if plan is None else plan)[start:]:
            if kind == "weighted":
                h = self._weighted(
                    layer,
                    spec,
                    pool,
                    h,
                    weights[spec.kernel.name],
                    None if spec.bias is None else weights[spec.bias.name],
                )
            elif kind == "dropout":
                if training and layer.rate > 0:
                    if seed is None:
                        h = tf.nn.dropout(h, rate=layer.rate, noise_shape=layer.noise_shape)
                    else:
                        s = tf.stack([tf.cast(seed, tf.int64), tf.cast(k, tf.int64)])
                        if slice_index is not None:  # a different mask for every slice of the batch
                            s = tf.random.experimental.stateless_fold_in(s, slice_index)
                        h = tf.nn.experimental.stateless_dropout(
                            h, rate=layer.rate, seed=s, noise_shape=layer.noise_shape
                        )
            else:
                h = layer.call(h)
        return h


def _batch_slices(x):
    """The batch `x` [B, ...] as slices of _WIDE_BATCH images ``[n, S, ...]`` (the last one zero-padded;
    one slice of B images when B <= _WIDE_BATCH is known statically), and B."""
    size, rank = _WIDE_BATCH, x.shape.rank
    if x.shape[0] is not None and x.shape[0] <= size:
        return x[None], x.shape[0]
    b = tf.shape(x)[0]
    n = (b + size - 1) // size
    xs = tf.pad(x, [[0, n * size - b]] + [[0, 0]] * (rank - 1))
    xs = tf.reshape(xs, tf.concat([[n, size], tf.shape(x)[1:]], 0))
    xs.set_shape([None, size, *x.shape[1:]])
    return xs, b


def _over_slices(fn, slices, b, static_b, dtype):
    """``fn(slice, slice_index) -> [K, S, ...]`` over `slices` [n, ...] (from `_batch_slices`, or patches
    of them). Returns ``[K, B, ...]`` without the padding."""
    if slices.shape[0] == 1:
        return fn(slices[0], 0)
    out = tf.map_fn(lambda a: fn(a[0], a[1]), (slices, tf.range(tf.shape(slices)[0])), fn_output_signature=dtype)
    r = out.shape.rank  # [n, K, S, ...]
    out = tf.transpose(out, [1, 0] + list(range(2, r)))
    out = tf.reshape(out, tf.concat([tf.shape(out)[:1], [-1], tf.shape(out)[3:]], 0))[:, :b]
    out.set_shape([out.shape[0], static_b, *out.shape[2:]])
    return out


def _input_ranks(chain, input_shape) -> dict:
    """``{id(layer): rank of one network's input to it}`` (batch axis included) along `chain`, from the
    layers' `compute_output_shape`; layers after one that cannot say are left out (no stacked tail there)."""
    ranks, shape = {}, (None, *input_shape)
    for layer in chain:
        ranks[id(layer)] = len(shape)
        try:
            shape = tuple(layer.compute_output_shape(shape))
        except Exception:  # noqa: BLE001 - an unknown shape only means "run per network"
            break
    return ranks

"""The reference `apply`: any built Keras model run for K weight samples by `Model.stateless_call`.

This is the plain, readable path every target takes unless a fast path (`fast.py`) has proved itself
applicable. Per network k it calls ``model.stateless_call(trainable_k, non_trainable_k, x_k,
training=...)``:

- ``trainable_k`` is network k's slice of every params tensor, in ``model.trainable_variables`` order;
- ``non_trainable_k`` is the model's own non-trainable state (BatchNormalization moving statistics: shared
  by all networks) unless a per-network ``state`` is given, and for every `keras.random.SeedGenerator` of
  the model (Dropout, GaussianNoise, ...) a seed state of its own for network k, so each network draws an
  independent mask;
- ``x_k`` is network k's batch, cut to its first ``counts[k]`` examples when per-network ``counts`` are
  given (the output is padded back with zeros), so that padding never reaches batch statistics or
  activity regularisers;
- with ``return_losses`` the call also returns the model's layer losses (``model.losses``: weight and
  activity regularisers, ``add_loss``) for network k's weights and batch, summed;
- with a static K ≤ ``unroll_limit`` the K calls are unrolled into one graph; otherwise networks run in
  groups of 10 (unrolled) inside a `tf.map_fn`, whose activation memory during backprop is that of all K
  networks (evaluate very large ensembles in chunks, see `hyperkeras.ensembles`).
"""

from __future__ import annotations

import inspect

import tensorflow as tf

from hyperkeras.targets.specs import is_seed_state

# With K not known statically (or above `unroll_limit`), networks run in a tf.map_fn over groups of this many.
NETWORK_GROUP = 10
# Seed-generator states of network k: [base, generator_index * _SEED_STRIDE + k].
_SEED_STRIDE = 1 << 24


def over_network_groups(fn, per_network, x, shared, k_static, out_dtype, group=NETWORK_GROUP):
    """Runs ``fn(per_network_group, x_group, offset, c)`` (c networks, returns a tensor ``[c, ...]`` or a
    structure of them) over groups of `group` networks in a `tf.map_fn`. `per_network` is a structure of
    ``[K, ...]`` tensors (the params, and e.g. per-network state) cut into groups alike; the last group
    is padded with zeros (all-zero networks), whose outputs are dropped. `out_dtype`: dtype (structure)
    of `fn`'s result."""
    c = group
    k_dyn = tf.shape(tf.nest.flatten(per_network)[0])[0]
    num_groups = (k_dyn + c - 1) // c

    def grouped(t):  # [K, ...] -> [num_groups, c, ...]
        t = tf.pad(t, [[0, num_groups * c - k_dyn]] + [[0, 0]] * (t.shape.rank - 1))
        out = tf.reshape(t, tf.concat([[num_groups, c], tf.shape(t)[1:]], 0))
        out.set_shape([None, c, *t.shape[1:]])
        return out

    def one(args):
        p, xk, index = args
        return fn(p, xk, index * c, c)

    elems = (
        tf.nest.map_structure(grouped, per_network),
        tf.zeros([num_groups], tf.float32) if shared else grouped(x),
        tf.range(num_groups),
    )
    out = tf.map_fn(one, elems, fn_output_signature=out_dtype)  # [num_groups, c, ...]

    def ungroup(t):
        t2 = tf.reshape(t, tf.concat([[num_groups * c], tf.shape(t)[2:]], 0))[:k_dyn]
        t2.set_shape([k_static, *t.shape[2:]])
        return t2

    return tf.nest.map_structure(ungroup, out)


class Reference:
    """`stateless_call` over K networks for one model (see the module docstring).

    Attributes (found once, by tracing one training-mode `stateless_call` on ``input_spec``):
        output_dtype: the dtype of the model's output (the compute dtype of its last layer, e.g.
            float16 under a ``mixed_float16`` policy).
        updated_state: names of the state variables that a training-mode call updates (BatchNorm moving
            statistics of trainable layers; not those of a frozen layer, ``trainable=False``).
        has_losses: True if the model has layer losses (weight and activity regularisers, ``add_loss``).
    """

    def __init__(self, model, param_specs, state_specs, input_spec):
        self.model = model
        self.param_specs = param_specs
        self.state_specs = state_specs
        # Where each of model.non_trainable_variables comes from: ("seed", generator index) or ("state", name).
        self._sources, names, g = [], iter(s.name for s in state_specs), 0
        for v in model.non_trainable_variables:
            if is_seed_state(v):
                self._sources.append(("seed", g, v.dtype))
                g += 1
            else:
                self._sources.append(("state", next(names), v.dtype))
        self.num_seed_generators = g
        self._pass_training = "training" in inspect.signature(model.call).parameters
        self.output_dtype, self.updated_state, self.has_losses = self._probe(input_spec)

    def _probe(self, input_spec):
        found = []

        @tf.function(autograph=False)
        def trace(x):
            trainable = [tf.zeros(v.shape, v.dtype) for v in self.model.trainable_variables]
            before = [tf.zeros(v.shape, v.dtype) for v in self.model.non_trainable_variables]
            kwargs = {"training": True} if self._pass_training else {}
            out, after, losses = self.model.stateless_call(trainable, before, x, return_losses=True, **kwargs)
            # A variable the call did not assign comes back as the very tensor that was passed in.
            updated = {
                key for (kind, key, _), b, a in zip(self._sources, before, after) if kind == "state" and a is not b
            }
            found.extend([out.dtype, updated, bool(losses)])
            return out

        trace.get_concrete_function(input_spec)
        return tuple(found)

    def apply(
        self,
        params,
        x,
        shared,
        k_static,
        training,
        seed,
        state,
        unroll_limit,
        return_state,
        return_losses=False,
        counts=None,
    ):
        """``[K, B, ...]`` outputs, then the new per-network state dict if `return_state`, then the
        layer losses ``[K]`` if `return_losses` (see `TargetNetwork.apply`)."""
        dtype = params[self.param_specs[0].name].dtype
        base = self._seed_base(seed)
        per_network = {"params": params}
        if state is not None:
            per_network["state"] = state
        if counts is not None:
            per_network["counts"] = counts

        def run(per, xk, offset, c):
            return self._static(
                per["params"],
                xk,
                shared,
                c,
                training,
                base,
                offset,
                per.get("state"),
                per.get("counts"),
                return_state,
                return_losses,
                dtype,
            )

        if k_static is not None and k_static <= unroll_limit:
            result = run(per_network, x, 0, k_static)
        else:
            out_dtype = {"outputs": self.output_dtype}
            if return_state:
                out_dtype["state"] = {s.name: s.dtype for s in self.state_specs}
            if return_losses:
                out_dtype["losses"] = dtype
            result = over_network_groups(
                lambda per, xk, offset, c: run(per, x if shared else xk, offset, c),
                per_network,
                x,
                shared,
                k_static,
                out_dtype,
            )
        out = (
            (result["outputs"],)
            + ((result["state"],) if return_state else ())
            + ((result["losses"],) if return_losses else ())
        )
        return out if len(out) > 1 else out[0]

    def _seed_base(self, seed):
        if not self.num_seed_generators:
            return None
        if seed is None:
            return tf.random.uniform([], 0, 2**31 - 1, dtype=tf.int64)
        return tf.cast(seed, tf.int64)

    def _static(self, params, x, shared, k, training, base, offset, state, counts, return_state, return_losses, dtype):
        # Split every tensor into its k networks once (unstack, whose gradient is one stack).
        weights = list(zip(*(tf.unstack(params[s.name], num=k) for s in self.param_specs)))
        states = None
        if state is not None and self.state_specs:
            states = list(zip(*(tf.unstack(tf.convert_to_tensor(state[s.name]), num=k) for s in self.state_specs)))
        inputs = [x] * k if shared else tf.unstack(x, num=k, axis=0)
        sizes = None if counts is None else tf.unstack(counts, num=k)
        outs, new_states, losses = [], [], []
        for i in range(k):
            own = dict(zip((s.name for s in self.state_specs), states[i])) if states is not None else None
            xi = inputs[i] if sizes is None else inputs[i][: sizes[i]]  # only network i's real examples
            out, new, layer_losses = self.run_one(list(weights[i]), xi, training, base, offset + i, own, return_losses)
            if sizes is not None:  # back to the block's length, zeros in the padding slots
                out = tf.pad(out, [[0, tf.shape(inputs[i])[0] - sizes[i]]] + [[0, 0]] * (out.shape.rank - 1))
                out.set_shape([inputs[i].shape[0], *out.shape[1:]])
            outs.append(out)
            new_states.append(new)
            if return_losses:
                losses.append(
                    tf.add_n([tf.cast(v, dtype) for v in layer_losses]) if layer_losses else tf.zeros([], dtype)
                )
        result = {"outputs": tf.stack(outs, axis=0)}
        if return_state:
            result["state"] = {s.name: tf.stack([n[s.name] for n in new_states], axis=0) for s in self.state_specs}
        if return_losses:
            result["losses"] = tf.stack(losses, axis=0)
        return result

    def run_one(self, trainable, x, training, base, index, state=None, return_losses=False):
        """One network: ``(output, new_state dict, list of layer losses)`` (the list is empty unless
        `return_losses`). `state` None: the model's own (shared) state."""
        non_trainable = []
        for (kind, key, vdtype), v in zip(self._sources, self.model.non_trainable_variables):
            if kind == "seed":
                value = tf.stack([base, tf.cast(key * _SEED_STRIDE + index, tf.int64)])
                non_trainable.append(tf.cast(value, vdtype))
            elif state is not None:
                non_trainable.append(tf.cast(state[key], vdtype))
            else:
                non_trainable.append(v.value)
        kwargs = {"training": training} if self._pass_training else {}
        out, new, *losses = self.model.stateless_call(
            trainable, non_trainable, x, return_losses=return_losses, **kwargs
        )
        new_state = {key: value for (kind, key, _), value in zip(self._sources, new) if kind == "state"}
        return out, new_state, losses[0] if losses else []

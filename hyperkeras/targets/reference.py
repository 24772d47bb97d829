"""The reference `apply`: any built Keras model run for K weight samples by `Model.stateless_call`.

This is the plain, readable path every target takes unless a fast path (`fast.py`) has proved itself
applicable. Per network k it calls ``model.stateless_call(trainable_k, non_trainable_k, x_k,
training=...)``:

- ``trainable_k`` is network k's slice of every params tensor, in ``model.trainable_variables`` order;
- ``non_trainable_k`` is the model's own non-trainable state (BatchNormalization moving statistics: shared
  by all networks) unless a per-network ``state`` is given, and for every `keras.random.SeedGenerator` of
  the model (Dropout, GaussianNoise, ...) a seed state of its own for network k, so each network draws an
  independent mask;
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


def over_network_groups(fn, params, x, shared, k_static, out_dtype, group=NETWORK_GROUP):
    """Runs ``fn(params_group, x_group, offset, c)`` (c networks, returns a tensor ``[c, ...]`` or a
    structure of them) over groups of `group` networks in a `tf.map_fn`; the last group is padded with
    all-zero networks, whose outputs are dropped. `out_dtype`: dtype (structure) of `fn`'s result."""
    c = group
    k_dyn = tf.shape(params[next(iter(params))])[0]
    num_groups = (k_dyn + c - 1) // c

    def grouped(t):  # [K, ...] -> [num_groups, c, ...]
        t = tf.pad(t, [[0, num_groups * c - k_dyn]] + [[0, 0]] * (t.shape.rank - 1))
        out = tf.reshape(t, tf.concat([[num_groups, c], tf.shape(t)[1:]], 0))
        out.set_shape([None, c, *t.shape[1:]])
        return out

    def one(args):
        p, xk, index = args
        return fn(p, xk, index * c, c)

    elems = ({name: grouped(t) for name, t in params.items()},
             tf.zeros([num_groups], tf.float32) if shared else grouped(x), tf.range(num_groups))
    out = tf.map_fn(one, elems, fn_output_signature=out_dtype)  # [num_groups, c, ...]

    def ungroup(t):
        t2 = tf.reshape(t, tf.concat([[num_groups * c], tf.shape(t)[2:]], 0))[:k_dyn]
        t2.set_shape([k_static, *t.shape[2:]])
        return t2

    return tf.nest.map_structure(ungroup, out)


class Reference:
    """`stateless_call` over K networks for one model (see the module docstring)."""

    def __init__(self, model, param_specs, state_specs):
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

    def apply(self, params, x, shared, k_static, training, seed, state, unroll_limit, return_state):
        """``[K, B, ...]`` outputs (and the new per-network state dict when `return_state`)."""
        dtype = params[self.param_specs[0].name].dtype
        base = self._seed_base(seed)
        if k_static is not None and k_static <= unroll_limit:
            return self._static(params, x, shared, k_static, training, base, 0, state, return_state)
        out_dtype = dtype if not return_state else (dtype, {s.name: s.dtype for s in self.state_specs})
        if state is not None:  # map state along with params (one structure)
            merged = dict(params)
            merged.update({"state:" + n: t for n, t in state.items()})

            def fn(p, xk, offset, c):
                ps = {n: t for n, t in p.items() if not n.startswith("state:")}
                st = {n[6:]: t for n, t in p.items() if n.startswith("state:")}
                return self._static(ps, x if shared else xk, shared, c, training, base, offset, st, return_state)

            return over_network_groups(fn, merged, x, shared, k_static, out_dtype)
        return over_network_groups(
            lambda p, xk, offset, c: self._static(p, x if shared else xk, shared, c, training, base, offset, None, return_state),
            params, x, shared, k_static, out_dtype)

    def _seed_base(self, seed):
        if not self.num_seed_generators:
            return None
        if seed is None:
            return tf.random.uniform([], 0, 2**31 - 1, dtype=tf.int64)
        return tf.cast(seed, tf.int64)

    def _static(self, params, x, shared, k, training, base, offset, state, return_state):
        # Split every tensor into its k networks once (unstack, whose gradient is one stack).
        weights = list(zip(*(tf.unstack(params[s.name], num=k) for s in self.param_specs)))
        states = None
        if state is not None and self.state_specs:
            states = list(zip(*(tf.unstack(tf.convert_to_tensor(state[s.name]), num=k) for s in self.state_specs)))
        inputs = [x] * k if shared else tf.unstack(x, num=k, axis=0)
        outs, new_states = [], []
        for i in range(k):
            own = dict(zip((s.name for s in self.state_specs), states[i])) if states is not None else None
            out, new = self.run_one(list(weights[i]), inputs[i], training, base, offset + i, own)
            outs.append(out)
            new_states.append(new)
        out = tf.stack(outs, axis=0)
        if not return_state:
            return out
        return out, {s.name: tf.stack([n[s.name] for n in new_states], axis=0) for s in self.state_specs}

    def run_one(self, trainable, x, training, base, index, state=None):
        """One network: ``(output, new_state dict)``. `state` None: the model's own (shared) state."""
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
        out, new = self.model.stateless_call(trainable, non_trainable, x, **kwargs)
        new_state = {key: value for (kind, key, _), value in zip(self._sources, new) if kind == "state"}
        return out, new_state

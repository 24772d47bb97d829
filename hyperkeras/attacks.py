"""Adversarial examples: FGSM and PGD (L∞) against one network or an ensemble.

The attacked model is anything `hyperkeras.ensembles.as_members` accepts: a keras.Model, a list of
keras.Models (deep ensemble), a params dict with ``target=`` (one or several generated networks), a
generator (``n`` networks are sampled once with ``seed``), `ensembles.MCDropout`, or `ensembles.Members`.
For several networks the attack maximises the loss of the ENSEMBLE:

* ``loss="mean_probs"`` (default): ``-log mean_k p_k(y | x)``, the cross-entropy of the mean softmax;
* ``loss="fused_logits"``: cross-entropy of the softmax of the mean logits (HyperGAN §4.5's logit fusion).

For one network both are the usual cross-entropy. Networks are processed in chunks of ``chunk_size``
and examples in batches of ``batch_size``; the gradient of the full-ensemble loss is assembled exactly
from the chunks (a streaming log-sum-exp), so ensembles of 1,000 networks fit in memory. The default
chunk size follows a memory budget (`_GRADIENT_MEMORY_BUDGET`, via `ensembles.default_chunk_size`): the
largest activation of a chunk of networks on a batch of examples stays within 32 MB, so an attack's
gradient tape stays within a few hundred MB whatever the ensemble size.

Example:

```python
from hyperkeras import attacks, ensembles

members = ensembles.as_members(hypergan, n=10, seed=0)        # attack this fixed ensemble
x_fgsm = attacks.fgsm(members, x, y, eps=0.1)
x_pgd = attacks.pgd(members, x, y, eps=0.1, step_size=0.01, steps=40)
attacks.loss(members, x_pgd, y).mean() > attacks.loss(members, x, y).mean()
fresh = ensembles.predict(hypergan, x_pgd, n=100, seed=123)    # test on a new ensemble
```

Reference:
    Goodfellow et al., "Explaining and Harnessing Adversarial Examples" (ICLR 2015) — FGSM;
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks" (ICLR 2018) — PGD.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from hyperkeras import ensembles
from hyperkeras.ensembles.sources import _cache_of, _traced

__all__ = ["fgsm", "pgd", "loss", "input_gradient", "deutsch_fgsm_curve"]

_LOSSES = ("mean_probs", "fused_logits")

# Bytes of the largest activation of one chunk (networks × examples) in a gradient computation; the tape
# keeps every layer's activations and their gradients, several times this (see `default_chunk_size`).
_GRADIENT_MEMORY_BUDGET = 32 * 2**20


def _check_inputs(x, y, eps, clip_min, clip_max, name):
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if x.ndim < 2:
        raise ValueError(f"{name}: x must be a batch [B, ...] of examples, got shape {x.shape}.")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: y must be integer labels of shape [{x.shape[0]}], got {y.dtype} {y.shape}.")
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"{name}: eps must be a finite number ≥ 0, got {eps!r}.")
    if not clip_min < clip_max:
        raise ValueError(f"{name}: clip_min ({clip_min}) must be < clip_max ({clip_max}).")
    if x.size and (x.min() < clip_min - 1e-6 or x.max() > clip_max + 1e-6):
        raise ValueError(
            f"{name}: x has values in [{x.min():.4g}, {x.max():.4g}], outside the valid pixel range "
            f"[{clip_min}, {clip_max}]; rescale x or pass clip_min/clip_max."
        )
    return x, y.astype(np.int32)


def _check_loss(kind):
    if kind not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {kind!r}.")


def _target_grad_fn(target, kind, output, params, x, v, state):
    """The traced loss-and-gradient function of `target` for chunks of ``K`` networks (the first axis of
    `params`), kept on the target so that every attack on its networks reuses it. Its input signature fixes
    K (`TargetNetwork.apply` unrolls over a static K) and leaves the batch size open: one trace per chunk
    size, not one per batch shape (a last smaller batch, the fused-logits ``v``)."""
    k = int(next(iter(params.values())).shape[0])
    dtype = next(iter(params.values())).dtype
    key = (kind, output, k, dtype, x.dtype, v.dtype, state is not None)
    cache = _cache_of(target).setdefault("attack_grad_fns", {})
    if key not in cache:
        cache[key] = _make_target_grad_fn(target, kind, output, params, x, v, state)
    return cache[key]


def _make_target_grad_fn(target, kind, output, params, x, v, state):
    signature = [
        {name: tf.TensorSpec(t.shape, t.dtype) for name, t in params.items()},
        tf.TensorSpec([None, *x.shape[1:]], x.dtype),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None, None], v.dtype),
    ]
    if state is not None:
        signature.append({name: tf.TensorSpec(t.shape, t.dtype) for name, t in state.items()})
    return _traced(_target_grad, target, kind, output, input_signature=signature)


def _target_grad(target, kind, output, params, x, y, v, state=None):
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = target.apply(params, x, state=state)
        logp = ensembles.log_probs(out, output)
        if kind == "mean_probs":
            value = tf.reduce_logsumexp(_pick(logp, y), axis=0)
            objective = tf.reduce_sum(value)
        else:
            logits = out if output == "logits" else logp
            value = tf.reduce_sum(logits, axis=0)
            objective = tf.reduce_sum(value * v)
    return value, tape.gradient(objective, x)


def _pick(logp, y):
    """``logp[:, i, y[i]]`` for ``logp`` ``[c, B, C]`` -> ``[c, B]``."""
    return tf.reduce_sum(logp * tf.one_hot(y, logp.shape[-1], dtype=logp.dtype)[None], axis=-1)


class _Gradient:
    """Exact input gradient of the ensemble loss, assembled over chunks of networks."""

    def __init__(self, members, kind, chunk_size, batch_size=None):
        self.members = members
        self.kind = kind
        n = members.num_networks
        if chunk_size is None and batch_size:  # bounded memory: see _GRADIENT_MEMORY_BUDGET
            chunk_size = ensembles.default_chunk_size(members, int(batch_size), _GRADIENT_MEMORY_BUDGET)
        self.chunk = int(min(chunk_size or n, n))
        if self.chunk < 1:
            raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size!r}.")
        self.num_chunks = math.ceil(n / self.chunk)

    # per-chunk computations, each returning (value [B] or [B, C], gradient wrt x)
    def _chunk_terms(self, start, valid, x, y, v):
        members = self.members
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = members.outputs(x, start, start + valid)
            logp = ensembles.log_probs(out, members.output)
            if self.kind == "mean_probs":
                logp_y = _pick(logp, y)  # [c, B]
                value = tf.reduce_logsumexp(logp_y, axis=0)  # [B]
                objective = tf.reduce_sum(value)
            else:
                logits = out if members.output == "logits" else logp
                value = tf.reduce_sum(logits, axis=0)  # [B, C]
                objective = tf.reduce_sum(value * v)
        return value, tape.gradient(objective, x)

    def _chunk_terms_target_call(self, start, valid, x, y, v):
        members, kind = self.members, self.kind
        params = {k: t[start : start + valid] for k, t in members.params.items()}
        state = None
        if members.state is not None:  # each network's own BatchNorm statistics, as `outputs` uses them
            state = {k: t[start : start + valid] for k, t in members.state.items()}
        fn = _target_grad_fn(members.target, kind, members.output, params, x, v, state)
        y = tf.cast(y, tf.int32)
        return fn(params, x, y, v) if state is None else fn(params, x, y, v, state)

    def __call__(self, x, y):
        """Returns (per-example loss [B], gradient of the summed loss wrt x)."""
        x = tf.convert_to_tensor(x)
        y = tf.convert_to_tensor(y)
        n = self.members.num_networks
        log_n = math.log(n)
        if self.kind == "mean_probs":
            acc_value, acc_grad = None, None
            for c in range(self.num_chunks):
                start = c * self.chunk
                valid = min(self.chunk, n - start)
                value, grad = self._call_chunk(start, valid, x, y, None)
                if acc_value is None:
                    acc_value, acc_grad = value, grad
                else:  # streaming log-sum-exp: grad of log Σ_k p_k[y] = Σ_c softmax_c(L_c) · grad L_c
                    new = tf.experimental.numpy.logaddexp(acc_value, value)
                    shape = [-1] + [1] * (len(x.shape) - 1)
                    acc_grad = (
                        tf.reshape(tf.exp(acc_value - new), shape) * acc_grad
                        + tf.reshape(tf.exp(value - new), shape) * grad
                    )
                    acc_value = new
            return -(acc_value - log_n), -acc_grad
        if isinstance(self.members, ensembles.MCDropout):
            return self._fused_logits_one_pass(x, y)
        # fused logits: forward pass for the mean logits, then chunked vector-Jacobian products
        # (deterministic members: the second pass sees the same networks as the first).
        total = None
        for c in range(self.num_chunks):
            start = c * self.chunk
            valid = min(self.chunk, n - start)
            out = self.members.outputs(x, start, start + valid)
            logits = out if self.members.output == "logits" else ensembles.log_probs(out, self.members.output)
            s = tf.reduce_sum(logits, axis=0)
            total = s if total is None else total + s
        mean_logits = total / n
        log_p = tf.nn.log_softmax(mean_logits)
        loss_value = -tf.gather(log_p, y, axis=1, batch_dims=1)
        v = (tf.exp(log_p) - tf.one_hot(y, mean_logits.shape[-1], dtype=log_p.dtype)) / n
        grad = None
        for c in range(self.num_chunks):
            start = c * self.chunk
            valid = min(self.chunk, n - start)
            _, g = self._call_chunk(start, valid, x, y, v)
            grad = g if grad is None else grad + g
        return loss_value, grad

    def _fused_logits_one_pass(self, x, y):
        """Fused-logits loss and gradient of stochastic members (MC dropout) from ONE forward pass, so
        the value and the gradient see the same dropout masks (a second pass would draw new ones).
        Keeps every pass's activations until the gradient is taken."""
        n = self.members.num_networks
        tapes, sums = [], []
        for c in range(self.num_chunks):
            start = c * self.chunk
            valid = min(self.chunk, n - start)
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = self.members.outputs(x, start, start + valid)
                logits = out if self.members.output == "logits" else ensembles.log_probs(out, self.members.output)
                s = tf.reduce_sum(logits, axis=0)
            tapes.append(tape)
            sums.append(s)
        mean_logits = tf.add_n(sums) / n
        log_p = tf.nn.log_softmax(mean_logits)
        loss_value = -tf.gather(log_p, y, axis=1, batch_dims=1)
        v = (tf.exp(log_p) - tf.one_hot(y, mean_logits.shape[-1], dtype=log_p.dtype)) / n
        grad = tf.add_n([t.gradient(s, x, output_gradients=v) for t, s in zip(tapes, sums)])
        return loss_value, grad

    def _call_chunk(self, start, valid, x, y, v):
        if v is None:
            v = tf.zeros([1, 1], x.dtype)
        if isinstance(self.members, ensembles.TargetMembers):
            return self._chunk_terms_target_call(start, valid, x, y, v)
        return self._chunk_terms(start, valid, x, y, v)


def _prepare(
    model, x, y, eps, n, seed, target, clip_min, clip_max, loss_kind, chunk_size, output, name, batch_size=None
):
    _check_loss(loss_kind)
    x, y = _check_inputs(x, y, eps, clip_min, clip_max, name)
    members = ensembles.as_members(model, n=n, seed=seed, target=target, output=output)
    if members.input_shape is not None and tuple(x.shape[1:]) != tuple(members.input_shape):
        raise ValueError(f"{name}: x has example shape {x.shape[1:]}, the model expects {members.input_shape}.")
    return x, y, _Gradient(members, loss_kind, chunk_size, min(int(batch_size), len(x)) if batch_size else None)


def _batched(fn, x, y, batch_size):
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    outs = [fn(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), int(batch_size))]
    return np.concatenate(outs, axis=0) if outs else x.copy()


def loss(
    model,
    x,
    y,
    *,
    n=None,
    seed=None,
    target=None,
    kind: str = "mean_probs",
    chunk_size=None,
    batch_size: int = 256,
    output: str = "auto",
) -> np.ndarray:
    """Per-example ensemble loss ``[B]`` that the attacks maximise (see the module docstring)."""
    _check_loss(kind)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y).astype(np.int32)
    members = ensembles.as_members(model, n=n, seed=seed, target=target, output=output)
    grad = _Gradient(members, kind, chunk_size, min(int(batch_size), max(1, len(x))))
    return _batched(lambda xb, yb: grad(xb, yb)[0].numpy(), x, y, batch_size)


def input_gradient(
    model, x, y, *, n=None, seed=None, target=None, kind: str = "mean_probs", chunk_size=None, output: str = "auto"
) -> np.ndarray:
    """Gradient of the summed per-example ensemble loss with respect to `x` (same shape as `x`)."""
    _check_loss(kind)
    members = ensembles.as_members(model, n=n, seed=seed, target=target, output=output)
    x = np.asarray(x, np.float32)
    grad = _Gradient(members, kind, chunk_size, max(1, len(x)))
    return grad(x, np.asarray(y).astype(np.int32))[1].numpy()


def fgsm(
    model,
    x,
    y,
    eps: float,
    *,
    n: int | None = None,
    seed: int | None = None,
    target=None,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    loss: str = "mean_probs",
    chunk_size: int | None = None,
    batch_size: int = 256,
    output: str = "auto",
) -> np.ndarray:
    """Fast gradient sign method: ``clip(x + eps · sign(∇x L(x, y)), clip_min, clip_max)``.

    Args:
        model: network(s) to attack (see the module docstring).
        x: clean examples ``[B, ...]`` within ``[clip_min, clip_max]``.
        y: true integer labels ``[B]``.
        eps: L∞ size of the perturbation.
        n, seed: number of networks and sampling seed when `model` is a generator.
        target: `TargetNetwork` when `model` is a params dict.
        clip_min, clip_max: valid pixel range.
        loss: ``"mean_probs"`` or ``"fused_logits"`` (ensembles).
        chunk_size: networks per gradient computation (default: by a memory budget, see the module docstring).
        batch_size: examples per gradient computation.
        output: ``"auto"``, ``"logits"`` or ``"probs"``.

    Returns:
        adversarial examples, float32 array shaped like `x`.
    """
    x, y, grad = _prepare(
        model, x, y, eps, n, seed, target, clip_min, clip_max, loss, chunk_size, output, "fgsm", batch_size
    )

    def step(xb, yb):
        _, g = grad(xb, yb)
        return np.clip(xb + eps * np.sign(g.numpy()), clip_min, clip_max).astype(np.float32)

    return _batched(step, x, y, batch_size)


def _fooled(members, x, y, kind):
    """``[B]`` True where the ensemble's prediction under rule `kind` differs from `y`."""
    pred = ensembles.predict(members, x, batch_size=len(x), keep_member_probs=False, verbose=0)
    return (pred.fused_prediction if kind == "fused_logits" else pred.mean_prediction) != y


def pgd(
    model,
    x,
    y,
    eps: float,
    step_size: float | None = None,
    steps: int = 40,
    *,
    random_start: bool = True,
    n: int | None = None,
    seed: int | None = None,
    target=None,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    loss: str = "mean_probs",
    chunk_size: int | None = None,
    batch_size: int = 256,
    output: str = "auto",
    until_fooled: bool = False,
) -> np.ndarray:
    """Projected gradient descent (L∞, Madry et al.): `steps` signed-gradient steps of `step_size`, each
    followed by projection onto the ε-ball around `x` and clipping to ``[clip_min, clip_max]``.

    Args:
        step_size: default ``2.5 · eps / steps``.
        steps: number of iterations (≥ 1); with `until_fooled`, the cap.
        random_start: start from a uniform random point of the ε-ball (seeded by `seed`, default 0).
        until_fooled: stop moving an example as soon as the attacked ensemble misclassifies it, under the
            rule of `loss` (argmax of the fused logits for ``"fused_logits"``, of the mean
            probabilities for ``"mean_probs"``): HyperGAN §4.5 attacks "until the generated image
            completely fools the ensemble". Costs one extra forward pass per step.
        Others: as in `fgsm`.

    Returns:
        adversarial examples, float32 array shaped like `x`.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"pgd: steps must be a positive integer, got {steps!r}.")
    if step_size is None:
        step_size = 2.5 * eps / steps
    if not (step_size > 0 and math.isfinite(step_size)) and eps > 0:
        raise ValueError(f"pgd: step_size must be a finite number > 0, got {step_size!r}.")
    x, y, grad = _prepare(
        model, x, y, eps, n, seed, target, clip_min, clip_max, loss, chunk_size, output, "pgd", batch_size
    )
    rng = np.random.RandomState(0 if seed is None else seed)

    def attack(xb, yb):
        lo = np.maximum(xb - eps, clip_min)
        hi = np.minimum(xb + eps, clip_max)
        adv = xb.copy()
        if random_start and eps > 0:
            adv = np.clip(xb + rng.uniform(-eps, eps, size=xb.shape).astype(np.float32), lo, hi)
        active = np.ones(len(xb), bool)
        for _ in range(int(steps)):
            if until_fooled:
                active &= ~_fooled(grad.members, adv, yb, loss)
                if not active.any():
                    break
            _, g = grad(adv, yb)
            moved = np.clip(adv + step_size * np.sign(g.numpy()), lo, hi).astype(np.float32)
            adv = np.where(active.reshape((-1,) + (1,) * (adv.ndim - 1)), moved, adv)
        return adv

    return _batched(attack, x, y, batch_size)


def deutsch_fgsm_curve(
    attacked,
    fresh,
    x,
    y,
    eps_values,
    *,
    target=None,
    seed: int = 0,
    batch_size: int = 256,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> dict:
    """Deutsch (2018) Fig. 6: targeted fast gradient sign steps against ONE network, tested on it and on
    a fresh ensemble (majority vote, as in the paper).

    The examples the attacked network classifies correctly are kept; each gets a random target class
    y' ≠ y (uniform over the other classes); ``x_ε = clip(x − ε·sign(∇ₓ CE(θ; x, y')))``. Success: the
    prediction becomes y'.

    Args:
        attacked: one network: any `ensembles.as_members` source with one member (e.g. ``model.sample(1)``
            with `target`, or ``ensembles.as_members(generator, n=1, seed=s)``).
        fresh: the ensemble tested (any source; other networks than `attacked`).
        x, y: examples and integer labels.
        eps_values: the ε values (fractions of the pixel range).
        target: the `TargetNetwork` of params-dict sources.
        seed: seed of the target classes.

    Returns:
        ``{"examples": kept, "ensemble_size": N, "curve": [{"eps", "single_success", "ensemble_success",
        "single_error", "ensemble_error"}, ...]}`` (``examples`` 0 and an empty curve when the attacked
        network gets no example right).
    """
    one = ensembles.as_members(attacked, target=target)
    if one.num_networks != 1:
        raise ValueError(f"deutsch_fgsm_curve attacks one network; `attacked` holds {one.num_networks}.")
    many = ensembles.as_members(fresh, target=target)
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32)
    first = ensembles.predict(one, x, batch_size=batch_size, verbose=0)
    keep = first.member_predictions[0] == y
    result = {"examples": int(keep.sum()), "ensemble_size": many.num_networks, "curve": []}
    if not keep.any():
        return result
    x, y = x[keep], y[keep]
    num_classes = first.mean_probs.shape[-1]
    rng = np.random.RandomState(seed)
    y_adv = ((y + rng.randint(1, num_classes, size=len(y))) % num_classes).astype(np.int32)
    step = -np.sign(input_gradient(one, x, y_adv))  # one gradient: the same direction for every ε
    for eps in eps_values:
        x_adv = np.clip(x + float(eps) * step, clip_min, clip_max).astype(np.float32)
        single = ensembles.predict(one, x_adv, batch_size=batch_size, verbose=0).member_predictions[0]
        vote = ensembles.predict(many, x_adv, batch_size=batch_size, keep_member_probs=False, verbose=0).majority_vote
        result["curve"].append(
            {
                "eps": float(eps),
                "single_success": float(np.mean(single == y_adv)),
                "ensemble_success": float(np.mean(vote == y_adv)),
                "single_error": float(np.mean(single != y)),
                "ensemble_error": float(np.mean(vote != y)),
            }
        )
    return result

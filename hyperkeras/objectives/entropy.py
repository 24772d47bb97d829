"""Kozachenko–Leonenko nearest-neighbour estimator of differential entropy (Deutsch 2018, eq. 14)."""

from __future__ import annotations

import math

import tensorflow as tf

_EULER_GAMMA = 0.5772156649015329  # -digamma(1)
_U64 = 2.0**-53  # unit roundoff of float64


_STATIC_K_MAX_N = 64  # up to this many samples, known at trace time, every other sample is a candidate


def _nearest_by_differences(x, lower, k):
    """Each row's nearest other row among its `k` smallest `lower` bounds, from the differences.

    With N ≤ `_STATIC_K_MAX_N` samples known at trace time, all N − 1 others are compared instead (the
    same nearest neighbour: the k plausible ones are among them). A static k lets XLA (`jit_compile`)
    compile the step once: a data-dependent k for `top_k` makes it take every variable the samples depend
    on as a compile-time constant and compile again at each step."""
    n = tf.shape(x)[0]
    if x.shape[0] is not None and x.shape[0] <= _STATIC_K_MAX_N:
        k = x.shape[0] - 1
    _, candidates = tf.math.top_k(-tf.where(tf.eye(n, dtype=tf.bool), tf.cast(float("inf"), x.dtype), lower), k=k)
    d2 = tf.map_fn(
        lambda row: tf.reduce_sum(tf.square(tf.gather(x, row[1]) - row[0][None, :]), axis=1),
        (x, candidates),
        fn_output_signature=x.dtype,
    )  # [N, k], one row of [k, D] at a time
    return tf.gather(candidates, tf.argmin(d2, axis=1, output_type=tf.int32), batch_dims=1)


def _nearest_others(samples):
    """``(index of each sample's nearest other sample [N] int32, k)``; no gradient.

    The nearest neighbour by the Gram matrix of the centred samples in float64 (``G_ij = |g_i|² +
    |g_j|² − 2 g_i·g_j``), checked with a rounding-error bound. With u = 2⁻⁵³, D the dimension and
    ``s = |g_i| + |g_j|``, the rounding error of ``G_ij`` is at most ``(D + 3)·u·s²`` (γ_D·|g_i||g_j|
    for a dot product, plus three roundings), and centring in float64 moves ``|x_i − x_j|`` by at
    most ``2u·s``; so with ``c = 2(D + 3)u`` (the factor 2 absorbs the roundings of these bounds
    themselves) the true distance satisfies

        lower_ij = (√(G_ij − c·s²) − 2u·s)²  ≤  |x_i − x_j|²  ≤  (√(G_ij + c·s²) + 2u·s)² = upper_ij.

    A sample j with ``lower_ij > upper_ij*`` (j* the Gram choice) is farther than j*, so the true
    nearest neighbour is among the others, the plausible ones. ``k`` is the largest number of
    plausible neighbours of a sample. It is 1 (the Gram choice is proved right; nothing more is
    computed) unless some sample has another neighbour within the relative slack, about
    ``4·D·u·(offset / spread)²`` for points spread around an offset from the mean (2e-12 at D = 5000
    when both are alike, 2e-4 for clusters 1e-3 wide and 10 from the mean); then each sample's k
    plausible neighbours are compared by their differences in float64 (`_nearest_by_differences`).
    """
    x = tf.cast(tf.stop_gradient(samples), tf.float64)
    n = tf.shape(x)[0]
    dim = tf.cast(tf.shape(x)[1], tf.float64)
    eye = tf.eye(n, dtype=tf.bool)
    g = x - tf.reduce_mean(x, axis=0, keepdims=True)
    sq = tf.reduce_sum(tf.square(g), axis=1)
    gram = sq[:, None] + sq[None, :] - 2.0 * tf.matmul(g, g, transpose_b=True)
    nearest = tf.argmin(tf.where(eye, tf.cast(float("inf"), tf.float64), gram), axis=1, output_type=tf.int32)
    norms = tf.sqrt(sq)
    s = norms[:, None] + norms[None, :]
    slack = 2.0 * (dim + 3.0) * _U64 * tf.square(s)
    lower = tf.square(tf.nn.relu(tf.sqrt(tf.nn.relu(gram - slack)) - 2.0 * _U64 * s))
    upper = tf.square(tf.sqrt(tf.nn.relu(gram + slack)) + 2.0 * _U64 * s)
    upper_chosen = tf.gather(upper, nearest, batch_dims=1)
    plausible = tf.logical_and(tf.logical_not(eye), lower <= upper_chosen[:, None])
    k = tf.reduce_max(tf.reduce_sum(tf.cast(plausible, tf.int32), axis=1))
    nearest = tf.cond(k > 1, lambda: _nearest_by_differences(x, lower, k), lambda: nearest)
    return nearest, k


def kozachenko_leonenko_entropy(samples, dim=None, full: bool = False, eps: float = 1e-12):
    """Kozachenko–Leonenko estimate of the differential entropy of a batch of samples.

    ``Ĥ = ψ(N) + (d / N) Σ_i log ε_i`` (Deutsch 2018, eq. 14), where ε_i is the Euclidean distance
    from sample i to its nearest *other* sample and d the dimension. With ``full=True`` the
    estimator's constant terms are added, ``−ψ(1) + log V_d`` with ``V_d = π^{d/2} / Γ(d/2 + 1)`` the
    volume of the unit d-ball, so that the value estimates the differential entropy in nats of the
    distribution the samples come from (consistent as N grows when ``dim`` is the true dimension).

    Nearest neighbours are exact (up to float64 rounding): they come from the Gram matrix in float64,
    with a rounding-error bound that proves no other sample is closer, or, where it cannot, from the
    differences to the samples it leaves plausible (`_nearest_others`); so tight clusters far apart
    get their true neighbours. ε_i is then computed from the difference ``x_i − x_j`` itself, in the
    samples' dtype, so two networks 0.01 apart in 20,000 dimensions are 0.01 apart in float32 (a float32
    Gram-matrix distance alone cancels to 0 there). Memory: ``[N, D]`` in float64 and a few
    ``[N, N]`` (and ``[k, D]`` per sample when k neighbours stay plausible).

    The estimate is differentiable with respect to `samples` (gradients flow through ε_i only; the
    choice of neighbours is piecewise constant): the self-distance is excluded by masking the
    diagonal (not by sorting), and squared distances are clamped at ``eps`` before the square root
    and the log, so coinciding samples give a large negative but finite value and no
    NaN gradient.

    Args:
        samples: ``[N, D]`` float tensor, N ≥ 2 (e.g. N flattened generated weight vectors).
        dim: the dimension d in the formula; defaults to D. Deutsch uses the dimension of the noise
            z, since the generated weights lie on a manifold of that dimension.
        full: add the constant terms (see above) so the value is an entropy estimate in nats.
        eps: floor of the squared nearest-neighbour distance.

    Returns:
        A scalar tensor.

    Example:

    ```python
    x = tf.random.normal([1000, 2])
    h = kozachenko_leonenko_entropy(x, full=True)   # ≈ log(2πe) = 2.84 nats
    ```

    Reference:
        Kozachenko & Leonenko (1987), "Sample estimate of the entropy of a random vector";
        Deutsch (2018), "Generating neural networks with neural networks", §2.3.
    """
    samples = tf.convert_to_tensor(samples)
    if not samples.dtype.is_floating:
        samples = tf.cast(samples, tf.float32)
    if samples.shape.rank != 2:
        raise ValueError(f"samples must have shape [N, D] (N samples of dimension D); got shape {samples.shape}.")
    n_static, d_static = samples.shape[0], samples.shape[1]
    if n_static is not None and n_static < 2:
        raise ValueError(f"samples needs at least 2 samples (N >= 2) for nearest neighbours; got N={n_static}.")
    if dim is None:
        if d_static is None:
            raise ValueError("dim must be given when the sample dimension D is not statically known.")
        dim = int(d_static)
    if isinstance(dim, bool) or not isinstance(dim, (int, float)) or dim <= 0:
        raise ValueError(f"dim must be a positive number (the dimension d of eq. 14); got {dim!r}.")
    dtype = samples.dtype
    n = tf.shape(samples)[0]
    n_f = tf.cast(n, dtype)
    # The nearest other sample of each, exactly (`_nearest_others`, float64, no gradient); ε² is then
    # computed from the difference itself, in the samples' dtype: the only path gradients take.
    nearest, _ = _nearest_others(samples)
    nearest2 = tf.maximum(tf.reduce_sum(tf.square(samples - tf.gather(samples, nearest)), axis=1), tf.cast(eps, dtype))
    # log ε = ½ log ε²; the sum over samples of log ε_i, times d / N.
    mean_log_eps = 0.5 * tf.reduce_mean(tf.math.log(nearest2))
    h = tf.math.digamma(n_f) + tf.cast(dim, dtype) * mean_log_eps
    if full:
        d = float(dim)
        log_unit_ball = 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d + 1.0)
        h = h + tf.constant(_EULER_GAMMA + log_unit_ball, dtype)
    return h

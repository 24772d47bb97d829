"""Probe inputs off the data: where a diverse ensemble should disagree, or an honest one be unsure.

A function-space regulariser (`hyperkeras.objectives.FunctionSpaceEntropy`,
`hyperkeras.objectives.OutlierEntropy`) looks at the generated networks' predictions on *probe* inputs.
The training batch alone holds the networks together (the task loss fits them all to it); probes off
the data are where they are free to differ. The sources, each built from a batch ``x`` and a stateless
seed pair (every draw is a ``tf.random.stateless_*`` op on a seed from
``tf.random.experimental.stateless_split``: the same seed gives the same probes, in eager mode and
inside a `tf.function`, on any device):

- `mixup_probe` — convex combinations of pairs of batch examples (between the data);
- `noise_perturbed` — copies of the batch with additive Gaussian or uniform noise on an exact fraction
  of the examples (near the data, off its manifold);
- `augmented` — strong augmentations of images: random crops and shifts, rotations, blur, contrast
  (near the data, in directions the data varies little);
- `smooth_noise_images` — procedural multi-octave value noise (far from the data, yet image-like: smooth,
  unlike white noise).

HE-CKA (Smerkous, Bai & Li 2024) trains ensembles and hypernetworks apart on synthetically generated
outliers; these are sources of such inputs.

`make_probes(kind, x, size, seed)` gives ``size`` probes of one kind, in the batch's value range.

Shapes: images ``[B, H, W, C]`` for all of them; flat features ``[B, D]`` for `mixup_probe`,
`noise_perturbed` and `smooth_noise_images` (1-D value noise along D); `augmented` needs images.

Costs (a batch of 64 Fashion-MNIST images 28×28×1 → 64 probes, `make_probes` inside a `tf.function`,
median of 20 calls, CPU with 2 cores shared with other jobs): mixup 0.6 ms, noise 1.6 ms, augment 2.2 ms
(16 ms with ``blur="gaussian"``), smooth_noise 1.4 ms; eager calls 1.6–11 ms. Small next to the K forward
passes of the networks on the probes that every probe-based term pays.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

__all__ = [
    "PROBE_KINDS",
    "augmented",
    "make_probes",
    "mixup_probe",
    "noise_perturbed",
    "smooth_noise_images",
]

PROBE_KINDS = ("mixup", "noise", "augment", "smooth_noise")
NOISE_KINDS = ("gaussian", "uniform")
BLURS = ("resize", "gaussian")


def _seed_pair(seed, who):
    """The seed as an int32/int64 tensor of shape [2] (a stateless seed pair), or a ValueError."""
    if seed is None:
        raise ValueError(f"{who} needs a stateless seed pair (two ints, e.g. (0, 1)), got None.")
    s = tf.convert_to_tensor(seed)
    if s.dtype not in (tf.int32, tf.int64):
        if not s.dtype.is_integer:
            raise ValueError(f"{who}: the seed must be a pair of ints, got dtype {s.dtype.name}.")
        s = tf.cast(s, tf.int64)
    if s.shape.rank != 1 or (s.shape[0] is not None and s.shape[0] != 2):
        raise ValueError(f"{who}: the seed must be a pair of ints (shape [2]), got shape {s.shape}.")
    return s


def _split(seed, num, who):
    """`num` independent stateless seed pairs ``[num, 2]`` from one."""
    return tf.random.experimental.stateless_split(_seed_pair(seed, who), num)


def _as_float(x, who):
    """x as a floating tensor (integer data, e.g. uint8 pixels, becomes float32)."""
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    if x.shape.rank is None or x.shape.rank < 2:
        raise ValueError(f"{who} needs a batch [B, ...] of rank >= 2, got shape {x.shape}.")
    return x


def _value_range(x, value_range):
    """``(lo, hi)`` as tensors of x's dtype: the given range, or the batch's own minimum and maximum."""
    if value_range is None:
        return tf.stop_gradient(tf.reduce_min(x)), tf.stop_gradient(tf.reduce_max(x))
    lo, hi = value_range
    return tf.cast(lo, x.dtype), tf.cast(hi, x.dtype)


def _pair(value, who, name):
    lo, hi = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if not float(lo) <= float(hi):
        raise ValueError(f"{who}: {name} must be a number or a pair (lo, hi) with lo <= hi, got {value!r}.")
    return float(lo), float(hi)


def _cycle(x, size):
    """``size`` examples of the batch: x[i mod B] for i = 0..size−1 (the batch repeated when size > B)."""
    return tf.gather(x, tf.range(size) % tf.shape(x)[0])


def mixup_probe(inputs, size, seed):
    """`size` convex combinations ``λ x_i + (1 − λ) x_j`` of batch examples: inputs between the training
    examples, where a diverse ensemble should disagree (Zhang et al. 2018, mixup).

    i = 0..size−1 and j = i + size, both modulo the batch (j = i + 1 where that is i: when `size` is a
    multiple of B, so that no probe is a copy of an example unless B = 1); λ ~ U(0, 1) per example,
    ``tf.random.stateless_uniform([size, 1, ...], seed)``. Any rank (images or flat features).
    Cost: one gather and one multiply-add of ``size`` examples.

    Args:
        inputs: the batch ``[B, ...]`` (floating).
        size: number of probes.
        seed: stateless seed pair.

    Returns:
        ``[size, ...]`` in the dtype of `inputs`.
    """
    x = tf.convert_to_tensor(inputs)
    n = tf.shape(x)[0]
    i = tf.range(size) % n
    j = (i + size) % n
    j = tf.where(tf.equal(j, i), (i + 1) % n, j)  # size a multiple of B paired each example with itself
    lam = tf.random.stateless_uniform([size] + [1] * (x.shape.rank - 1), seed=seed, dtype=x.dtype)
    return lam * tf.gather(x, i) + (1.0 - lam) * tf.gather(x, j)


def noise_perturbed(x, fraction, seed, kind="gaussian", scale=0.5, value_range=None, return_mask=False):
    """The batch with additive noise on exactly ``round(fraction · B)`` of its examples (the others as they are).

    Draws (``s0, s1 = stateless_split(seed, 2)``): the perturbed examples are the ``m = round(fraction · B)``
    (round half to even, as ``np.round``) with the smallest ``stateless_uniform([B], s0)``; the noise is
    ``scale · stateless_normal(x.shape, s1)`` (``kind="gaussian"``) or ``stateless_uniform(x.shape, s1,
    −scale, scale)`` (``"uniform"``), clipped to `value_range` when one is given. Any rank.
    Cost: two random draws of the batch's size, a sort of B numbers, elementwise ops.

    Args:
        x: the batch ``[B, ...]``.
        fraction: share of the batch to perturb, in [0, 1].
        seed: stateless seed pair.
        kind: ``"gaussian"`` (standard deviation `scale`) or ``"uniform"`` (on [−scale, scale]).
        scale: noise amplitude in the data's units (>= 0).
        value_range: ``(lo, hi)`` to clip the perturbed examples to, or None (no clipping).
        return_mask: also return the boolean ``[B]`` mask of the perturbed examples.

    Returns:
        ``[B, ...]`` in x's (floating) dtype; with `return_mask`, ``(perturbed, mask)``.
    """
    who = "noise_perturbed"
    if kind not in NOISE_KINDS:
        raise ValueError(f"{who}: kind must be one of {NOISE_KINDS}, got {kind!r}.")
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"{who}: fraction must be in [0, 1], got {fraction!r}.")
    if isinstance(scale, (int, float)) and not float(scale) >= 0:
        raise ValueError(f"{who}: scale must be >= 0, got {scale!r}.")
    x = _as_float(x, who)
    s = _split(seed, 2, who)
    b = tf.shape(x)[0]
    m = tf.cast(tf.round(float(fraction) * tf.cast(b, tf.float64)), tf.int32)
    order = tf.argsort(tf.random.stateless_uniform([b], seed=s[0]))
    mask = tf.scatter_nd(order[:m, None], tf.ones([m], tf.bool), [b])
    scale = tf.cast(scale, x.dtype)
    if kind == "gaussian":
        noise = scale * tf.random.stateless_normal(tf.shape(x), seed=s[1], dtype=x.dtype)
    else:
        noise = tf.random.stateless_uniform(tf.shape(x), seed=s[1], minval=-1.0, maxval=1.0, dtype=x.dtype) * scale
    noisy = x + noise
    if value_range is not None:
        lo, hi = _value_range(x, value_range)
        noisy = tf.clip_by_value(noisy, lo, hi)
    out = tf.where(tf.reshape(mask, [-1] + [1] * (x.shape.rank - 1)), noisy, x)
    return (out, mask) if return_mask else out


def augmented(
    x,
    seed,
    crop_scale=(0.6, 1.0),
    shift=0.2,
    rotation=45.0,
    contrast=(0.4, 1.6),
    blur_sigma=1.5,
    blur="resize",
    value_range=None,
):
    """Strong augmentations of images ``[B, H, W, C]``, each example its own draw (stateless, seeded).

    In order (``s0..s5 = stateless_split(seed, 6)``; every parameter uniform in its range, per example):

    1. crop and shift — `tf.image.crop_and_resize` of a square box of side ``crop_scale`` (a fraction of
       the image), its centre moved up to ``shift`` of the image from the middle (s0: side, s1: centre);
       what falls outside the image is filled with the range's low end (the background);
    2. rotation — `keras.ops.image.affine_transform` (the op behind `keras.layers.RandomRotation`) by an
       angle in ``±rotation`` degrees, or in ``rotation = (lo, hi)`` (s2), about the centre, bilinear;
    3. blur of about ``blur_sigma`` pixels, mixed with the unblurred image by a weight α ~ U(0, 1) (s3): a
       blur of random strength. ``blur="resize"`` (default): `tf.image.resize` down by ``f = 2σ`` (area)
       and back up (bilinear) — a box of width f then a tent of width 2f, standard deviation f/2 = σ;
       ``blur="gaussian"``: `keras.ops.image.gaussian_blur` (kernel 2⌈2σ⌉ + 1), the exact Gaussian, far
       slower on CPU (a depthwise convolution: the whole call takes 16 ms instead of 2 ms for 64 images
       28×28).
       ``blur_sigma=0`` skips it;
    4. contrast — ``(x − mean) · f + mean`` per image and channel with f in ``contrast`` (s4): the formula
       of `tf.image.adjust_contrast`, which takes one factor per call;
    5. clipping to the value range.

    A layer of `keras.layers` would draw from its own stateful `keras.random.SeedGenerator`; the ops
    behind those layers take the per-example parameters drawn here from the stateless seed instead.
    Setting ``crop_scale=(1, 1), shift=0, rotation=0, contrast=(1, 1), blur_sigma=0`` gives x back.
    Cost: four bilinear resamplings (two with ``blur="gaussian"``, and a depthwise convolution) and a
    few elementwise ops of the batch.

    Args:
        x: images ``[B, H, W, C]`` (H, W, C known).
        seed: stateless seed pair.
        crop_scale: ``(lo, hi)`` side of the crop box as a fraction of the image's side, in (0, ∞).
        shift: largest move of the box's centre, as a fraction of the image's side (>= 0).
        rotation: largest absolute angle in degrees, or a range ``(lo, hi)``.
        contrast: ``(lo, hi)`` contrast factors (1 leaves the image).
        blur_sigma: standard deviation of the blur in pixels (0: no blur).
        blur: ``"resize"`` or ``"gaussian"`` (see 3.).
        value_range: ``(lo, hi)`` of the data, or None for the batch's own minimum and maximum.

    Returns:
        ``[B, H, W, C]`` in x's (floating) dtype, within the value range.
    """
    who = "augmented"
    x = _as_float(x, who)
    if x.shape.rank != 4 or None in x.shape[1:]:
        raise ValueError(f"{who} needs images [B, H, W, C] with H, W, C known, got shape {x.shape}.")
    c_lo, c_hi = _pair(crop_scale, who, "crop_scale")
    if not c_lo > 0:
        raise ValueError(f"{who}: crop_scale must be > 0, got {crop_scale!r}.")
    if not float(shift) >= 0:
        raise ValueError(f"{who}: shift must be >= 0, got {shift!r}.")
    r_lo, r_hi = (-abs(float(rotation)), abs(float(rotation))) if isinstance(rotation, (int, float)) else rotation
    r_lo, r_hi = _pair((r_lo, r_hi), who, "rotation")
    f_lo, f_hi = _pair(contrast, who, "contrast")
    if not f_lo >= 0:
        raise ValueError(f"{who}: contrast factors must be >= 0, got {contrast!r}.")
    if not float(blur_sigma) >= 0:
        raise ValueError(f"{who}: blur_sigma must be >= 0, got {blur_sigma!r}.")
    if blur not in BLURS:
        raise ValueError(f"{who}: blur must be one of {BLURS}, got {blur!r}.")
    dtype = x.dtype
    work = tf.float64 if dtype == tf.float64 else tf.float32
    h, w = int(x.shape[1]), int(x.shape[2])
    b = tf.shape(x)[0]
    s = _split(seed, 6, who)
    lo, hi = _value_range(x, value_range)
    z = tf.cast(x - lo, work)  # the background at 0, so that the ops' zero fill is the background

    # 1. crop and shift
    side = tf.random.stateless_uniform([b, 1], seed=s[0], minval=c_lo, maxval=c_hi)
    centre = 0.5 + tf.random.stateless_uniform([b, 2], seed=s[1], minval=-float(shift), maxval=float(shift))
    boxes = tf.concat([centre - side / 2, centre + side / 2], axis=1)  # [y1, x1, y2, x2], normalised
    z = tf.cast(tf.image.crop_and_resize(z, boxes, tf.range(b), [h, w], method="bilinear"), work)

    # 2. rotation about the centre: output pixel (col, row) reads input R(θ)ᵀ((col, row) − c) + c
    theta = tf.random.stateless_uniform([b], seed=s[2], minval=r_lo, maxval=r_hi) * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    zeros = tf.zeros_like(cos)
    transform = tf.stack(
        [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy, zeros, zeros], axis=1
    )
    z = keras.ops.image.affine_transform(z, transform, interpolation="bilinear", fill_mode="constant", fill_value=0)

    # 3. blur of random strength
    if float(blur_sigma) > 0:
        sigma = float(blur_sigma)
        if blur == "gaussian":
            k = 2 * math.ceil(2 * sigma) + 1
            blurred = keras.ops.image.gaussian_blur(z, kernel_size=(k, k), sigma=(sigma, sigma))
        else:
            small = [min(h, max(1, round(h / (2 * sigma)))), min(w, max(1, round(w / (2 * sigma))))]
            blurred = tf.image.resize(tf.image.resize(z, small, method="area"), [h, w], method="bilinear")
        alpha = tf.random.stateless_uniform([b, 1, 1, 1], seed=s[3], dtype=work)
        z = z + alpha * (tf.cast(blurred, work) - z)

    # 4. contrast
    factor = tf.random.stateless_uniform([b, 1, 1, 1], seed=s[4], minval=f_lo, maxval=f_hi, dtype=work)
    mean = tf.reduce_mean(z, axis=[1, 2], keepdims=True)
    z = (z - mean) * factor + mean

    return tf.clip_by_value(tf.cast(z, dtype) + lo, lo, hi)


def smooth_noise_images(n, shape, seed, octaves=4, base_grid=2, value_range=(0.0, 1.0), stretch=True, dtype="float32"):
    """`n` images of smooth multi-octave value noise, in `value_range`.

    Octave o = 0..octaves−1 is a grid of ``g_o = base_grid · 2^o`` (capped at the image's side) values
    ``stateless_uniform([n, g_o, g_o, C], s_o)`` (``s_o = stateless_split(seed, octaves)[o]``), upsampled
    to H × W with `tf.image.resize` (bilinear) and weighted ``2^−o``; the sum, divided by the sum of the
    weights, lies in [0, 1]. With `stretch`, each image is then mapped affinely from its own minimum and
    maximum onto `value_range` (full contrast, like data); otherwise [0, 1] is. For flat features
    ``shape = (D,)`` the grids are ``[n, g_o, 1, 1]`` resized to ``[n, D, 1, 1]`` (1-D noise along D).
    Channels are independent. Cost: ``octaves`` small draws and bilinear resizes of n images.

    Args:
        n: number of images.
        shape: one image's shape ``(H, W, C)`` (or ``(D,)``), known ints.
        seed: stateless seed pair.
        octaves: number of octaves (>= 1).
        base_grid: side of the coarsest grid (>= 1); the feature size is about side / base_grid.
        value_range: ``(lo, hi)`` of the output (numbers or scalar tensors).
        stretch: stretch each image to the whole range (True) or map [0, 1] onto it (False).
        dtype: output dtype (floating).

    Returns:
        ``[n, *shape]``.

    Reference:
        Perlin, "An image synthesizer" (SIGGRAPH 1985) for the octave sum; Smerkous, Bai & Li, "Enhancing
        Diversity in Bayesian Deep Learning via Hyperspherical Energy Minimization of CKA" (NeurIPS 2024)
        for synthetic outliers as the inputs on which an ensemble should differ.
    """
    who = "smooth_noise_images"
    shape = tuple(int(d) for d in shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"{who}: shape must be (H, W, C) or (D,) of positive ints, got {shape!r}.")
    if isinstance(octaves, bool) or int(octaves) != octaves or octaves < 1:
        raise ValueError(f"{who}: octaves must be a positive int, got {octaves!r}.")
    if isinstance(base_grid, bool) or int(base_grid) != base_grid or base_grid < 1:
        raise ValueError(f"{who}: base_grid must be a positive int, got {base_grid!r}.")
    dtype = tf.as_dtype(dtype)
    if not dtype.is_floating:
        raise ValueError(f"{who}: dtype must be floating, got {dtype.name}.")
    h, w, c = shape if len(shape) == 3 else (shape[0], 1, 1)
    seeds = _split(seed, int(octaves), who)
    total = tf.zeros([n, h, w, c], tf.float32)
    weights = 0.0
    for o in range(int(octaves)):
        g = int(base_grid) * 2**o
        gh, gw = min(g, h), min(g, w)
        grid = tf.random.stateless_uniform([n, gh, gw, c], seed=seeds[o])
        total += 2.0**-o * tf.image.resize(grid, [h, w], method="bilinear")
        weights += 2.0**-o
    v = total / weights
    if stretch:
        v_min = tf.reduce_min(v, axis=[1, 2, 3], keepdims=True)
        v_max = tf.reduce_max(v, axis=[1, 2, 3], keepdims=True)
        v = (v - v_min) / tf.maximum(v_max - v_min, 1e-12)
    v = tf.cast(tf.reshape(v, [n, *shape]), dtype)
    lo, hi = value_range
    lo, hi = tf.cast(lo, dtype), tf.cast(hi, dtype)
    return tf.clip_by_value(lo + (hi - lo) * v, lo, hi)


def make_probes(kind, x, size, seed, **options):
    """``size`` probe inputs of one kind from the batch `x`, in the batch's value range.

    - ``"mixup"``: `mixup_probe` (options: none);
    - ``"noise"``: `noise_perturbed` of the examples x[i mod B], i < size, all of them perturbed and clipped
      to the batch's range; options ``kind`` (``"gaussian"``) and ``scale`` (default: half the batch's
      range, max − min);
    - ``"augment"``: `augmented` of the examples x[i mod B], i < size (images only); its options;
    - ``"smooth_noise"``: `smooth_noise_images` of x's example shape, in the batch's range (min, max);
      options ``octaves``, ``base_grid``, ``stretch``.

    The value range is the batch's own minimum and maximum (no gradient). Graph-safe; deterministic in
    `seed`. Costs: see the module's docstring.

    Args:
        kind: one of `PROBE_KINDS`.
        x: the batch ``[B, ...]`` (integer data is cast to float32).
        size: number of probes (a positive int).
        seed: stateless seed pair.
        **options: passed to the source.

    Returns:
        ``[size, *x.shape[1:]]`` in x's floating dtype.
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"make_probes: kind must be one of {PROBE_KINDS}, got {kind!r}.")
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ValueError(f"make_probes: size must be a positive int, got {size!r}.")
    size = int(size)
    x = _as_float(x, f"make_probes({kind!r})")
    if kind == "mixup":
        if options:
            raise TypeError(f"make_probes('mixup') takes no options, got {sorted(options)}.")
        return mixup_probe(x, size, seed)
    lo, hi = _value_range(x, None)
    if kind == "noise":
        options.setdefault("scale", 0.5 * (hi - lo))
        return noise_perturbed(_cycle(x, size), 1.0, seed, value_range=(lo, hi), **options)
    if kind == "augment":
        if x.shape.rank != 4:
            raise ValueError(f"make_probes('augment') needs images [B, H, W, C], got shape {x.shape}.")
        return augmented(_cycle(x, size), seed, value_range=(lo, hi), **options)
    if None in x.shape[1:]:
        raise ValueError(f"make_probes('smooth_noise') needs the example shape known, got {x.shape}.")
    return smooth_noise_images(size, x.shape[1:], seed, value_range=(lo, hi), dtype=x.dtype, **options)

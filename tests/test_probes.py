"""hyperkeras.probes: shapes, seeds, tf.function, value ranges, and NumPy references with the same draws."""

import numpy as np
import pytest
import tensorflow as tf

from hyperkeras import probes
from hyperkeras.data import load_arrays

SEED = (3, 7)


@pytest.fixture(scope="module")
def images():
    x, _ = load_arrays("fashion_mnist", "train")
    return x[:64]  # [64, 28, 28, 1] float32 in [0, 1]


def _split(seed, n):
    return tf.random.experimental.stateless_split(tf.constant(seed), n).numpy()


def numpy_bilinear(grid, h, w):
    """`tf.image.resize(..., "bilinear")` (half-pixel centres, no antialias on upsampling) in NumPy."""
    n, gh, gw, c = grid.shape

    def coords(out, size):
        src = np.clip((np.arange(out) + 0.5) * size / out - 0.5, 0, size - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, size - 1)
        return i0, i1, src - i0

    y0, y1, fy = coords(h, gh)
    x0, x1, fx = coords(w, gw)
    top = grid[:, y0][:, :, x0] * (1 - fx)[None, None, :, None] + grid[:, y0][:, :, x1] * fx[None, None, :, None]
    bot = grid[:, y1][:, :, x0] * (1 - fx)[None, None, :, None] + grid[:, y1][:, :, x1] * fx[None, None, :, None]
    return top * (1 - fy)[None, :, None, None] + bot * fy[None, :, None, None]


# ---------------------------------------------------------------------------------------------- every kind
@pytest.mark.parametrize("kind", probes.PROBE_KINDS)
def test_make_probes_shape_dtype_range_and_seeds(kind, images):
    x = tf.constant(images)
    p = probes.make_probes(kind, x, 40, SEED)
    assert p.shape == (40, 28, 28, 1) and p.dtype == tf.float32
    p = p.numpy()
    assert np.all(np.isfinite(p))
    assert p.min() >= images.min() - 1e-6 and p.max() <= images.max() + 1e-6
    np.testing.assert_array_equal(probes.make_probes(kind, x, 40, SEED).numpy(), p)  # same seed, same probes
    other = probes.make_probes(kind, x, 40, (3, 8)).numpy()
    assert np.mean(np.abs(other - p)) > 1e-3  # another seed, other probes
    graph = tf.function(lambda x, s: probes.make_probes(kind, x, 40, s))
    np.testing.assert_allclose(graph(x, tf.constant(SEED)).numpy(), p, atol=1e-5)
    np.testing.assert_allclose(graph(x, tf.constant([3, 8])).numpy(), other, atol=1e-5)  # no retrace needed


@pytest.mark.parametrize("kind", ["mixup", "noise", "smooth_noise"])
def test_make_probes_on_flat_features(kind):
    x = np.random.default_rng(0).uniform(-2, 3, size=(16, 10)).astype(np.float32)
    p = probes.make_probes(kind, x, 8, SEED).numpy()
    assert p.shape == (8, 10)
    assert p.min() >= x.min() - 1e-6 and p.max() <= x.max() + 1e-6


def test_make_probes_float64_keeps_dtype(images):
    for kind in probes.PROBE_KINDS:
        assert probes.make_probes(kind, images.astype(np.float64), 4, SEED).dtype == tf.float64


def test_make_probes_refuses_bad_arguments(images):
    with pytest.raises(ValueError, match="kind must be one of"):
        probes.make_probes("white", images, 4, SEED)
    with pytest.raises(ValueError, match="size must be a positive int"):
        probes.make_probes("noise", images, 0, SEED)
    with pytest.raises(ValueError, match="needs images"):
        probes.make_probes("augment", images.reshape(64, -1), 4, SEED)
    with pytest.raises(ValueError, match="pair of ints"):
        probes.make_probes("noise", images, 4, (1, 2, 3))
    with pytest.raises(ValueError, match="pair of ints"):
        probes.make_probes("smooth_noise", images, 4, (0.5, 1.0))


# ---------------------------------------------------------------------------------------------- mixup
def test_mixup_matches_numpy_and_old_path(images):
    from hyperkeras.objectives import function_space

    assert function_space.mixup_probe is probes.mixup_probe
    got = probes.make_probes("mixup", images, 40, SEED).numpy()
    lam = tf.random.stateless_uniform([40, 1, 1, 1], seed=SEED).numpy()
    i = np.arange(40) % 64
    j = (i + 40) % 64
    np.testing.assert_allclose(got, lam * images[i] + (1 - lam) * images[j], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("size", [64, 128])
def test_mixup_never_pairs_an_example_with_itself(images, size):
    """size a multiple of B gave j = i + size = i (mod B): probes that were copies of batch examples."""
    got = probes.make_probes("mixup", images, size, SEED).numpy()
    lam = tf.random.stateless_uniform([size, 1, 1, 1], seed=SEED).numpy()
    i = np.arange(size) % 64
    np.testing.assert_allclose(got, lam * images[i] + (1 - lam) * images[(i + 1) % 64], rtol=1e-6, atol=1e-7)
    distances = np.abs(got[:, None] - images[None]).reshape(size, 64, -1).max(axis=2)
    assert distances.min() > 1e-3  # no probe equals a batch example


# ---------------------------------------------------------------------------------------------- noise
@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.3, 1.0])
def test_noise_perturbed_matches_numpy_and_fraction_is_exact(kind, fraction, images):
    out, mask = probes.noise_perturbed(
        images, fraction, SEED, kind=kind, scale=0.3, value_range=(0.0, 1.0), return_mask=True
    )
    out, mask = out.numpy(), mask.numpy()
    m = int(np.round(fraction * 64))
    assert mask.sum() == m
    changed = np.any(out != images, axis=(1, 2, 3))
    np.testing.assert_array_equal(changed, mask)  # exactly the masked examples differ
    s0, s1 = _split(SEED, 2)
    chosen = np.argsort(tf.random.stateless_uniform([64], seed=s0).numpy(), kind="stable")[:m]
    want_mask = np.zeros(64, bool)
    want_mask[chosen] = True
    np.testing.assert_array_equal(mask, want_mask)
    if kind == "gaussian":
        noise = 0.3 * tf.random.stateless_normal(images.shape, seed=s1).numpy()
    else:
        noise = 0.3 * tf.random.stateless_uniform(images.shape, seed=s1, minval=-1.0, maxval=1.0).numpy()
    want = np.where(want_mask[:, None, None, None], np.clip(images + noise, 0.0, 1.0), images)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_noise_perturbed_without_range_is_plain_additive(images):
    out = probes.noise_perturbed(images, 1.0, SEED, scale=2.0).numpy()
    noise = out - images
    assert out.min() < -1.0 and out.max() > 2.0  # not clipped
    assert abs(noise.std() - 2.0) < 0.05 and abs(noise.mean()) < 0.05


def test_noise_perturbed_in_tf_function_with_unknown_batch(images):
    f = tf.function(
        lambda x: probes.noise_perturbed(x, 0.5, SEED, return_mask=True),
        input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)],
    )
    for b in (64, 7):
        _, mask = f(images[:b])
        assert int(tf.reduce_sum(tf.cast(mask, tf.int32))) == int(np.round(0.5 * b))


def test_noise_perturbed_refuses_bad_arguments(images):
    with pytest.raises(ValueError, match="fraction must be in"):
        probes.noise_perturbed(images, 1.5, SEED)
    with pytest.raises(ValueError, match="kind must be one of"):
        probes.noise_perturbed(images, 0.5, SEED, kind="salt")
    with pytest.raises(ValueError, match="scale must be >= 0"):
        probes.noise_perturbed(images, 0.5, SEED, scale=-1.0)


# ---------------------------------------------------------------------------------------------- augment
IDENTITY = dict(crop_scale=(1.0, 1.0), shift=0.0, rotation=0.0, contrast=(1.0, 1.0), blur_sigma=0.0)


def test_augmented_identity_settings_give_the_images_back(images):
    got = probes.augmented(images, SEED, **IDENTITY).numpy()
    np.testing.assert_allclose(got, images, atol=1e-6)


def test_augmented_rotation_by_90_degrees_is_rot90(images):
    got = probes.augmented(images, SEED, **{**IDENTITY, "rotation": (90.0, 90.0)}).numpy()
    np.testing.assert_allclose(got, np.rot90(images, k=-1, axes=(1, 2)), atol=1e-5)


def test_augmented_contrast_is_tf_image_adjust_contrast(images):
    got = probes.augmented(images, SEED, **{**IDENTITY, "contrast": (1.5, 1.5)}, value_range=(-10, 10)).numpy()
    want = np.stack([tf.image.adjust_contrast(im, 1.5).numpy() for im in images])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_augmented_crop_of_the_centre_half_is_crop_and_resize(images):
    got = probes.augmented(images, SEED, **{**IDENTITY, "crop_scale": (0.5, 0.5)}).numpy()
    want = tf.image.crop_and_resize(images, [[0.25, 0.25, 0.75, 0.75]] * 64, np.arange(64), [28, 28]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    # ...which, at the sampling points of a 2× zoom, is the NumPy bilinear zoom of the centre
    src = 0.25 * 27 + np.arange(28) * (0.5 * 27 / 27)
    i0 = np.floor(src).astype(int)
    f = src - i0
    rows = images[:, i0] * (1 - f)[None, :, None, None] + images[:, np.minimum(i0 + 1, 27)] * f[None, :, None, None]
    ref = rows[:, :, i0] * (1 - f)[None, None, :, None] + rows[:, :, np.minimum(i0 + 1, 27)] * f[None, None, :, None]
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("blur", ["resize", "gaussian"])
def test_augmented_blur_smooths_and_keeps_the_mean(blur, images):
    sharp = np.mean(np.abs(np.diff(images, axis=2)))
    got = probes.augmented(images, SEED, **{**IDENTITY, "blur_sigma": 1.5}, blur=blur).numpy()
    assert np.mean(np.abs(np.diff(got, axis=2))) < 0.9 * sharp
    np.testing.assert_allclose(got.mean(), images.mean(), rtol=0.1)


def test_augmented_default_is_strong_and_per_example(images):
    got = probes.augmented(images, SEED).numpy()
    per_example = np.mean(np.abs(got - images), axis=(1, 2, 3))
    assert np.median(per_example) > 0.05  # far from the originals
    assert len(np.unique(np.round(per_example, 6))) == 64  # every example its own draw


def test_augmented_refuses_bad_arguments(images):
    with pytest.raises(ValueError, match="crop_scale"):
        probes.augmented(images, SEED, crop_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="blur must be one of"):
        probes.augmented(images, SEED, blur="box")
    with pytest.raises(ValueError, match=r"needs images \[B, H, W, C\]"):
        probes.augmented(images[..., 0], SEED)


# ---------------------------------------------------------------------------------------------- smooth noise
def test_smooth_noise_matches_numpy_value_noise():
    n, h, w, c = 5, 28, 28, 2
    got = probes.smooth_noise_images(n, (h, w, c), SEED, octaves=3, base_grid=2, value_range=(-1.0, 3.0)).numpy()
    seeds = _split(SEED, 3)
    total = np.zeros((n, h, w, c))
    for o in range(3):
        g = 2 * 2**o
        grid = tf.random.stateless_uniform([n, g, g, c], seed=seeds[o]).numpy().astype(np.float64)
        total += 2.0**-o * numpy_bilinear(grid, h, w)
    v = total / (1 + 0.5 + 0.25)
    v_min, v_max = v.min(axis=(1, 2, 3), keepdims=True), v.max(axis=(1, 2, 3), keepdims=True)
    want = -1.0 + 4.0 * (v - v_min) / (v_max - v_min)
    np.testing.assert_allclose(got, want, atol=2e-5)
    flat = probes.smooth_noise_images(n, (h, w, c), SEED, octaves=3, value_range=(0.0, 1.0), stretch=False).numpy()
    np.testing.assert_allclose(flat, v, atol=2e-6)


def test_smooth_noise_is_smooth_unlike_white_noise():
    got = probes.smooth_noise_images(64, (28, 28, 1), SEED).numpy()
    white = tf.random.stateless_uniform([64, 28, 28, 1], seed=SEED).numpy()  # the same range, [0, 1]
    assert got.min() == pytest.approx(0.0, abs=1e-6) and got.max() == pytest.approx(1.0, abs=1e-6)
    for axis in (1, 2):
        smooth_step = np.mean(np.abs(np.diff(got, axis=axis)))
        white_step = np.mean(np.abs(np.diff(white, axis=axis)))
        assert smooth_step < 0.2 * white_step, (axis, smooth_step, white_step)
    # the spectrum: most of the power at low spatial frequencies
    power = np.abs(np.fft.fft2(got[..., 0] - got[..., 0].mean(axis=(1, 2), keepdims=True))) ** 2
    freq = np.abs(np.fft.fftfreq(28))
    low = (freq[:, None] <= 0.125) & (freq[None, :] <= 0.125)
    assert power[:, low].sum() / power.sum() > 0.8


def test_smooth_noise_flat_features_and_octave_cap():
    got = probes.smooth_noise_images(3, (10,), SEED, octaves=6).numpy()  # grids 2..64 capped at 10
    assert got.shape == (3, 10) and got.min() >= 0 and got.max() <= 1


def test_smooth_noise_refuses_bad_arguments():
    with pytest.raises(ValueError, match="octaves must be a positive int"):
        probes.smooth_noise_images(2, (8, 8, 1), SEED, octaves=0)
    with pytest.raises(ValueError, match="shape must be"):
        probes.smooth_noise_images(2, (8, 8), SEED)
    with pytest.raises(ValueError, match="dtype must be floating"):
        probes.smooth_noise_images(2, (8, 8, 1), SEED, dtype="int32")

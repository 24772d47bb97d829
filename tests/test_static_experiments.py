"""Hyper Wide ResNet parameter counts (exact) and the static hypernetwork experiments end to end at tiny sizes."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from hyperkeras.data.augmentation import augment
from hyperkeras.layers import HyperConv2D
from hyperkeras.targets import wrn


def _conv3x3_tiles(width):
    """Number of 16×16 tiles of the 36 group kernels of WRN-40-`width`, counted by hand."""
    tiles, cin = 0, 16
    for w in (16 * width, 32 * width, 64 * width):
        for _ in range(6):
            tiles += (cin // 16) * (w // 16) + (w // 16) ** 2
            cin = w
    return tiles


# Hand-derived counts (see docs/results/static.md): stem 3·3·3·16 = 432; generator
# 64·(16·64) + 16·64 + 64·(3·3·16) + 3·3·16 = 75,920; 64 numbers per 16×16×3×3 tile.
@pytest.mark.parametrize(
    "width,hyper,total,without_bn_fc",
    [
        (2, False, 2_243_546, 2_236_848),  # paper: 2.236M (= our count without batch norm and classifier)
        (2, True, 155_626, 148_928),  # paper: 0.148M (idem)
        (1, False, 563_930, 560_560),  # paper: 0.563M (= our total)
        (1, True, 97_770, 94_400),  # paper: 0.097M (idem)
    ],
)
def test_wrn40_parameter_counts(width, hyper, total, without_bn_fc):
    model = wrn.wide_resnet(40, width, hyper=hyper)
    counts = wrn.parameter_breakdown(model)
    assert counts["total"] == total == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert counts["total"] - counts["batchnorm"] - counts["dense"] == without_bn_fc
    assert counts["non_trainable"] == counts["batchnorm"]  # moving mean and variance
    if hyper:
        hyper_layers = [l for l in model.layers if isinstance(l, HyperConv2D)]  # noqa: E741
        assert len(hyper_layers) == 36
        assert len({id(l.generator) for l in hyper_layers}) == 1  # one generator for all 36 kernels
        assert counts["generator"] == 64 * 16 * 64 + 16 * 64 + 64 * 144 + 144 == 75_920
        assert counts["embeddings"] == 64 * _conv3x3_tiles(width)
        assert counts["conv3x3"] == 0
    else:
        assert counts["conv3x3"] == 9 * 16 * _conv3x3_tiles(width) * 16


def test_hyper_wrn_forward_matches_plain_wrn_with_generated_kernels():
    """A Hyper WRN equals the ordinary WRN whose 3×3 kernels are set to the generated ones."""
    hyper = wrn.wide_resnet(10, 2, hyper=True, num_classes=5)
    plain = wrn.wide_resnet(10, 2, hyper=False, num_classes=5)
    for hl, pl in zip(hyper.layers, plain.layers):
        assert hl.name == pl.name
        if isinstance(hl, HyperConv2D):
            pl.kernel.assign(keras.ops.convert_to_numpy(hl.kernel))
        else:
            pl.set_weights(hl.get_weights())
    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(hyper(x)), keras.ops.convert_to_numpy(plain(x)), rtol=1e-4, atol=1e-4
    )


def test_weight_decay_is_half_lambda_sum_of_squares():
    model = wrn.wide_resnet(10, 1, hyper=True, weight_decay=5e-4)
    model(np.zeros((1, 32, 32, 3), "float32"))
    decayed = [w for w in model.trainable_weights if w.path.endswith(("kernel", "embeddings"))]
    expected = 2.5e-4 * sum(float(np.sum(w.numpy() ** 2)) for w in decayed)
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-4)


def test_augment_pads_crops_and_flips():
    images = tf.reshape(tf.range(2 * 32 * 32 * 3, dtype=tf.float32), (2, 32, 32, 3)) + 1.0
    out = augment(images, tf.constant(7, tf.int64), 0).numpy()
    assert out.shape == (2, 32, 32, 3)
    padded = np.pad(images.numpy(), [(0, 0), (4, 4), (4, 4), (0, 0)])
    for b in range(2):  # every output is some 32×32 window of the padded image, maybe mirrored
        windows = [padded[b, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        assert any(np.array_equal(out[b], w) or np.array_equal(out[b], w[:, ::-1]) for w in windows)
    np.testing.assert_array_equal(out, augment(images, tf.constant(7, tf.int64), 0).numpy())  # stateless


def test_wrn_rejects_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        wrn.wide_resnet(41, 2)


def _run(repo_root, module, *flags):
    proc = subprocess.run(
        [sys.executable, "-m", module, *flags], cwd=repo_root, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("hyper", ["false"])  # hyper=true: test_quick_runs (static_wrn --quick)
def test_static_wrn_end_to_end_on_random_images(repo_root, tmp_path, hyper):
    out = tmp_path / f"wrn_{hyper}"
    _run(
        repo_root,
        "experiments.static_wrn",
        f"--output_dir={out}",
        "--dataset=random",
        "--random_size=48",
        "--depth=10",
        "--width=1",
        "--steps=2",
        "--batch_size=8",
        f"--hyper={hyper}",
    )
    metrics = json.loads((out / "metrics.json").read_text())
    counts = metrics["params"]
    assert metrics["steps"] == 2 and metrics["lr_boundaries"] == [1, 1, 2]
    assert (counts["generator"] > 0) == (hyper == "true")
    assert (out / "model.keras").exists() and (out / "report.md").exists()

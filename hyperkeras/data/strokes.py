"""Pen-stroke sequences and the mixture-density output of the handwriting model (Graves 2013).

A sequence is a ``[T, 3]`` float32 array of pen offsets (dx, dy) and an end-of-stroke bit. `load_strokes`
reads IAM-OnDB line-stroke XML files (not redistributable: register at
https://fki.tic.heia-fr.ch/databases/iam-on-line-handwriting-database and extract ``lineStrokes-all.tar.gz``),
a ``strokes.npz`` file, or generates synthetic cursive-like lines. `mdn_nll` is the negative
log-likelihood (nats) of a bivariate Gaussian mixture for the offsets and a Bernoulli for end-of-stroke.
"""

from __future__ import annotations

import glob
import math
import os

import numpy as np
import tensorflow as tf


def read_iam_xml(path):
    """One IAM-OnDB line-stroke XML file -> `[T, 3]` (dx, dy, end_of_stroke) with y pointing up."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    points = []
    for stroke in root.iter("Stroke"):
        pts = [(float(p.get("x")), -float(p.get("y"))) for p in stroke.iter("Point")]
        for k, (x, y) in enumerate(pts):
            points.append((x, y, 1.0 if k == len(pts) - 1 else 0.0))
    if len(points) < 2:
        raise ValueError(f"{path}: fewer than two pen points.")
    p = np.asarray(points, dtype="float32")
    out = np.zeros_like(p)
    out[1:, :2] = p[1:, :2] - p[:-1, :2]
    out[:, 2] = p[:, 2]
    return out


def synthetic_strokes(n, seed=0, min_len=250, max_len=450):
    """Cursive-like lines: loops written left to right, a pen lift between words of 3-7 letters."""
    rng = np.random.RandomState(seed)
    seqs = []
    for _ in range(n):
        length = rng.randint(min_len, max_len + 1)
        pts, x0 = [], 0.0
        while len(pts) < length:
            letters = rng.randint(3, 8)
            steps_per = rng.randint(8, 14)
            t = np.linspace(0, 2 * np.pi * letters, letters * steps_per, endpoint=False)
            slant, height, width = rng.uniform(0.1, 0.4), rng.uniform(0.8, 1.2), rng.uniform(0.5, 0.8)
            y = height * (1 - np.cos(t)) / 2 * (1 + 0.3 * np.sin(t / letters * rng.uniform(0.5, 2.0)))
            x = x0 + width * t / (2 * np.pi) + 0.35 * np.sin(t) + slant * y
            x, y = x + rng.normal(0, 0.02, len(t)), y + rng.normal(0, 0.02, len(t))
            for k in range(len(t)):
                pts.append((x[k], y[k], 1.0 if k == len(t) - 1 else 0.0))
            x0 = x[-1] + rng.uniform(0.8, 1.5)
        p = np.asarray(pts[:length], dtype="float32")
        p[-1, 2] = 1.0
        out = np.zeros_like(p)
        out[1:, :2] = p[1:, :2] - p[:-1, :2]
        out[:, 2] = p[:, 2]
        seqs.append(out * np.array([10.0, 10.0, 1.0], "float32"))
    return seqs


def load_strokes(name, data_dir=None, n_synthetic=256, seed=0, max_sequences=None):
    """Returns a list of `[T, 3]` float32 arrays (dx, dy, end_of_stroke), in a fixed order."""
    if name == "synthetic":
        seqs = synthetic_strokes(n_synthetic, seed)
    elif name == "strokes":
        path = os.path.join(data_dir or "", "strokes.npz")
        if not data_dir or not os.path.isfile(path):
            raise FileNotFoundError(f"--dataset=strokes needs strokes.npz in --data_dir (got {data_dir!r}).")
        seqs = [np.asarray(s, "float32") for s in np.load(path, allow_pickle=True)["strokes"]]
    elif name == "iam":
        files = sorted(glob.glob(os.path.join(data_dir or "", "**", "*.xml"), recursive=True)) if data_dir else []
        if not files:
            raise FileNotFoundError(
                f"--dataset=iam: no IAM-OnDB stroke XML files under --data_dir={data_dir!r}. The data set is not "
                "redistributable: register at https://fki.tic.heia-fr.ch/databases/iam-on-line-handwriting-database, "
                "download lineStrokes-all.tar.gz and extract it there. Use --dataset=synthetic to try the model."
            )
        files = files[:max_sequences] if max_sequences else files
        seqs = [read_iam_xml(f) for f in files]
    else:
        raise ValueError(f"--dataset must be one of iam, strokes, synthetic; got {name!r}.")
    for k, s in enumerate(seqs):
        if s.ndim != 2 or s.shape[1] != 3:
            raise ValueError(f"stroke sequence {k} has shape {s.shape}; expected [T, 3] (dx, dy, end_of_stroke).")
    return seqs[:max_sequences] if max_sequences else seqs


def mdn_split(out, mixtures):
    """Raw head output [..., 6M + 1] -> (log_pi, mu1, mu2, log_s1, log_s2, rho, eos_logit)."""
    logit_pi, mu1, mu2, log_s1, log_s2, rho_raw, eos = tf.split(out, [mixtures] * 6 + [1], axis=-1)
    return tf.nn.log_softmax(logit_pi), mu1, mu2, log_s1, log_s2, tf.tanh(rho_raw) * 0.999, eos[..., 0]


def mdn_nll(target, out, mixtures):
    """Per-step negative log-likelihood (nats) of target [..., 3] under the mixture-density output.

    Written out (Graves 2013, eqs. 23-26) rather than built from `tfp.distributions`: one fused
    expression in log space with the correlation clipped at ±0.999, no distribution objects per step;
    tests/test_tfp_references.py checks it against ``tfd.MixtureSameFamily(tfd.Categorical,
    tfd.MultivariateNormalTriL)`` + ``tfd.Bernoulli``."""
    log_pi, mu1, mu2, log_s1, log_s2, rho, eos_logit = mdn_split(out, mixtures)
    x1, x2, e = target[..., :1], target[..., 1:2], target[..., 2]
    z1, z2 = (x1 - mu1) * tf.exp(-log_s1), (x2 - mu2) * tf.exp(-log_s2)
    one_m = 1.0 - tf.square(rho)
    log_n = (
        -math.log(2 * math.pi)
        - log_s1
        - log_s2
        - 0.5 * tf.math.log(one_m)
        - (tf.square(z1) + tf.square(z2) - 2 * rho * z1 * z2) / (2 * one_m)
    )
    nll_xy = -tf.reduce_logsumexp(log_pi + log_n, axis=-1)
    nll_e = tf.nn.sigmoid_cross_entropy_with_logits(labels=e, logits=eos_logit)
    return nll_xy + nll_e

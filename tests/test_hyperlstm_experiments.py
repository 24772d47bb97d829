"""HyperLSTM experiments: corpus and stroke readers, and the mixture-density loss (both binaries
end to end: test_quick_runs)."""

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from hyperkeras.data import strokes, text
from hyperkeras.layers.hyper_lstm_cell import weight_change_intensity


def test_ptb_char_files(tmp_path):
    for split, body in (("train", "a b _ c\nb a\n"), ("valid", "c _ a\n"), ("test", "z a\n")):
        (tmp_path / f"ptb.char.{split}.txt").write_text(body)
    train, valid, test = text.load_corpus("ptb", data_dir=str(tmp_path))
    assert train == ["a", "b", "_", "c", "\n", "b", "a", "\n"]
    assert valid == ["c", "_", "a", "\n"]
    vocab = text.Vocabulary(train)
    assert len(vocab) == 6  # unknown + {\n, _, a, b, c}
    assert vocab.decode(vocab.encode(test)) == [text.UNK, "a", "\n"]  # z is unseen in training
    with pytest.raises(FileNotFoundError, match="ptb.char.train.txt"):
        text.load_corpus("ptb", data_dir=str(tmp_path / "missing"))


def test_enwik8_bytes_and_text_file(tmp_path):
    data = bytes(range(256)) * 2
    (tmp_path / "enwik8").write_bytes(data)
    train, valid, test = text.load_corpus("enwik8", data_dir=str(tmp_path), enwik8_sizes=(400, 50, 50))
    assert (len(train), len(valid), len(test)) == (400, 50, 50)
    assert train[:3] == [0, 1, 2] and valid[0] == 400 % 256 and test[-1] == 499 % 256
    with pytest.raises(ValueError, match="enwik8 splits need"):
        text.load_corpus("enwik8", data_dir=str(tmp_path))
    f = tmp_path / "t.txt"
    f.write_text("héllo wörld " * 20, encoding="utf-8")
    train, valid, test = text.load_corpus("text", text_file=str(f))
    assert "".join(train + valid + test) == "héllo wörld " * 20 and len(train) == int(0.9 * 240)
    with pytest.raises(ValueError, match="--text_file"):
        text.load_corpus("text")
    train, _, _ = text.load_corpus("pydoc")
    assert len(train) > 300_000  # the embedded default corpus


def test_iam_xml_reader(tmp_path):
    xml = """<?xml version="1.0"?><WhiteboardCaptureSession><StrokeSet>
      <Stroke><Point x="10" y="20" time="0"/><Point x="13" y="24" time="1"/><Point x="15" y="24" time="2"/></Stroke>
      <Stroke><Point x="30" y="20" time="3"/><Point x="31" y="18" time="4"/></Stroke>
    </StrokeSet></WhiteboardCaptureSession>"""
    (tmp_path / "a01").mkdir()
    (tmp_path / "a01" / "a01-000u-01.xml").write_text(xml)
    (seq,) = strokes.load_strokes("iam", data_dir=str(tmp_path))
    expected = [[0, 0, 0], [3, -4, 0], [2, 0, 1], [15, 4, 0], [1, 2, 1]]  # y flipped to point up
    np.testing.assert_allclose(seq, expected)
    with pytest.raises(FileNotFoundError, match="not redistributable"):
        strokes.load_strokes("iam", data_dir=str(tmp_path / "none"))
    syn = strokes.synthetic_strokes(3, seed=1)
    assert all(s.shape[1] == 3 and s[-1, 2] == 1 and set(np.unique(s[:, 2])) <= {0.0, 1.0} for s in syn)


def test_mdn_nll_matches_scipy():
    rng = np.random.RandomState(0)
    m = 3
    out = rng.randn(4, 6 * m + 1).astype("float32")
    target = np.concatenate([rng.randn(4, 2), rng.randint(0, 2, (4, 1))], 1).astype("float32")
    got = strokes.mdn_nll(target, out, m).numpy()
    for b in range(4):
        lp, mu1, mu2, ls1, ls2, rr = (out[b, k * m : (k + 1) * m] for k in range(6))
        pi = np.exp(lp) / np.exp(lp).sum()
        rho = np.tanh(rr) * 0.999
        dens = sum(
            pi[j]
            * multivariate_normal.pdf(
                target[b, :2],
                [mu1[j], mu2[j]],
                [
                    [np.exp(2 * ls1[j]), rho[j] * np.exp(ls1[j] + ls2[j])],
                    [rho[j] * np.exp(ls1[j] + ls2[j]), np.exp(2 * ls2[j])],
                ],
            )
            for j in range(m)
        )
        p_eos = 1 / (1 + math.exp(-out[b, -1]))
        want = -math.log(dens) - math.log(p_eos if target[b, 2] else 1 - p_eos)
        assert got[b] == pytest.approx(want, rel=1e-4)


def test_weight_change_intensity():
    scales = np.ones((5, 4, 3))
    scales[2, 1] = 2.0  # gate 1 doubles at step 2 and returns at step 3
    out = weight_change_intensity(scales, percentile=100)
    np.testing.assert_allclose(out[:, 1], [0, 0, 1, 0.5, 0])  # relative change 1.0 then 0.5
    np.testing.assert_allclose(out[:, [0, 2, 3]], 0.0)


# charlm and handwriting end to end: test_quick_runs (their --quick runs check the same outputs).

"""Tests for common/logits.py against a plain float64 numpy oracle (loop over classes, boolean masks)."""
import numpy as np
import pytest
import torch

from common.logits import LogitTracker

K = 21
RTOL = 1e-9


def _logits(b=3, h=17, w=23, seed=0, absent=(5, 13, 20)):
    """Float32 logits whose argmax never hits the classes in ``absent``; background favoured."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2, (b, K, h, w)).astype(np.float32)
    x[:, 0] += 1.5
    for c in absent:
        x[:, c] -= 50
    return x


def _oracle(x, k=K):
    """Plain float64 statistics per predicted class, straight from docs/protocol.md."""
    x = np.asarray(x, dtype=np.float64)
    pix = x.transpose(0, 2, 3, 1).reshape(-1, k)
    pred = pix.argmax(1)
    out = {"count": np.zeros(k), "sum": np.zeros((k, k)), "sq": np.zeros((k, k, k)),
           "mean": np.full((k, k), np.nan), "cov": np.full((k, k, k), np.nan),
           "corr": np.full((k, k, k), np.nan)}
    for n in range(k):
        sel = pix[pred == n]
        out["count"][n] = len(sel)
        out["sum"][n] = sel.sum(0)
        out["sq"][n] = sel.T @ sel
        if len(sel):
            mu = sel.mean(0)
            out["mean"][n] = mu
            cov = (sel - mu).T @ (sel - mu) / len(sel)   # two-pass: independent of the tracker's formula
            out["cov"][n] = cov
            sd = np.sqrt(np.diag(cov))
            with np.errstate(invalid="ignore", divide="ignore"):
                out["corr"][n] = cov / np.outer(sd, sd)
    mu = out["mean"]
    out["dist"] = np.array([[np.linalg.norm(mu[i] - mu[j]) for j in range(k)] for i in range(k)])
    fg = [n for n in range(1, k) if out["count"][n] > 0]
    out["margin"] = np.mean([mu[n, n] - mu[n, 0] for n in fg]) if fg else np.nan
    return out


def _close(a, b, rtol=RTOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    m = ~np.isnan(b)
    scale = np.abs(b[m]).max() if m.any() else 1.0   # entries near 0 are judged against the array's scale
    np.testing.assert_allclose(a[m], b[m], rtol=rtol, atol=rtol * scale)


def test_matches_oracle_with_unpredicted_classes():
    x = _logits()
    ref = _oracle(x)
    t = LogitTracker().update(torch.from_numpy(x))
    assert t.count.dtype == np.float64 and t.sum.dtype == np.float64 and t.sq.dtype == np.float64
    np.testing.assert_array_equal(t.count, ref["count"])
    assert (t.count[[5, 13, 20]] == 0).all() and t.num_pixels == x.size / K
    _close(t.sum, ref["sum"])
    _close(t.sq, ref["sq"])
    _close(t.mean(), ref["mean"])
    _close(t.covariance(), ref["cov"], rtol=1e-8)      # one-pass vs two-pass formula
    _close(t.correlation(), ref["corr"], rtol=1e-8)
    _close(t.distance_matrix(), ref["dist"])
    assert abs(t.distance_margin() - ref["margin"]) <= RTOL * abs(ref["margin"])
    # empty classes: zero accumulators, NaN statistics
    assert np.isnan(t.mean()[5]).all() and np.isnan(t.distance_matrix()[:, 13]).all()
    assert np.isnan(t.covariance()[20]).all() and np.isnan(t.correlation()[20]).all()
    assert np.allclose(np.diagonal(t.distance_matrix())[t.count > 0], 0)
    q = t.sq
    np.testing.assert_array_equal(q, q.transpose(0, 2, 1))   # exactly symmetric


def test_numpy_and_torch_inputs_agree_and_3d_input():
    x = _logits(seed=1)
    a = LogitTracker().update(x)
    b = LogitTracker().update(torch.from_numpy(x))
    c = LogitTracker()
    for img in x:                      # (K, H, W) one at a time
        c.update(img)
    for u, v in ((a, b), (a, c)):
        np.testing.assert_array_equal(u.count, v.count)
        _close(u.sum, v.sum, 1e-12)
        _close(u.sq, v.sq, 1e-12)
    ro = x.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(LogitTracker().update(ro).count, a.count)


def test_float64_and_half_precision_inputs():
    x = _logits(seed=2)
    a = LogitTracker().update(torch.from_numpy(x).double())
    _close(a.sq, _oracle(x)["sq"])
    h = torch.from_numpy(x).to(torch.bfloat16)
    b = LogitTracker().update(h)
    _close(b.sq, _oracle(h.float().numpy())["sq"])


def test_merge_two_halves_equals_one_pass():
    x = _logits(b=4, seed=3)
    whole = LogitTracker().update(x)
    first, second = LogitTracker().update(x[:2]), LogitTracker().update(x[2:])
    total = first + second
    np.testing.assert_array_equal(total.count, whole.count)
    _close(total.sum, whole.sum, 1e-12)
    _close(total.sq, whole.sq, 1e-12)
    assert first.count.sum() == 2 * 17 * 23          # __add__ left its operands alone
    first += second
    np.testing.assert_array_equal(first.count, whole.count)
    with pytest.raises(ValueError):
        LogitTracker(3).merge(whole)


def test_state_dict_roundtrip_npz(tmp_path):
    t = LogitTracker().update(_logits(seed=4))
    np.savez(tmp_path / "logits.npz", **t.state_dict())
    with np.load(tmp_path / "logits.npz") as d:
        assert set(d.files) == {"count", "sum", "sq"}
        u = LogitTracker.from_state_dict(d)
    for key, value in t.state_dict().items():
        np.testing.assert_array_equal(value, u.state_dict()[key])
    _close(u.correlation(), t.correlation(), 0)
    with pytest.raises(ValueError):
        LogitTracker.from_state_dict({"count": np.zeros(3), "sum": np.zeros((3, 3)),
                                      "sq": np.zeros((3, 3, 2))})


def test_ties_follow_torch_argmax_first_max():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (2, K, 9, 11)).astype(np.float32)   # many exact ties
    t = LogitTracker().update(torch.from_numpy(x))
    pred = torch.from_numpy(x).argmax(1)
    assert np.array_equal(pred.numpy(), x.argmax(1))           # torch and numpy agree: first max
    np.testing.assert_array_equal(t.count, np.bincount(pred.reshape(-1).numpy(), minlength=K))
    _close(t.sq, _oracle(x)["sq"])


def test_given_predictions():
    x = _logits(seed=6)
    pred = torch.from_numpy(x).argmax(1)
    a = LogitTracker().update(x)
    b = LogitTracker().update(x, pred=pred)
    np.testing.assert_array_equal(a.count, b.count)
    _close(a.sq, b.sq, 1e-12)
    # any labelling works (e.g. group by target instead); checked against a masked oracle
    lab = np.random.default_rng(0).integers(0, K, pred.shape)
    c = LogitTracker().update(x, pred=lab)
    pix = x.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, K)
    for n in (0, 7):
        sel = pix[lab.reshape(-1) == n]
        _close(c.sum[n], sel.sum(0))
        _close(c.sq[n], sel.T @ sel)
    with pytest.raises(ValueError):
        LogitTracker().update(x, pred=np.full(pred.shape, 255))
    with pytest.raises(ValueError):
        LogitTracker().update(x, pred=pred[:, :5])


def test_degenerate_classes_give_nan_not_garbage():
    x = np.zeros((1, K, 40, 50), np.float32)
    x[0, 0] = 5.0                                   # background everywhere ...
    x[0, 1, 0, 0] = 9.0                             # ... except one pixel predicted class 1
    x[0, 2] = 0.1                                   # logit 2: constant (not exactly representable)
    t = LogitTracker().update(x)
    assert t.count[0] == 1999 and t.count[1] == 1
    corr = t.correlation()
    assert np.isnan(corr[1]).all()                  # a single pixel has no variance at all
    assert np.isnan(corr[0, 2]).all() and np.isnan(corr[0, :, 2]).all()   # constant logit
    assert np.isnan(corr[0, 0, 0])                  # logit 0 is constant (5) within class 0 too
    assert t.distance_margin() == pytest.approx(9.0 - 5.0)   # class 1 only: mu_1[1] - mu_1[0]
    assert np.isnan(LogitTracker().distance_margin())
    only_bg = LogitTracker().update(np.where(np.arange(K)[:, None, None] == 0, 1.0, 0.0)[None])
    assert np.isnan(only_bg.distance_margin())


def test_bad_input():
    with pytest.raises(ValueError):
        LogitTracker().update(np.zeros((2, 20, 4, 4), np.float32))
    with pytest.raises(ValueError):
        LogitTracker().update(np.zeros((2, K, 4, 4), np.int64))


def test_all_reduce_without_distributed_is_noop():
    t = LogitTracker().update(_logits(seed=7))
    before = t.state_dict()
    t.all_reduce()
    np.testing.assert_array_equal(before["sq"], t.sq)


def test_all_reduce_gloo_single_rank(tmp_path):
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        t = LogitTracker().update(_logits(seed=8))
        before = t.state_dict()
        t.all_reduce()
        for key in before:
            np.testing.assert_array_equal(before[key], t.state_dict()[key])
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("chunk", [7, 17 * 23, 500, 10 ** 6])
def test_chunking_and_memory_layout_do_not_change_results(chunk):
    # chunk 7 splits images, 391 is exactly one image, 500 groups images (partial last group).
    from common import logits as L
    x = torch.from_numpy(_logits(b=5, seed=9))
    ref = _oracle(x.numpy())
    for inp in (x, x.contiguous(memory_format=torch.channels_last),
                x.transpose(2, 3).contiguous().transpose(2, 3), x.to(torch.bfloat16).float()):
        want = ref if inp.dtype == x.dtype and torch.equal(inp, x) else _oracle(inp.numpy())
        count, s, q = L._class_moments(inp, None, chunk=chunk)
        np.testing.assert_array_equal(count, want["count"])
        _close(s, want["sum"])
        _close(q, want["sq"])
        np.testing.assert_array_equal(q, q.transpose(0, 2, 1))      # exactly symmetric


@pytest.mark.parametrize("seed", range(3))
def test_channel_argmax_equals_torch_argmax_with_ties_and_nan(seed):
    from common.logits import channel_argmax
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 4, (3, K, 13, 9)).astype(np.float32))   # ties everywhere
    assert torch.equal(channel_argmax(x), x.argmax(1))
    assert torch.equal(channel_argmax(x), torch.from_numpy(x.numpy().argmax(1)))
    y = torch.from_numpy(rng.normal(0, 1, (2, K, 8, 8)).astype(np.float32))
    assert torch.equal(channel_argmax(y), y.argmax(1))
    y[1, 7, 3, 3] = float("nan")                                       # NaN wins, as in torch.argmax
    assert torch.equal(channel_argmax(y), y.argmax(1)) and int(channel_argmax(y)[1, 3, 3]) == 7


def test_update_inside_and_outside_inference_mode_in_either_order():
    # The sweep updates under inference_mode, analysis and tests outside it; one tracker may see both.
    x = torch.from_numpy(_logits(b=2, seed=11))
    ref = _oracle(x.numpy())
    for first_inference in (True, False):
        t = LogitTracker()
        for inference in (first_inference, not first_inference, first_inference):
            with torch.inference_mode(inference):
                t.update(x)
        np.testing.assert_array_equal(t.count, 3 * ref["count"])
        _close(t.sq, 3 * ref["sq"])


@pytest.mark.parametrize("n,tile", [(0, 4), (3, 4), (4, 4), (4 * 5 + 3, 4), (2048 * 2 + 1, 2048)])
def test_gram_in_tiles_equals_one_matmul(n, tile):
    from common.logits import _gram
    a = np.random.default_rng(n).normal(0, 3, (n, 22))
    got = _gram(torch.from_numpy(a), tile).numpy()
    np.testing.assert_allclose(got, a.T @ a, rtol=1e-12, atol=1e-9)


def test_blocks_larger_than_a_tile_match_the_oracle():
    # 2 x 64 x 64 pixels, most predicted background: its block spans several 2048-row tiles.
    x = _logits(b=2, h=64, w=64, seed=12)
    x[:, 0] += 4
    t = LogitTracker().update(torch.from_numpy(x))
    ref = _oracle(x)
    assert t.count[0] > 2 * 2048
    np.testing.assert_array_equal(t.count, ref["count"])
    _close(t.sum, ref["sum"])
    _close(t.sq, ref["sq"])


def test_channel_argmax_beyond_255_channels_falls_back_to_argmax():
    # The uint8 channel weights hold at most 255 channels; more go through torch.argmax.
    from common.logits import channel_argmax
    x = torch.from_numpy(np.random.default_rng(5).integers(0, 3, (2, 300, 4, 5)).astype(np.float32))
    assert torch.equal(channel_argmax(x), x.argmax(1))


def test_channel_argmax_on_other_ranks_and_dtypes():
    # (B, K), (B, K, N) with B == K (a weight broadcast wrongly would mix the two axes) and integer logits.
    from common.logits import channel_argmax
    rng = np.random.default_rng(6)
    for shape in [(5, K), (K, K, 6), (2, K, 3, 4, 5)]:
        x = torch.from_numpy(rng.integers(0, 3, shape).astype(np.float32))
        assert torch.equal(channel_argmax(x), x.argmax(1)), shape
    xi = torch.from_numpy(rng.integers(0, 3, (2, K, 4, 4)))
    assert torch.equal(channel_argmax(xi), xi.argmax(1))


# ----------------------------------------------------------------------- the notebook's definitions

def _grouped(seed, absent, b=2, h=31, w=29):
    """Random per-pixel logit vectors, their argmax, and N, S, Q built by hand per predicted class."""
    x = _logits(b=b, h=h, w=w, seed=seed, absent=absent).astype(np.float64)
    pix = x.transpose(0, 2, 3, 1).reshape(-1, K)
    pred = pix.argmax(1)
    n = np.array([(pred == c).sum() for c in range(K)], dtype=np.float64)
    s = np.stack([pix[pred == c].sum(0) for c in range(K)])
    q = np.stack([pix[pred == c].T @ pix[pred == c] for c in range(K)])
    return x.astype(np.float32), n, s, q


@pytest.mark.parametrize("absent", [(), (5, 13, 20), tuple(range(2, 21))])
def test_distance_notebook_divides_by_20_and_distance_predicted_does_not(absent):
    x, n, s, q = _grouped(20 + len(absent), absent)
    t = LogitTracker().update(torch.from_numpy(x))
    np.testing.assert_array_equal(t.count, n)
    assert (n[list(absent)] == 0).all() and (n[1:] > 0).sum() == 20 - len(absent)
    # The notebook: mean_n = S_n / N_n, NaN -> 0, then sum over n = 1..20 of mean_n[n] - mean_n[0], / 20.
    total = 0.0
    for c in range(1, K):
        if n[c] > 0:
            total += s[c, c] / n[c] - s[c, 0] / n[c]
    assert t.distance_notebook() == pytest.approx(total / 20, rel=1e-12)
    predicted = [c for c in range(1, K) if n[c] > 0]
    assert t.distance_margin() == pytest.approx(total / len(predicted), rel=1e-12)
    if absent:
        assert abs(t.distance_notebook() - t.distance_margin()) > 1e-3 * abs(t.distance_margin())


def test_distance_notebook_edge_cases():
    assert np.isnan(LogitTracker().distance_notebook())               # no pixel at all
    only_bg = LogitTracker().update(np.where(np.arange(K)[:, None, None] == 0, 1.0, 0.0)[None])
    assert only_bg.distance_notebook() == 0.0                          # every foreground class counts 0
    assert np.isnan(only_bg.distance_margin())
    x = np.zeros((1, K, 40, 50), np.float32)
    x[0, 0] = 5.0
    x[0, 1, 0, 0] = 9.0                                                # one pixel of class 1: margin 4
    assert LogitTracker().update(x).distance_notebook() == pytest.approx(4.0 / 20)


def _notebook_corr(n, s, q):
    """(Q_n - mu_n mu_n^T) / N_n, scaled by the square roots of its diagonal, class by class."""
    out = np.full((K, K, K), np.nan)
    for c in range(K):
        if n[c] == 0:
            continue
        mu = s[c] / n[c]
        cm = (q[c] - np.outer(mu, mu)) / n[c]
        d = np.sqrt(np.diag(cm))
        out[c] = cm / np.outer(d, d)
    return out


def test_correlation_notebook_against_numpy():
    x, n, s, q = _grouped(31, (5, 13, 20))
    t = LogitTracker().update(torch.from_numpy(x))
    want = _notebook_corr(n, s, q)
    got = t.correlation_notebook()
    _close(got, want, rtol=1e-10)
    assert np.isnan(got[[5, 13, 20]]).all()
    idx = np.arange(K)
    present = n > 0
    np.testing.assert_array_equal(got[present][:, idx, idx], 1.0)
    # Not the covariance-based correlation, which test_matches_oracle_with_unpredicted_classes checks.
    assert np.nanmax(np.abs(got - t.correlation())) > 0.1


def test_correlation_notebook_is_about_094_for_independent_logits():
    # Independent logits, mean -8, SD 2, all grouped into one class: the true correlation is 0, the notebook's
    # quantity is 64 / (64 + 4) = 0.941 off the diagonal.
    rng = np.random.default_rng(0)
    x = rng.normal(-8, 2, (4, K, 100, 100)).astype(np.float32)
    t = LogitTracker().update(x, pred=torch.zeros(4, 100, 100, dtype=torch.long))
    off = ~np.eye(K, dtype=bool)
    nb, true = t.correlation_notebook()[0][off], t.correlation()[0][off]
    assert nb.min() > 0.9 and nb.mean() == pytest.approx(64 / 68, abs=5e-3)
    assert np.abs(true).max() < 0.05


def test_correlation_notebook_degenerate_classes():
    x = np.zeros((1, K, 40, 50), np.float32)
    x[0, 0] = 5.0
    x[0, 1, 0, 0] = 9.0                      # class 1 predicted at one pixel: C_1 = 0, all NaN
    t = LogitTracker().update(x)
    c = t.correlation_notebook()
    assert np.isnan(c[1]).all() and np.isnan(c[2:]).all()
    assert np.isfinite(c[0][[0]][:, [0]]).all()    # logit 0 constant 5 over 1999 px: C = 25 (1 - 1/N) > 0
    zero = c[0, 2]                                 # logit 2 is 0 everywhere in class 0: zero diagonal
    assert np.isnan(zero).all() and np.isnan(c[0, :, 2]).all()

"""Calibration and failure-detection metrics from the binned tables that common/calibration.py accumulates:
pure numpy, any leading dimensions (a condition's totals, or one row per bootstrap resample). The formulas are in
docs/calibration.md."""
import numpy as np

BINS = 15   # equal-width confidence bins on [0, 1] (ECE, the class-wise table; docs/calibration.md)


def metrics_from_bins(count, conf_sum, acc_sum, nll_sum, brier_sum):
    """(ece, nll, brier) from bin totals (numpy; any leading dimensions, bins last); NaN where N = 0."""
    count, conf_sum, acc_sum = (np.asarray(a) for a in (count, conf_sum, acc_sum))
    n = count.sum(-1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ece = np.abs(acc_sum - conf_sum).sum(-1) / n
        nll = np.asarray(nll_sum, dtype=np.float64) / n
        brier = np.asarray(brier_sum, dtype=np.float64) / n
    return ece, nll, brier


def _harmonic_diff(a, b):
    """H(b) - H(a) = sum_{j=a+1}^{b} 1/j for arrays a <= b >= 0 (float64; digamma differences, exact to
    ~1e-15 relative, so pixel counts of 10^9 need no loop)."""
    from scipy.special import digamma
    return digamma(np.asarray(b, np.float64) + 1) - digamma(np.asarray(a, np.float64) + 1)


def rank_metrics_from_fine(count, correct, conf_sum, bins: int = BINS) -> dict:
    """Adaptive ECE, AURC and AUROC (and the size of their binning errors) from fine histograms.

    count, correct, conf_sum: (..., F) per fine bin, in increasing confidence. Returns numpy arrays of the
    leading shape: ``ece_adaptive`` (fine bin b goes whole to equal-mass bin floor(bins (C_b + n_b / 2) / N),
    C_b the pixels in lower fine bins; then sum_g |acc_g - conf_g| / N), ``ece_adaptive_tie`` (its largest
    error: 2 / N times the pixels of the fine bins that hold an equal-mass edge), ``aurc`` (pixels sorted by
    decreasing confidence, within a fine bin errors spread evenly: the expected value under a random order
    there), ``aurc_tie`` (the largest distance from it to errors-first or errors-last within each bin),
    ``auroc`` (P(conf of a correct pixel > conf of a wrong one), ties 1/2; pairs in one fine bin count 1/2)
    and ``auroc_tie`` (half the share of correct-wrong pairs that share a fine bin). NaN where undefined
    (no pixel; AUROC without a correct or without a wrong pixel).
    """
    n_b = np.asarray(count, np.float64)
    c_b = np.asarray(correct, np.float64)
    s_b = np.asarray(conf_sum, np.float64)
    w_b = n_b - c_b
    n = n_b.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Adaptive ECE: the equal-mass bin of each fine bin by where its middle pixel falls.
        below = np.cumsum(n_b, -1) - n_b
        group = np.clip(np.floor(bins * (below + n_b / 2) / n), 0, bins - 1)
        group = np.where(np.isfinite(group), group, 0).astype(np.int64)
        onehot = group[..., None] == np.arange(bins)          # (..., F, bins)
        acc_g = (c_b[..., None] * onehot).sum(-2)
        conf_g = (s_b[..., None] * onehot).sum(-2)
        ece_a = np.abs(acc_g - conf_g).sum(-1) / n[..., 0]
        edge = np.zeros_like(n_b, dtype=bool)
        for j in range(1, bins):                               # fine bins holding the j-th equal-mass edge
            t = j * n / bins
            edge |= (below < t) & (below + n_b > t)
        ece_a_tie = 2 * (n_b * edge).sum(-1) / n[..., 0]
        # AURC: from the most confident fine bin down; N0 pixels and E0 errors before bin b.
        nd, wd = n_b[..., ::-1], w_b[..., ::-1]
        n0 = np.cumsum(nd, -1) - nd
        e0 = np.cumsum(wd, -1) - wd
        cd = nd - wd
        r = np.divide(wd, nd, out=np.zeros_like(wd), where=nd > 0)
        # sum_{j=1}^{n} (E0 + j r) / (N0 + j) = n r + (E0 - r N0) (H(N0 + n) - H(N0))
        mid = wd + (e0 - r * n0) * _harmonic_diff(n0, n0 + nd)
        # errors first: sum_{j<=w} (E0 + j) / (N0 + j) + (E0 + w) (H(N0 + n) - H(N0 + w))
        first = wd + (e0 - n0) * _harmonic_diff(n0, n0 + wd) + (e0 + wd) * _harmonic_diff(n0 + wd, n0 + nd)
        # errors last: E0 (H(N0 + c) - H(N0)) + w + (E0 - c - N0) (H(N0 + n) - H(N0 + c))
        last = e0 * _harmonic_diff(n0, n0 + cd) + wd + (e0 - cd - n0) * _harmonic_diff(n0 + cd, n0 + nd)
        aurc = mid.sum(-1) / n[..., 0]
        aurc_tie = np.maximum(first - mid, mid - last).sum(-1) / n[..., 0]
        # AUROC: correct pixels above wrong ones.
        w_below = np.cumsum(w_b, -1) - w_b
        pairs = c_b.sum(-1) * w_b.sum(-1)
        auroc = ((c_b * w_below).sum(-1) + 0.5 * (c_b * w_b).sum(-1)) / pairs
        auroc_tie = 0.5 * (c_b * w_b).sum(-1) / pairs
    return {"ece_adaptive": ece_a, "ece_adaptive_tie": ece_a_tie, "aurc": aurc, "aurc_tie": aurc_tie,
            "auroc": auroc, "auroc_tie": auroc_tie}


def classwise_ece(count, conf_sum, pos) -> float:
    """Class-wise ECE from (21, 15) tables: mean over classes of sum_b |pos_kb - conf_kb| / N_k, N_k = all
    pixels (every pixel has a probability for every class); NaN without pixels."""
    count = np.asarray(count, np.float64)
    n = count.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.mean(np.abs(np.asarray(pos, np.float64) - np.asarray(conf_sum, np.float64)).sum(-1) / n))

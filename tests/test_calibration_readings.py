"""The readings and rank metrics of common/calibration.py against numpy by hand: the sigmoid reading (SCrIBE's
own), class-wise ECE, adaptive ECE with and without ties, AURC and AUROC against sorted arrays (and sklearn where
installed), the temperature fit against a brute-force grid, and SCrIBE-structured logits built to be calibrated
in the sigmoid reading."""
import json
import os

import numpy as np
import pytest
import torch

from common.calibration import BINS, FINE_BINS, FINE_LOW, FINE_WIDTH, Calibration, fit_temperature
from common.calibration_metrics import rank_metrics_from_fine

K = 21


def pixels(z, labels):
    """(P, 21) float64 logits and (P,) labels of the non-255 pixels."""
    z = np.moveaxis(np.asarray(z, np.float64), 1, -1).reshape(-1, K)
    lab = np.asarray(labels).reshape(-1)
    keep = lab != 255
    return z[keep], lab[keep].astype(int)


def numpy_sigmoid_reading(z, labels, t=1.0):
    """Sigmoid reading by hand: q = 1 / (1 + exp(-z / T)); confidence q at the argmax; NLL = sum_k BCE;
    Brier = sum_k (q_k - onehot)^2; ECE over 15 equal-width bins; class-wise ECE over all pixels."""
    x, y = pixels(z, labels)
    x = x / t
    q = 1 / (1 + np.exp(-x))
    pred = x.argmax(1)
    conf = q[np.arange(len(y)), pred]
    onehot = np.eye(K)[y]
    nll = -(onehot * np.log(q) + (1 - onehot) * np.log(1 - q)).sum(1)
    brier = ((q - onehot) ** 2).sum(1)
    correct = pred == y
    ece = 0.0
    for b in range(BINS):
        m = np.minimum(np.floor(conf * BINS), BINS - 1) == b
        ece += abs(correct[m].sum() - conf[m].sum())
    cw = []
    for k in range(K):
        e = 0.0
        for b in range(BINS):
            m = np.minimum(np.floor(q[:, k] * BINS), BINS - 1) == b
            e += abs((y[m] == k).sum() - q[m, k].sum())
        cw.append(e / len(y))
    return {"conf": conf, "correct": correct, "ece": ece / len(y), "nll": nll.mean(), "brier": brier.mean(),
            "ece_classwise": float(np.mean(cw))}


def random_case(seed, b=3, h=9, w=11, scale=3.0):
    rng = np.random.default_rng(seed)
    z = (rng.normal(-1, scale, (b, K, h, w)) + rng.normal(0, scale / 2, (b, K, 1, 1))).astype(np.float32)
    labels = rng.integers(0, K, (b, h, w))
    labels[rng.random((b, h, w)) < 0.2] = 255
    right = rng.random((b, h, w)) < 0.5
    labels[right] = z.argmax(1)[right]
    return z, labels


@pytest.mark.parametrize("seed, scale, t", [(0, 3.0, 1.0), (1, 0.5, 1.0), (2, 6.0, 2.5)])
def test_sigmoid_reading_equals_numpy(seed, scale, t):
    z, labels = random_case(seed, scale=scale)
    cal = Calibration(3, reading="sigmoid", temperature=t, classwise=True)
    cal.update(torch.from_numpy(z), torch.from_numpy(labels), rows=[0, 1, 2])
    want = numpy_sigmoid_reading(z, labels, t)
    m = cal.metrics()
    assert m["ece"] == pytest.approx(want["ece"], rel=1e-5, abs=1e-7)
    assert m["nll"] == pytest.approx(want["nll"], rel=1e-5)
    assert m["brier"] == pytest.approx(want["brier"], rel=1e-5)
    assert m["ece_classwise"] == pytest.approx(want["ece_classwise"], rel=1e-5, abs=1e-7)
    # The softmax reading of the same logits is another number (the readings are not mixed up).
    soft = Calibration(3, temperature=t)
    soft.update(torch.from_numpy(z), torch.from_numpy(labels), rows=[0, 1, 2])
    assert soft.metrics()["nll"] != pytest.approx(m["nll"], rel=1e-2)


def test_sigmoid_nll_stays_finite_for_large_logits():
    # sigmoid(-120) is 0 in float32: log(1 - q) and log q by hand would be -inf; softplus gives 120.
    z = torch.full((1, K, 1, 1), -120.0)
    z[0, 3] = 120.0
    cal = Calibration(reading="sigmoid")
    cal.update(z, torch.tensor([[[5]]]))
    # class 3: BCE(120, 0) = 120; class 5: BCE(-120, 1) = 120; the 19 others about exp(-120).
    assert cal.nll() == pytest.approx(240.0, rel=1e-6)
    assert cal.brier() == pytest.approx(2.0, abs=1e-6)


# ------------------------------------------------------------------------------------ rank metrics by hand

def sorted_aurc(conf, correct):
    """Pixels by decreasing confidence; risk(k) = errors among the first k / k; AURC = mean over k. Tied
    confidences: their errors spread evenly through the tie (the mean over every order of the tie)."""
    order = np.argsort(-conf, kind="stable")
    c, err = conf[order], (~correct[order]).astype(float)
    spread = err.copy()
    start = 0
    while start < len(c):                      # a tie group gets its mean error at every position
        end = start
        while end + 1 < len(c) and c[end + 1] == c[start]:
            end += 1
        spread[start:end + 1] = err[start:end + 1].mean()
        start = end + 1
    return float(np.mean(np.cumsum(spread) / np.arange(1, len(c) + 1)))


def sorted_auroc(conf, correct):
    """P(conf of a correct pixel > conf of a wrong one) + 1/2 P(equal), by counting every pair."""
    a, b = conf[correct], conf[~correct]
    return float(((a[:, None] > b[None, :]).sum() + 0.5 * (a[:, None] == b[None, :]).sum()) / (len(a) * len(b)))


def sorted_adaptive_ece(conf, correct, bins=BINS):
    """Equal-mass bins on the sorted pixels; a group of tied confidences goes whole to the bin holding its
    middle pixel (rank before it + half its size); ECE = sum_g |correct_g - conf_g| / N."""
    order = np.argsort(conf, kind="stable")
    c, ok = conf[order], correct[order].astype(float)
    n = len(c)
    acc, cs = np.zeros(bins), np.zeros(bins)
    values, first, size = np.unique(c, return_index=True, return_counts=True)
    for f, s in zip(first, size):
        g = min(int(np.floor(bins * (f + s / 2) / n)), bins - 1)
        acc[g] += ok[f:f + s].sum()
        cs[g] += c[f:f + s].sum()
    return float(np.abs(acc - cs).sum() / n)


def fine_tables(conf, correct):
    """The fine histogram by hand: bin floor((logit(c) - FINE_LOW) / FINE_WIDTH), clamped."""
    u = np.log(conf) - np.log1p(-conf)
    idx = np.clip(np.floor((u - FINE_LOW) / FINE_WIDTH), 0, FINE_BINS - 1).astype(int)
    return (np.bincount(idx, minlength=FINE_BINS), np.bincount(idx, weights=correct, minlength=FINE_BINS),
            np.bincount(idx, weights=conf, minlength=FINE_BINS))


def top_logit_case(top, correct):
    """Logits (P, 21, 1, 1) whose sigmoid reading has top-label log-odds ``top`` and labels that are right
    where ``correct`` (the prediction is channel 2; a wrong label is channel 7)."""
    z = np.full((len(top), K, 1, 1), -30.0, np.float32)
    z[:, 2, 0, 0] = top
    labels = np.where(correct, 2, 7).reshape(-1, 1, 1)
    return z, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_rank_metrics_with_ties_equal_the_sorted_arrays_exactly(seed):
    # Ties by construction: top log-odds at 40 fine-bin centres, ~17 pixels each, so every fine bin holds one
    # confidence value and the histogram loses nothing; a tie group is smaller than an equal-mass bin (47),
    # so the groups share adaptive bins and which bin each joins matters.
    rng = np.random.default_rng(seed)
    centres = FINE_LOW + FINE_WIDTH * (rng.choice(FINE_BINS, 40, replace=False) + 0.5)
    top = rng.choice(centres, 700).astype(np.float32)
    ok = rng.random(700) < 1 / (1 + np.exp(-top / 3))
    z, labels = top_logit_case(top, ok)
    cal = Calibration(1, reading="sigmoid")
    cal.update(torch.from_numpy(z), torch.from_numpy(labels), rows=np.zeros(700, int))
    conf = (1 / (1 + np.exp(-top.astype(np.float64))))
    m = cal.metrics()
    assert len(np.unique(conf)) == 40
    # float32 sigmoid confidences against float64 ones: 1e-7 relative; the grouping itself is exact.
    assert m["ece_adaptive"] == pytest.approx(sorted_adaptive_ece(conf, ok), rel=1e-6, abs=1e-9)
    assert m["aurc"] == pytest.approx(sorted_aurc(conf, ok), rel=1e-9)
    assert m["auroc"] == pytest.approx(sorted_auroc(conf, ok), rel=1e-12)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert m["auroc"] == pytest.approx(sklearn.roc_auc_score(ok, conf), rel=1e-12)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_rank_metrics_without_ties_within_their_stated_bounds(seed):
    # Continuous confidences: the histogram values differ from the exact ones by at most the bound each
    # reports (derived from the fine bins' contents), and the bounds are small.
    rng = np.random.default_rng(seed)
    top = rng.normal(3, 2.5, 3000).astype(np.float32)
    ok = rng.random(3000) < 1 / (1 + np.exp(-(top - 1)))
    conf = 1 / (1 + np.exp(-top.astype(np.float64)))
    m = {k: float(v) for k, v in rank_metrics_from_fine(*fine_tables(conf, ok)).items()}
    exact = {"ece_adaptive": sorted_adaptive_ece(conf, ok), "aurc": sorted_aurc(conf, ok),
             "auroc": sorted_auroc(conf, ok)}
    for key, value in exact.items():
        assert abs(m[key] - value) <= m[key + "_tie"] + 1e-12, (key, m[key], value, m[key + "_tie"])
    assert m["auroc_tie"] < 0.02 and m["aurc_tie"] < 0.01
    # The same through Calibration (float32 logits): the same fine tables.
    z, labels = top_logit_case(top, ok)
    cal = Calibration(1, reading="sigmoid")
    cal.update(torch.from_numpy(z), torch.from_numpy(labels))
    got = cal.totals()
    want = fine_tables(conf, ok)
    np.testing.assert_array_equal(got["fine_count"], want[0])
    np.testing.assert_array_equal(got["fine_correct"], want[1])
    np.testing.assert_allclose(got["fine_conf_sum"], want[2], rtol=1e-6)


def test_softmax_fine_bins_follow_the_softmax_confidence():
    # The softmax reading's log-odds is -log(s - 1): its fine bins equal numpy's from p = softmax(z).
    rng = np.random.default_rng(8)
    z = rng.normal(0, 4, (2, K, 8, 8)).astype(np.float32)
    labels = rng.integers(0, K, (2, 8, 8))
    cal = Calibration(2)
    cal.update(torch.from_numpy(z), torch.from_numpy(labels), rows=[0, 1])
    x, y = pixels(z, labels)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, ok = p.max(1), x.argmax(1) == y
    want = fine_tables(conf, ok)
    got = cal.totals()
    np.testing.assert_array_equal(got["fine_count"], want[0])
    np.testing.assert_array_equal(got["fine_correct"], want[1])
    assert cal.metrics()["auroc"] == pytest.approx(sorted_auroc(conf, ok), abs=cal.metrics()["auroc_tie"] + 1e-12)


def test_rows_and_shards_add_up_with_the_fine_and_classwise_tables():
    z, labels = random_case(5, b=4)
    zt, lt = torch.from_numpy(z), torch.from_numpy(labels)
    whole = Calibration(4, reading="sigmoid", classwise=True)
    whole.update(zt, lt, rows=[0, 1, 2, 3])
    s0, s1 = (Calibration(2, reading="sigmoid", classwise=True) for _ in range(2))
    s0.update(zt[[0, 2]], lt[[0, 2]], rows=[0, 1])
    s1.update(zt[[1, 3]], lt[[1, 3]], rows=[0, 1])
    joined = Calibration.concat([s0, s1], order=[0, 2, 1, 3])
    a, b = whole.state_dict(), joined.state_dict()
    assert set(a) == set(b) and "calib_image_fine_count" in a and "calib_classwise_pos" in a
    for key, value in a.items():
        if value.dtype.kind == "i":
            np.testing.assert_array_equal(b[key], value, err_msg=key)
        elif key == "calib_classwise_conf_sum":    # summed in float32 within a batch: other batches, other bits
            np.testing.assert_allclose(b[key], value, rtol=1e-5, err_msg=key)
        else:
            np.testing.assert_allclose(b[key], value, rtol=1e-12, err_msg=key)
    back = Calibration.from_state_dict(a, reading="sigmoid")
    assert back.metrics() == pytest.approx(whole.metrics(), rel=1e-12)
    assert joined.metrics() == pytest.approx(whole.metrics(), rel=1e-5)


# ------------------------------------------------------------------------------------------- temperature

@pytest.mark.parametrize("reading, t_true", [("softmax", 2.0), ("softmax", 0.6), ("sigmoid", None)])
def test_temperature_fit_equals_a_brute_force_grid_minimum(reading, t_true):
    rng = np.random.default_rng(11)
    n = 2000
    if reading == "softmax":
        # Labels drawn from softmax(z / t_true): the fitted T lands near t_true.
        z = rng.normal(0, 3, (n, K))
        p = np.exp(z / t_true - (z / t_true).max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        y = (rng.random((n, 1)) > np.cumsum(p, 1)).sum(1)
    else:
        # SCrIBE-like: foreground logits well below 0, one raised; the label is it 4 times in 5.
        z = rng.normal(-5, 2, (n, K))
        hot = rng.integers(0, K, n)
        z[np.arange(n), hot] += 9
        y = np.where(rng.random(n) < 0.8, hot, rng.integers(0, K, n))

    def nll(t):
        x = z / t
        if reading == "softmax":
            m = x.max(1)
            return np.mean(m + np.log(np.exp(x - m[:, None]).sum(1)) - x[np.arange(len(y)), y])
        return np.mean((np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).sum(1) - x[np.arange(len(y)), y])

    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    values = np.array([nll(t) for t in grid])
    best = grid[values.argmin()]
    assert 0 < values.argmin() < len(grid) - 1            # a minimum inside the range
    fit = fit_temperature(torch.from_numpy(z), torch.from_numpy(y), reading)
    step = grid[1] / grid[0]
    assert best / step <= fit["temperature"] <= best * step
    assert fit["nll"] <= values.min() + 1e-12 and fit["nll_at_1"] == pytest.approx(nll(1.0), rel=1e-9)
    if t_true is not None:
        assert fit["temperature"] == pytest.approx(t_true, rel=0.15)


# ------------------------------------------------------------------------ SCrIBE's structure, by construction

def test_scribe_logits_with_calibrated_sigmoids_are_calibrated_in_the_sigmoid_reading_only():
    # SCrIBE's 21 channels: 20 foreground logits z and background -logsumexp(z). Labels drawn so that the
    # prediction is right with probability sigmoid(z_pred) exactly: calibrated in the sigmoid reading by
    # construction. The softmax's confidence at the same pixel is e^z_pred / (e^-lse + sum e^z), another
    # number, so the same labels are miscalibrated there.
    rng = np.random.default_rng(21)
    n = 120_000
    fg = rng.normal(-3.0, 2.0, (n, K - 1))
    fg[np.arange(n), rng.integers(0, K - 1, n)] += rng.uniform(0, 6, n)
    lse = np.log(np.exp(fg).sum(1))
    z = np.concatenate([-lse[:, None], fg], 1)
    pred = z.argmax(1)
    q = 1 / (1 + np.exp(-z[np.arange(n), pred]))
    right = rng.random(n) < q
    other = (pred + rng.integers(1, K, n)) % K
    labels = np.where(right, pred, other)
    zt = torch.from_numpy(z.astype(np.float32)).view(n, K, 1, 1)
    lt = torch.from_numpy(labels).view(n, 1, 1)
    sig, soft = Calibration(reading="sigmoid"), Calibration(reading="softmax")
    sig.update(zt, lt)
    soft.update(zt, lt)
    # Sampling noise of a calibrated ECE over 15 bins at 120,000 pixels: about sum_b sqrt(n_b q(1-q)) / N,
    # under 0.005; the softmax reading's error is an order of magnitude above it.
    assert sig.ece() < 0.006 and sig.metrics()["ece_adaptive"] < 0.008
    assert soft.ece() > 0.05
    # By hand: the softmax reading's gap is the mean of softmax confidence minus sigmoid confidence.
    p = np.exp(z - z.max(1, keepdims=True))
    p_top = (1 / p.sum(1))
    assert soft.ece() == pytest.approx(abs(np.mean(p_top - q)), abs=0.01)


# ---------------------------------------------------------------------------------------------- the sweep

# A model whose every pixel gets the same logits: background high, the rest low, over-sharpened by 3. Its
# temperature has an optimum inside the search range, and every number of its readings follows from the
# label counts alone (pred = background everywhere), so the sweep's values can be written out by hand.
CONSTANT = np.array([3 * np.log(0.6)] + [3 * np.log(0.02)] * (K - 1))


class ConstantLogits(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.v = torch.nn.Parameter(torch.tensor(CONSTANT, dtype=torch.float32))

    def forward(self, x):
        b, _, h, w = x.shape
        return self.v.view(1, K, 1, 1).expand(b, K, h, w) + 0 * x[:, :1]


def constant_logits():
    return ConstantLogits()


SIZE = 32


def split_labels(root, split, n=None):
    """The labels of ``split`` as the paper protocol scores them (Pillow NEAREST to SIZE x SIZE), of n images
    spread evenly through the split file (all with n None)."""
    from PIL import Image
    base = os.path.join(root, "voc", "VOCdevkit", "VOC2012")
    ids = open(os.path.join(base, "ImageSets", "Segmentation", f"{split}.txt")).read().split()
    if n is not None:
        ids = [ids[i] for i in sorted(set(np.linspace(0, len(ids) - 1, min(n, len(ids))).round().astype(int)))]
    return np.stack([np.asarray(Image.open(os.path.join(base, "SegmentationClass", f"{i}.png"))
                                .resize((SIZE, SIZE), Image.NEAREST)) for i in ids])


def constant_nll(labels, reading, t):
    y = labels[labels != 255].astype(int)
    x = CONSTANT / t
    if reading == "softmax":
        logp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
        return float(-logp[y].mean())
    return float((np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).sum() - x[y].mean())


@pytest.fixture(scope="module")
def temperature_sweep(tmp_path_factory, synthetic, tiny_ckpts):
    import evaluate_corruptions as ev
    data = synthetic(n_voc_train=6, n_val=3, max_side=64)
    out = tmp_path_factory.mktemp("ts") / "results"
    args = ev.get_args_parser().parse_args([
        "--checkpoints", tiny_ckpts["scribe"], "test_calibration_readings:constant_logits",
        "--names", "scribe", "const",
        "--data", "synthetic", "--synthetic-root", data, "--size", str(SIZE), "--batch-size", "2", "--workers", "0",
        "--corruptions", "gaussian", "--severities", "0", "2", "--calibration-images", "4",
        "--calibration-stride", "1", "--out", str(out)])   # every pixel: the oracles below score them all
    assert ev.main(args) == 0
    return data, out


def test_sweep_fits_the_temperature_on_the_calibration_images_and_applies_it_everywhere(temperature_sweep):
    data, out = temperature_sweep
    run = json.load(open(out / "run.json"))
    t = run["temperature"]
    assert t["split"] == "train" and t["images"] == 4
    cal_labels = split_labels(data, "train", 4)
    assert t["pixels"] == (cal_labels != 255).sum()
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    for reading in ("softmax", "sigmoid"):
        values = [constant_nll(cal_labels, reading, g) for g in grid]
        assert 0 < int(np.argmin(values)) < len(grid) - 1
        best, step = grid[int(np.argmin(values))], grid[1] / grid[0]
        fitted = t["models"]["const"][reading]["temperature"]
        assert best / step <= fitted <= best * step
        # Applied unchanged under every condition, for every model.
        for r in rows:
            assert r["calibration"][f"{reading}_ts"]["temperature"] == t["models"][r["model"]][reading]["temperature"]
    # The constant model's readings on the val labels, by hand: prediction background everywhere.
    val = split_labels(data, "val")
    y = val[val != 255].astype(int)
    acc = (y == 0).mean()
    const = {(r["corruption"], r["severity"]): r["calibration"] for r in rows if r["model"] == "const"}
    for cond, cal in const.items():
        for key, reading, temp in (("softmax", "softmax", 1.0), ("sigmoid", "sigmoid", 1.0),
                                   ("softmax_ts", "softmax", t["models"]["const"]["softmax"]["temperature"]),
                                   ("sigmoid_ts", "sigmoid", t["models"]["const"]["sigmoid"]["temperature"])):
            x = CONSTANT / temp
            if reading == "softmax":
                conf = np.exp(x[0] - x.max()) / np.exp(x - x.max()).sum()
            else:
                conf = 1 / (1 + np.exp(-x[0]))
            assert cal[key]["ece"] == pytest.approx(abs(acc - conf), rel=1e-5, abs=1e-6), (cond, key)
            assert cal[key]["nll"] == pytest.approx(constant_nll(val, reading, temp), rel=1e-5), (cond, key)
        # One confidence for every pixel: AUROC 1/2, AURC the error rate, adaptive ECE the ECE.
        assert cal["softmax"]["auroc"] == pytest.approx(0.5) and cal["softmax"]["aurc"] == pytest.approx(1 - acc)
        assert cal["sigmoid"]["ece_adaptive"] == pytest.approx(cal["sigmoid"]["ece"], rel=1e-6)


def test_sweep_sigmoid_reading_of_scribe_equals_numpy(temperature_sweep):
    from common.checkpoint import load_model
    from test_evaluate_corruptions import hand_inputs
    data, out = temperature_sweep
    rows = {(r["model"], r["corruption"], r["severity"]): r for r in map(json.loads, open(out / "metrics.jsonl"))}
    run = json.load(open(out / "run.json"))
    scribe_ckpt = next(m["path"] for m in run["models"] if m["name"] == "scribe")
    model = load_model(scribe_ckpt)[0]
    for cond in (("clean", 0), ("gaussian_noise", 2)):
        xs, labels = hand_inputs(data, *cond, size=SIZE)
        with torch.no_grad():
            z = np.concatenate([model(torch.from_numpy(x)[None]).numpy() for x in xs])
        lab = np.stack(labels)
        cal = rows[("scribe",) + cond]["calibration"]
        t_sig = run["temperature"]["models"]["scribe"]["sigmoid"]["temperature"]
        for key, temp in (("sigmoid", 1.0), ("sigmoid_ts", t_sig)):
            want = numpy_sigmoid_reading(z, lab, temp)
            assert cal[key]["nll"] == pytest.approx(want["nll"], rel=1e-4)
            assert cal[key]["brier"] == pytest.approx(want["brier"], rel=1e-4)
            assert cal[key]["ece"] == pytest.approx(want["ece"], rel=1e-3, abs=1e-5)
        plain = numpy_sigmoid_reading(z, lab)
        assert cal["sigmoid"]["ece_classwise"] == pytest.approx(plain["ece_classwise"], rel=1e-3, abs=1e-5)
        # AURC by sorting; AUROC too where both correct and wrong pixels exist (else undefined: null).
        assert cal["sigmoid"]["aurc"] == pytest.approx(sorted_aurc(plain["conf"], plain["correct"]),
                                                       abs=cal["sigmoid"]["aurc_tie"] + 1e-9)
        if plain["correct"].all() or not plain["correct"].any():
            assert cal["sigmoid"]["auroc"] is None
        else:
            assert cal["sigmoid"]["auroc"] == pytest.approx(sorted_auroc(plain["conf"], plain["correct"]),
                                                            abs=cal["sigmoid"]["auroc_tie"] + 1e-9)


def test_the_test_split_is_refused_for_the_temperature(capsys, synthetic, tiny_ckpts, tmp_path):
    import evaluate_corruptions as ev
    from helpers import refused
    data = synthetic(n_voc_train=6, n_val=3, max_side=64)
    common = ["--checkpoints", tiny_ckpts["baseline"], "--data", "synthetic", "--synthetic-root", data, "--size",
              str(SIZE), "--workers", "0", "--severities", "0", "--out", str(tmp_path / "r")]
    line = refused(capsys, ev, *common, "--calibration-split", "val")
    assert "test set" in line and "--calibration-split val" in line
    line = refused(capsys, ev, *common, "--calibration-split", "nosuch")
    assert "nosuch.txt" in line
    # A split file that shares an image with val is refused too.
    sets = os.path.join(data, "voc", "VOCdevkit", "VOC2012", "ImageSets", "Segmentation")
    val_id = open(os.path.join(sets, "val.txt")).read().split()[0]
    with open(os.path.join(sets, "mixed.txt"), "w") as fh:
        fh.write(open(os.path.join(sets, "train.txt")).read() + val_id + "\n")
    try:
        line = refused(capsys, ev, *common, "--calibration-split", "mixed")
        assert val_id in line
    finally:
        os.remove(os.path.join(sets, "mixed.txt"))
    assert not os.path.exists(tmp_path / "r" / "metrics.jsonl")


def test_the_temperature_is_fitted_on_the_images_every_checkpoint_held_out(capsys, synthetic, tiny_ckpts, tmp_path):
    import hashlib
    import evaluate_corruptions as ev
    data = synthetic(n_voc_train=6, n_val=3, max_side=64)
    sets = os.path.join(data, "voc", "VOCdevkit", "VOC2012", "ImageSets", "Segmentation")
    train_ids = open(os.path.join(sets, "train.txt")).read().split()
    # Two checkpoints as train.py --hold-out writes them, holding out overlapping sets: the fit takes the images
    # both held out, in train.txt order.
    paths = []
    for name, held in (("a", [train_ids[4], train_ids[0], train_ids[2]]), ("b", [train_ids[2], train_ids[5],
                                                                                  train_ids[4]])):
        ckpt = torch.load(tiny_ckpts["baseline"], weights_only=False)
        ckpt["args"] = {**(ckpt.get("args") or {}), "held_out": held}
        ckpt["name"] = name
        paths.append(str(tmp_path / f"{name}.pt"))
        torch.save(ckpt, paths[-1])
    common = ["--data", "synthetic", "--synthetic-root", data, "--size", str(SIZE), "--workers", "0",
              "--severities", "0", "--calibration-images", "4"]
    out = tmp_path / "held"
    assert ev.main(ev.get_args_parser().parse_args(["--checkpoints", *paths, *common, "--out", str(out)])) == 0
    t = json.load(open(out / "run.json"))["temperature"]
    both = [train_ids[2], train_ids[4]]
    assert t["split"] == "held-out" and t["images"] == 2
    assert t["image_ids_sha256"] == hashlib.sha256("\n".join(sorted(both)).encode()).hexdigest()
    assert "were trained on" not in capsys.readouterr().out
    # A checkpoint that held nothing out: the train split, said in a note.
    out = tmp_path / "train"
    assert ev.main(ev.get_args_parser().parse_args(["--checkpoints", paths[0], tiny_ckpts["ibe"], *common,
                                                    "--out", str(out)])) == 0
    assert "the models were trained on" in capsys.readouterr().out
    t = json.load(open(out / "run.json"))["temperature"]
    assert t["split"] == "train" and t["images"] == 4


# ------------------------------------------------------------------------------------------- the analysis

def expanded(count, correct, conf_sum):
    """A fine histogram as pixels: every pixel of fine bin b gets the tie value b (for ranks) and the bin's mean
    confidence (for adaptive ECE), so the sorted-array functions above see each bin as one tie group."""
    n = np.asarray(count).astype(int)
    c = np.asarray(correct).astype(int)
    rank = np.repeat(np.arange(len(n)), n).astype(float)
    mean = np.repeat(np.divide(conf_sum, n, out=np.zeros(len(n)), where=n > 0), n)
    ok = np.concatenate([np.r_[np.ones(ci, bool), np.zeros(ni - ci, bool)] for ni, ci in zip(n, c)])
    return rank, mean, ok


def test_analysis_readings_and_their_bootstrap_by_hand(temperature_sweep, tmp_path):
    import analyze_logits as al
    data, out = temperature_sweep
    args = al.get_args_parser().parse_args(["--results", str(out), "--out", str(tmp_path), "--bootstrap", "40",
                                            "--seed", "5", "--reference", "const"])
    assert al.main(args) == 0
    a = json.load(open(tmp_path / "analysis.json"))
    assert a["schema"] == "analyze_logits/2"
    rows = {(r["model"], r["corruption"], r["severity"]): r for r in map(json.loads, open(out / "metrics.jsonl"))}
    sc = a["per_model"]["scribe"]
    assert sc["own_reading"] == "sigmoid" and a["per_model"]["const"]["own_reading"] == "softmax"
    for v in ("softmax", "sigmoid", "softmax_ts", "sigmoid_ts"):
        for k in ("ece", "nll", "brier"):
            assert sc["readings"][v]["clean"][k] == rows["scribe", "clean", 0]["calibration"][v][k]
            corrupted = rows["scribe", "gaussian_noise", 2]["calibration"][v][k]
            assert sc["readings"][v]["corrupted"][k]["value"] == corrupted
    run = json.load(open(out / "run.json"))
    fitted = run["temperature"]["models"]["scribe"]["sigmoid"]["temperature"]
    assert sc["readings"]["sigmoid_ts"]["temperature"] == fitted
    # The bootstrap of AURC and adaptive ECE, scribe minus const, sigmoid reading, clean: a plain loop over the
    # same resamples (numpy's generator, the analysis' seed), each resample's fine bins expanded into pixels.
    rng = np.random.default_rng(5)
    n = len(np.load(out / "confusion" / "scribe" / "clean_0.npz")["image_ids"])
    draws = rng.integers(0, n, size=(40, n))
    files = {m: np.load(out / "confusion" / m / "clean_0.npz") for m in ("scribe", "const")}

    def value(m, draw, metric):
        z = files[m]
        pre = "calib_sigmoid_"
        tabs = [sum(z[pre + k][i] for i in draw) for k in ("image_fine_count", "image_fine_correct",
                                                          "image_fine_conf_sum")]
        rank, mean, ok = expanded(*tabs)
        return {"aurc": lambda: sorted_aurc(rank, ok), "ece_adaptive": lambda: sorted_adaptive_ece(mean, ok)}[metric]()

    for metric in ("aurc", "ece_adaptive"):
        diffs = [value("scribe", d, metric) - value("const", d, metric) for d in draws]
        got = a["bootstrap"]["readings"]["readings"]["sigmoid"]["comparisons"]["scribe"]["clean"][metric]
        assert got["observed"] == pytest.approx(value("scribe", range(n), metric) - value("const", range(n), metric),
                                                abs=1e-9)
        assert (got["lower"], got["upper"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])), abs=1e-9)
    tables = open(tmp_path / "tables.md").read()
    assert "## Calibration in each structure's own reading" in tables
    for v in ("softmax (21-way", "sigmoid (one-vs-rest", "softmax after temperature", "sigmoid after temperature"):
        assert f"## Calibration, reading: {v}" in tables
    arrays = np.load(tmp_path / "analysis_arrays.npz")
    np.testing.assert_array_equal(arrays["scribe/readings/sigmoid/0/fine_count"],
                                  files["scribe"]["calib_sigmoid_fine_count"])


def test_readings_figure_and_its_risk_coverage_curve(temperature_sweep, tmp_path, capsys):
    import analyze_logits as al
    import make_figures as mf
    from common.figures.reliability import risk_coverage
    from helpers import refused
    data, out = temperature_sweep
    assert al.main(al.get_args_parser().parse_args(["--results", str(out), "--bootstrap", "0"])) == 0
    rows = {(r["model"], r["corruption"], r["severity"]): r for r in map(json.loads, open(out / "metrics.jsonl"))}
    args = mf.get_args_parser().parse_args(["--results", str(out), "--out", str(tmp_path / "f"), "--only", "readings",
                                            "--reliability-severity", "2"])
    ctx = mf.read_results(args, ["readings"])
    for m in ("scribe", "const"):
        for reading in ("softmax", "sigmoid"):
            coverage, risk = risk_coverage(ctx, m, reading, 0)
            # All pixels kept: the risk is the error rate, 1 - pixel accuracy; coverage runs from 0 up to 1.
            assert coverage[-1] == 1.0 and risk[-1] == pytest.approx(1 - rows[m, "clean", 0]["pixel_acc"], abs=1e-12)
            assert (np.diff(coverage) > 0).all()
    mf.main(args)
    assert os.path.getsize(tmp_path / "f" / "readings.png") > 10_000
    line = refused(capsys, mf, "--results", str(out), "--out", str(tmp_path / "g"), "--only", "readings",
                   "--reliability-severity", "7")
    assert "--reliability-severity 7" in line

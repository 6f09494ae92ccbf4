"""Calibration (common/calibration.py) against numpy by hand: ECE / NLL / Brier on random logits with 255s,
the bin edges, empty bins, additivity, IBE's 21 channels; then through the sweep, the analysis and the figure."""
import json
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

import analyze_logits as al
import evaluate_corruptions as ev
import make_figures
from common.analysis.bootstrap import worst_case_intervals
from common.analysis.robustness import worst_case
from common.calibration import BINS, Calibration, bin_index
from common.sweep.condition_stats import ConditionStats, metrics_row
from helpers import refused

K = 21


def numpy_calibration(z, labels, rows=None, n_rows=1):
    """Everything by hand in float64: z (B, 21, ...) logits, labels (B, ...) with 255 ignored.

    softmax p; confidence c = max p, prediction argmax (first maximum); bin floor(15 c), 1.0 in the last;
    ECE = sum_b (n_b / N) |acc_b - conf_b|; NLL = mean -log p_y from z_y - logsumexp z; Brier = mean
    sum_k (p_k - onehot_k)^2. Also the per-row tables, rows (B,) giving each image's row.
    """
    z = np.asarray(z, dtype=np.float64)
    b = z.shape[0]
    rows = np.zeros(b, int) if rows is None else np.asarray(rows)
    pix = np.moveaxis(z, 1, -1).reshape(b, -1, K)
    lab = np.asarray(labels).reshape(b, -1)
    out = {"count": np.zeros((n_rows, BINS), np.int64), "conf": np.zeros((n_rows, BINS)),
           "acc": np.zeros((n_rows, BINS), np.int64), "nll": np.zeros(n_rows), "brier": np.zeros(n_rows)}
    for i in range(b):
        keep = lab[i] != 255
        x, y = pix[i][keep], lab[i][keep].astype(int)
        m = x.max(1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(x - m).sum(1))
        p = np.exp(x - lse[:, None])
        conf, pred = p.max(1), x.argmax(1)
        idx = np.minimum(np.floor(conf * BINS).astype(int), BINS - 1)
        r = rows[i]
        for j in range(len(y)):
            out["count"][r, idx[j]] += 1
            out["conf"][r, idx[j]] += conf[j]
            out["acc"][r, idx[j]] += int(pred[j] == y[j])
        out["nll"][r] += (lse - x[np.arange(len(y)), y]).sum()
        onehot = np.eye(K)[y]
        out["brier"][r] += ((p - onehot) ** 2).sum()
    n = out["count"].sum()
    out["ece"] = sum(abs(out["acc"][:, k].sum() - out["conf"][:, k].sum()) for k in range(BINS)) / n
    out["nll_mean"], out["brier_mean"] = out["nll"].sum() / n, out["brier"].sum() / n
    return out


def near_edges(z, labels):
    """Pixels whose confidence lies within 1e-5 of an inner bin edge (1/15 .. 14/15): float32 and float64 may
    bin them apart (near 1 both give the last bin)."""
    z = np.moveaxis(np.asarray(z, np.float64), 1, -1).reshape(-1, K)
    keep = np.asarray(labels).reshape(-1) != 255
    p = np.exp(z - z.max(1, keepdims=True))
    c = (1 / p.sum(1))[keep] * BINS
    edge = np.round(c)
    return int(((np.abs(c - edge) < 1e-5 * BINS) & (edge >= 1) & (edge < BINS)).sum())


def random_case(seed, b=3, h=7, w=9, scale=3.0):
    rng = np.random.default_rng(seed)
    z = (rng.normal(0, scale, (b, K, h, w)) + rng.normal(0, scale / 2, (b, K, 1, 1))).astype(np.float32)
    labels = rng.integers(0, K, (b, h, w))
    labels[rng.random((b, h, w)) < 0.2] = 255
    right = rng.random((b, h, w)) < 0.3                        # some pixels labelled as predicted
    labels[right] = z.argmax(1)[right]
    return z, labels


@pytest.mark.parametrize("seed, scale", [(0, 3.0), (1, 0.3), (2, 12.0)])
def test_ece_nll_brier_equal_numpy(seed, scale):
    z, labels = random_case(seed, scale=scale)
    cal = Calibration(3)
    cal.update(torch.from_numpy(z), torch.from_numpy(labels), rows=[2, 0, 1])
    want = numpy_calibration(z, labels, rows=[2, 0, 1], n_rows=3)
    assert near_edges(z, labels) == 0
    got, m = cal.rows(), cal.metrics()
    np.testing.assert_array_equal(got["image_count"], want["count"])
    np.testing.assert_array_equal(got["image_acc_sum"], want["acc"])
    np.testing.assert_allclose(got["image_conf_sum"], want["conf"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["image_nll_sum"], want["nll"], rtol=1e-6)
    np.testing.assert_allclose(got["image_brier_sum"], want["brier"], rtol=1e-6)
    assert m["ece"] == pytest.approx(want["ece"], rel=1e-6, abs=1e-9)
    assert m["nll"] == pytest.approx(want["nll_mean"], rel=1e-6)
    assert m["brier"] == pytest.approx(want["brier_mean"], rel=1e-6)
    # Every non-255 pixel counted once; ignored ones nowhere.
    assert got["image_count"].sum() == (labels != 255).sum()
    if scale == 0.3:    # flatter logits: the high-confidence bins stay empty, and add nothing to ECE
        assert (got["image_count"].sum(0)[3:] == 0).all()
    if scale == 12.0:   # confident logits: the low bins stay empty
        assert (got["image_count"].sum(0)[:7] == 0).all()
    t = cal.totals()
    assert t["pixels"] == (labels != 255).sum() and t["count"].dtype == np.int64 and t["acc_sum"].dtype == np.int64


def test_nll_stays_finite_where_the_true_class_probability_underflows():
    # p_y = exp(-200) is 0 in float32 (and float64 would give log 0 = -inf from log(softmax)); the
    # log-softmax form gives 200 + log(1 + e^-200 ...) = 200.
    z = torch.full((1, K, 1, 1), -300.0)
    z[0, 3] = 0.0
    z[0, 5] = -200.0
    cal = Calibration()
    cal.update(z, torch.tensor([[[5]]]))
    assert cal.nll() == pytest.approx(200.0, rel=1e-6)
    assert cal.brier() == pytest.approx(2.0, abs=1e-6)      # p = onehot(3): (1 - 0)^2 + (0 - 1)^2
    assert cal.ece() == pytest.approx(1.0)                  # confidence 1, wrong


def test_bin_rule_at_the_edges():
    # bin i = [i/15, (i+1)/15), 1.0 in bin 14: the float32 values nearest each edge, and the next ones
    # either side, against exact rational arithmetic on the same float32 numbers.
    vals = []
    for k in range(BINS + 1):
        e = np.float32(k / BINS)
        vals += [e, np.nextafter(e, np.float32(0)), np.nextafter(e, np.float32(2))]
    vals = np.clip(np.array(vals, np.float32), 0, 1)
    got = bin_index(torch.from_numpy(vals)).numpy()
    want = [min(int(Fraction(float(v)) * BINS // 1), BINS - 1) for v in vals]
    assert got.tolist() == want
    assert got[vals == 1].tolist() == [14] * int((vals == 1).sum()) and bin_index(torch.tensor([0.0])).item() == 0


def edge_logits():
    """One pixel per image: confidences just below and above each edge k/15 (relative 1e-4, far above
    float32 rounding), exactly 1, and fl(1/s) for s = 15, 5, 3 equal top logits (edges 1/15, 3/15, 5/15
    up to the rounding of 1/s: fl32(1/3) > 1/3, so bin 5)."""
    cases, bins = [], []
    for k in range(1, BINS):
        for sign, b in ((-1, k - 1), (1, k)):
            p = k / BINS * (1 + sign * 1e-4)
            probs = np.full(K, (1 - p) / (K - 1))
            probs[4] = p
            cases.append(np.log(probs))
            bins.append(b)
    for s in (1, 3, 5, 15):
        z = np.full(K, -200.0)   # exp(-200) is 0 in float32: s equal logits give c = fl(1/s) exactly
        z[:s] = 0.0
        cases.append(z)
        bins.append(min(int(Fraction(float(np.float32(1) / np.float32(s))) * BINS // 1), BINS - 1))
    return np.array(cases, np.float32).reshape(-1, K, 1, 1), bins


def test_confidences_on_the_edges_land_in_their_bins():
    z, bins = edge_logits()
    labels = np.full((len(z), 1, 1), 4)
    cal = Calibration(len(z))
    cal.update(torch.from_numpy(z), torch.from_numpy(labels), rows=np.arange(len(z)))
    count = cal.rows()["image_count"]
    assert count.sum(1).tolist() == [1] * len(z)
    assert count.argmax(1).tolist() == bins
    assert bins[-4:] == [14, 5, 3, 1]
    # Empty bins (there are none here) and full ones: ECE equals the numpy definition.
    assert cal.ece() == pytest.approx(numpy_calibration(z, labels)["ece"], rel=1e-6)


@pytest.mark.parametrize("stride", [2, 3])
def test_a_stride_scores_the_subgrid_of_every_s_th_row_and_column(stride):
    z, labels = random_case(5, b=3, h=11, w=8)
    cal = Calibration(3, stride=stride)
    cal.update(torch.from_numpy(z), torch.from_numpy(labels), rows=[0, 1, 2])
    # The pixels (s i, s j), picked by hand; an 11 x 8 image gives rows 0, s, 2s, ... < 11 and columns < 8.
    sub_z, sub_labels = z[:, :, ::stride, ::stride], labels[:, ::stride, ::stride]
    assert sub_z.shape[2:] == (len(range(0, 11, stride)), len(range(0, 8, stride)))
    want = numpy_calibration(sub_z, sub_labels, rows=np.arange(3), n_rows=3)
    got = cal.rows()
    slack = 2 * near_edges(sub_z, sub_labels)
    assert np.abs(got["image_count"] - want["count"]).sum() <= slack
    assert got["image_count"].sum() == (sub_labels != 255).sum()
    np.testing.assert_allclose(got["image_nll_sum"], want["nll"], rtol=1e-5)
    np.testing.assert_allclose(got["image_brier_sum"], want["brier"], rtol=1e-5)
    assert cal.metrics()["ece"] == pytest.approx(want["ece"], rel=1e-4, abs=1e-6)
    # The stride travels with the tables (saved, read back, added).
    back = Calibration.from_state_dict(cal.state_dict())
    assert back.stride == stride and (back + back).stride == stride


def test_two_halves_add_up_to_the_whole():
    z, labels = random_case(3, b=4)
    zt, lt = torch.from_numpy(z), torch.from_numpy(labels)
    whole = Calibration(4)
    whole.update(zt, lt, rows=[0, 1, 2, 3])
    a, b = Calibration(4), Calibration(4)
    a.update(zt[:2], lt[:2], rows=[0, 1])
    b.update(zt[2:], lt[2:], rows=[2, 3])
    summed = a + b
    for key, value in whole.state_dict().items():
        np.testing.assert_array_equal(summed.state_dict()[key], value, err_msg=key)   # disjoint rows: bit for bit
    # Shards: each half with its own two rows, stacked and put back in image order.
    s0, s1 = Calibration(2), Calibration(2)
    s0.update(zt[[0, 2]], lt[[0, 2]], rows=[0, 1])
    s1.update(zt[[1, 3]], lt[[1, 3]], rows=[0, 1])
    joined = Calibration.concat([s0, s1], order=[0, 2, 1, 3])
    for key, value in whole.state_dict().items():
        np.testing.assert_array_equal(joined.state_dict()[key], value, err_msg=key)
    # One row for everything (two updates into the same row): counts exact, sums to float64 rounding.
    one, parts = Calibration(), Calibration()
    one.update(zt, lt)
    parts.update(zt[:1], lt[:1])
    parts.merge(Calibration.from_state_dict(_updated(zt[1:], lt[1:]).state_dict()))
    assert np.array_equal(one.totals()["count"], parts.totals()["count"])
    assert one.metrics() == pytest.approx(parts.metrics(), rel=1e-12)
    # Saved and loaded: the same numbers; an NPZ without calib_* arrays (older results) gives None.
    back = Calibration.from_state_dict(whole.state_dict())
    assert back.metrics() == whole.metrics()
    assert Calibration.from_state_dict({"tp": np.zeros(3)}) is None


def _updated(z, labels):
    c = Calibration()
    c.update(z, labels)
    return c


def test_ibe_logits_go_through_the_same_21_channel_softmax():
    # IBE / SCrIBE output channel 0 = -logsumexp of the 20 foreground logits: the calibration is that of the
    # softmax over those 21 channels, computed here by numpy from the same construction in float64.
    rng = np.random.default_rng(5)
    fg = rng.normal(-1, 3, (2, K - 1, 6, 5))
    built = np.concatenate([-np.log(np.exp(fg).sum(1, keepdims=True)), fg], 1)
    from common.models import implicit_background
    z = implicit_background(torch.from_numpy(fg.astype(np.float32)))
    np.testing.assert_allclose(z.numpy(), built, rtol=1e-5, atol=1e-5)
    labels = rng.integers(0, K, (2, 6, 5))
    labels[:, 0] = 255
    labels[:, 1] = 0
    cal = Calibration()
    cal.update(z, torch.from_numpy(labels))
    want = numpy_calibration(built, labels)
    assert cal.ece() == pytest.approx(want["ece"], rel=1e-5)
    assert cal.nll() == pytest.approx(want["nll_mean"], rel=1e-5)
    assert cal.brier() == pytest.approx(want["brier_mean"], rel=1e-5)


# ------------------------------------------------------------------------------ through the sweep

SIZE = 32
SWEEP = ["--corruptions", "gaussian", "brightness", "--severities", "0", "3", "5"]


def sweep(data, ckpts, out, *extra, names=("baseline", "ibe", "twin")):
    args = ev.get_args_parser().parse_args(["--checkpoints", *ckpts, "--names", *names, "--data", "synthetic",
                                            "--synthetic-root", data, "--size", str(SIZE), "--batch-size", "3",
                                            "--workers", "0", "--out", str(out), *SWEEP, *extra])
    return ev.main(args)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, synthetic, tiny_ckpts):
    """Baseline, IBE and the baseline's checkpoint again under another name ("twin"), 4 val images at 32 px."""
    d = tmp_path_factory.mktemp("calib")
    data = synthetic(n_val=4, max_side=64)
    base, ibe = tiny_ckpts["baseline"], tiny_ckpts["ibe"]
    ckpts = [base, ibe, base]
    sweep(data, ckpts, d / "results")
    return {"data": data, "ckpts": ckpts, "out": d / "results", "dir": d}


def metric_rows(out):
    return {(r["model"], r["corruption"], r["severity"]): r
            for r in map(json.loads, open(os.path.join(out, "metrics.jsonl")))}


@pytest.mark.parametrize("corruption, severity", [("clean", 0), ("gaussian_noise", 5)])
def test_sweep_calibration_equals_numpy_from_the_models_logits(swept, corruption, severity):
    from common.checkpoint import load_model
    from test_evaluate_corruptions import hand_inputs, val_ids
    xs, labels = hand_inputs(swept["data"], corruption, severity, size=SIZE)
    assert all((lb == 255).any() for lb in labels)          # the synthetic borders: 255s to leave out
    rows = metric_rows(swept["out"])
    for name, path in zip(("baseline", "ibe"), swept["ckpts"]):
        model = load_model(path)[0]
        with torch.no_grad():
            z = np.concatenate([model(torch.from_numpy(x)[None]).numpy() for x in xs])
        lab = np.stack(labels)
        # Scored on the subgrid of every s-th row and column (--calibration-stride, default 3): picked here by hand.
        stride = json.load(open(os.path.join(swept["out"], "run.json")))["calibration_stride"]
        assert stride == 3
        z, lab = z[:, :, ::stride, ::stride], lab[:, ::stride, ::stride]
        want = numpy_calibration(z, lab, rows=np.arange(len(xs)), n_rows=len(xs))
        row = rows[name, corruption, severity]
        # The sweep ran batches of 3, this one image at a time: float32 rounding apart, nothing more.
        assert row["ece"] == pytest.approx(want["ece"], rel=1e-4, abs=1e-6)
        assert row["nll"] == pytest.approx(want["nll_mean"], rel=1e-5)
        assert row["brier"] == pytest.approx(want["brier_mean"], rel=1e-5)
        cf = np.load(os.path.join(swept["out"], "confusion", name, f"{corruption}_{severity}.npz"))
        assert list(cf["image_ids"]) == val_ids(swept["data"])
        slack = 2 * near_edges(z, lab)
        assert np.abs(cf["calib_image_count"] - want["count"]).sum() <= slack
        assert np.abs(cf["calib_image_acc_sum"] - want["acc"]).sum() <= slack
        np.testing.assert_allclose(cf["calib_image_nll_sum"], want["nll"], rtol=1e-5)
        np.testing.assert_allclose(cf["calib_image_brier_sum"], want["brier"], rtol=1e-5)
        # The stored totals are the per-image rows summed, and give the row's numbers.
        np.testing.assert_array_equal(cf["calib_count"], cf["calib_image_count"].sum(0))
        assert int(cf["calib_pixels"]) == (lab != 255).sum() == cf["calib_count"].sum()
        assert abs(cf["calib_acc_sum"] - cf["calib_conf_sum"]).sum() / cf["calib_pixels"] == row["ece"]
        assert float(cf["calib_nll_sum"]) / int(cf["calib_pixels"]) == row["nll"]
    # IBE's background channel is -logsumexp of the foreground: a softmax over all 21 (checked above) and
    # not, say, a sigmoid per channel; its NLL differs from the baseline's.
    assert rows["ibe", corruption, severity]["nll"] != rows["baseline", corruption, severity]["nll"]


def test_condition_stats_calibration_where_background_and_foreground_win():
    # ConditionStats passes the top logit from END's max(foreground max, z0): right whichever of the two wins.
    z, labels = random_case(7, b=2)
    z[:, 0] += np.where(np.arange(9) < 4, 20.0, -20.0)        # background on top in the left columns only
    st = ConditionStats(2)
    st.update(torch.from_numpy(z), torch.from_numpy(labels), np.array([1, 0]))
    pred = z.argmax(1)
    assert (pred == 0).mean() > 0.25 and (pred > 0).mean() > 0.25
    want = numpy_calibration(z, labels, rows=[1, 0], n_rows=2)
    got = st.calibration.rows()
    np.testing.assert_array_equal(got["image_count"], want["count"])
    np.testing.assert_allclose(got["image_conf_sum"], want["conf"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["image_nll_sum"], want["nll"], rtol=1e-6)
    np.testing.assert_allclose(got["image_brier_sum"], want["brier"], rtol=1e-6)
    row = metrics_row(st, {"name": "m", "path": "p", "sha256": "0", "kind": "baseline"}, "clean", 0,
                      ev.get_args_parser().parse_args([]), 2, 0.0)
    assert row["ece"] == pytest.approx(want["ece"], rel=1e-6)
    assert row["nll"] == pytest.approx(want["nll_mean"], rel=1e-6)
    assert row["brier"] == pytest.approx(want["brier_mean"], rel=1e-6)


def test_shards_merge_to_the_single_runs_calibration(swept, tmp_path):
    for k in (0, 1):
        sweep(swept["data"], swept["ckpts"], tmp_path / f"s{k}", "--shard", f"{k}/2")
    ev.main(ev.get_args_parser().parse_args(["--merge", str(tmp_path / "s0"), str(tmp_path / "s1"),
                                             "--out", str(tmp_path / "merged")]))
    single, merged = metric_rows(swept["out"]), metric_rows(tmp_path / "merged")
    assert single.keys() == merged.keys()
    # The shards batch other images together, and the forward's float32 rounding depends a little on the
    # batch (oneDNN); the calibration sums add the same per-image rows in the same order (bit for bit for
    # equal logits: test_two_halves_add_up_to_the_whole), so only that rounding remains.
    for key, row in single.items():
        for k in ("ece", "nll", "brier"):
            assert merged[key][k] == pytest.approx(row[k], rel=1e-8), (key, k)
    for name in ("baseline", "ibe"):
        a = np.load(os.path.join(swept["out"], "confusion", name, "brightness_3.npz"))
        b = np.load(tmp_path / "merged" / "confusion" / name / "brightness_3.npz")
        calib = [k for k in a.files if k.startswith("calib_")]
        # Written deflated (mostly small counts), every array.
        import zipfile
        with zipfile.ZipFile(os.path.join(swept["out"], "confusion", name, "brightness_3.npz")) as z:
            assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
        # softmax and sigmoid readings: 11 arrays of the 15 bins, 6 of the fine bins, the temperature and the
        # stride each; the sigmoid's 3 class-wise tables; the temperature-scaled readings: 11 + the temperature
        # and the stride each
        assert len(calib) == 2 * 19 + 3 + 2 * 13
        for k in calib:
            if a[k].dtype == np.int64:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
            else:   # the class-wise sums are float32 within a batch, and shards batch other images together
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5 if "classwise" in k else 1e-8, err_msg=k)


# ------------------------------------------------------------------------------------ the analysis

def analyse(results, out, *extra):
    args = al.get_args_parser().parse_args(["--results", str(results), "--out", str(out), *extra])
    assert al.main(args) == 0
    return json.load(open(os.path.join(out, "analysis.json"))), np.load(os.path.join(out, "analysis_arrays.npz"))


def hand_bootstrap(results, model, reference, conds, metric, n_resamples, seed):
    """A plain loop: per resample, the drawn images' per-image bins and sums added up one image at a time,
    the metric from them by its formula; the mean over ``conds``; model minus reference; 2.5/97.5 percentiles."""
    rng = np.random.default_rng(seed)

    def value(m, cs, draw):
        z = np.load(os.path.join(results, "confusion", m, f"{cs[0]}_{cs[1]}.npz"))
        count, conf, acc, nll, brier = np.zeros(BINS), np.zeros(BINS), np.zeros(BINS), 0.0, 0.0
        for i in draw:
            count += z["calib_image_count"][i]
            conf += z["calib_image_conf_sum"][i]
            acc += z["calib_image_acc_sum"][i]
            nll += z["calib_image_nll_sum"][i]
            brier += z["calib_image_brier_sum"][i]
        n = count.sum()
        return {"ece": sum(abs(acc[b] - conf[b]) for b in range(BINS)) / n, "nll": nll / n, "brier": brier / n}[metric]

    n = len(np.load(os.path.join(results, "confusion", model, "clean_0.npz"))["image_ids"])
    draws = rng.integers(0, n, size=(n_resamples, n))
    diffs = [np.mean([value(model, cs, d) - value(reference, cs, d) for cs in conds]) for d in draws]
    observed = np.mean([value(model, cs, range(n)) - value(reference, cs, range(n)) for cs in conds])
    return observed, np.percentile(diffs, 2.5), np.percentile(diffs, 97.5)


def test_analysis_summaries_and_paired_bootstrap_by_hand(swept, tmp_path):
    a, arrays = analyse(swept["out"], tmp_path, "--bootstrap", "60", "--seed", "3", "--reference", "baseline")
    rows = metric_rows(swept["out"])
    corrupted = [("gaussian_noise", 3), ("gaussian_noise", 5), ("brightness", 3), ("brightness", 5)]
    for m in ("baseline", "ibe", "twin"):
        cal = a["per_model"][m]["calibration"]
        for k in ("ece", "nll", "brier"):
            assert cal["clean"][k] == rows[m, "clean", 0][k]
            assert cal["corrupted"][k]["value"] == pytest.approx(np.mean([rows[(m,) + cs][k] for cs in corrupted]))
            assert cal["corrupted"][k]["n_conditions"] == 4 and not cal["corrupted"][k]["complete"]
            assert cal["per_severity"]["3"][k] == pytest.approx(
                (rows[m, "gaussian_noise", 3][k] + rows[m, "brightness", 3][k]) / 2)
        # The figure's bins: severity 3 summed over its corruptions, from the NPZ files by hand.
        files = [np.load(os.path.join(swept["out"], "confusion", m, f"{c}_3.npz"))
                 for c in ("gaussian_noise", "brightness")]
        for key in ("count", "conf_sum", "acc_sum"):
            np.testing.assert_allclose(arrays[f"{m}/calibration/3/{key}"], sum(f[f"calib_{key}"] for f in files))
        ece = arrays[f"{m}/calibration/ece_by_severity"]
        assert ece[0] == rows[m, "clean", 0]["ece"] and np.isnan(ece[[1, 2, 4]]).all()
    comps = a["bootstrap"]["calibration"]["comparisons"]
    assert set(comps) == {"ibe", "twin"}
    # The same checkpoint under another name: every difference and both ends of every interval are 0.
    for part in ("clean", "corrupted"):
        for k in ("ece", "nll", "brier"):
            c = comps["twin"][part][k]
            assert (c["observed"], c["lower"], c["upper"]) == (0.0, 0.0, 0.0), (part, k)
    # IBE minus baseline against the plain loop, on the mIoU bootstrap's resamples (same seed).
    for part, conds in (("clean", [("clean", 0)]), ("corrupted", corrupted)):
        for k in ("ece", "nll", "brier"):
            obs, lo, hi = hand_bootstrap(swept["out"], "ibe", "baseline", conds, k, 60, 3)
            c = comps["ibe"][part][k]
            assert c["observed"] == pytest.approx(obs, rel=1e-9, abs=1e-12)
            assert (c["lower"], c["upper"]) == pytest.approx((lo, hi), rel=1e-9, abs=1e-12)
            assert lo < hi
    tables = open(tmp_path / "tables.md").read()
    section = tables[tables.index("## Calibration"):]
    ibe_line = next(line for line in section.splitlines() if line.startswith("| ibe |"))
    assert ibe_line.split(" | ")[1] == f"{100 * rows['ibe', 'clean', 0]['ece']:.2f}"
    assert "### ECE (%) per severity" in section


def test_results_of_an_earlier_format_are_refused_in_one_line(swept, tmp_path, capsys):
    # A folder of an earlier evaluate_corruptions.py: rows without ece/nll/brier, or NPZ files without calib_*.
    import shutil
    old = tmp_path / "old"
    shutil.copytree(swept["out"], old)
    lines = [json.loads(line) for line in open(old / "metrics.jsonl")]
    with open(old / "metrics.jsonl", "w") as fh:
        for r in lines:
            if r["model"] == "ibe":
                for k in ("ece", "nll", "brier"):
                    del r[k]
            fh.write(json.dumps(r) + "\n")
    line = refused(capsys, al, "--results", old, "--out", tmp_path / "analysis", "--bootstrap", "0")
    assert "metrics.jsonl: the row for ibe" in line and "no ece, nll, brier field" in line
    assert "rerun evaluate_corruptions.py into a new --out" in line
    shutil.copy(swept["out"] / "metrics.jsonl", old / "metrics.jsonl")
    f = old / "confusion" / "ibe" / "clean_0.npz"
    np.savez(f, **{k: v for k, v in dict(np.load(f)).items() if not k.startswith("calib_")})
    line = refused(capsys, al, "--results", old, "--out", tmp_path / "analysis", "--bootstrap", "0")
    assert "confusion/ibe/clean_0.npz: no calib_image_count array" in line and "earlier version" in line
    assert "rerun evaluate_corruptions.py" in line
    assert not (tmp_path / "analysis").exists()


def test_bad_calibration_inputs_are_one_line_exit_2(swept, tmp_path, capsys):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(swept["out"], bad)
    lines = open(bad / "metrics.jsonl").read().splitlines()
    row = json.loads(lines[0])
    row["ece"] = "low"
    open(bad / "metrics.jsonl", "w").write("\n".join([json.dumps(row)] + lines[1:]) + "\n")
    line = refused(capsys, al, "--results", bad, "--bootstrap", "0")
    assert "ece" in line and "must be a number or null" in line
    assert not (bad / "analysis.json").exists()
    # Per-image tables that do not fit image_ids.
    shutil.copy(swept["out"] / "metrics.jsonl", bad / "metrics.jsonl")
    path = bad / "confusion" / "ibe" / "brightness_5.npz"
    z = dict(np.load(path))
    z["calib_image_count"] = z["calib_image_count"][:2]
    np.savez(path, **z)
    from common.cli import UsageError
    with pytest.raises(UsageError, match=r"brightness_5\.npz: calib_image_count has shape \(2, 15\), "
                                         r"expected \(4, 15\)"):
        al.main(al.get_args_parser().parse_args(["--results", str(bad), "--bootstrap", "0"]))


# -------------------------------------------------------------------------------------- the figure

def test_calibration_figure_draws_the_bins_and_ece_by_hand(swept, tmp_path):
    import make_figures as mf
    analyse(swept["out"], swept["out"], "--bootstrap", "0")
    args = mf.get_args_parser().parse_args(["--results", str(swept["out"]), "--out", str(tmp_path),
                                            "--only", "calibration"])
    assert mf.main(args) is None and os.listdir(tmp_path) == ["calibration.png"]
    fig = mf.fig_calibration(mf.read_results(args, ["calibration"]))
    panels = {ax.get_title(): ax for ax in fig.axes}
    rows = metric_rows(swept["out"])
    for m in ("baseline", "ibe", "twin"):
        lines = {ln.get_label(): ln for ln in panels[m].get_lines()}
        assert list(lines) == ["perfect calibration", "clean", "severity 3", "severity 5"]
        assert lines["perfect calibration"].get_xydata().tolist() == [[0, 0], [1, 1]]
        for s, label in ((0, "clean"), (3, "severity 3"), (5, "severity 5")):
            files = [np.load(os.path.join(swept["out"], "confusion", m, f"{c}_{s}.npz"))
                     for c in (("clean",) if s == 0 else ("gaussian_noise", "brightness"))]
            n, conf, acc = (sum(f[f"calib_{k}"] for f in files).astype(float) for k in ("count", "conf_sum", "acc_sum"))
            kept = n > 0
            np.testing.assert_allclose(lines[label].get_xdata(), conf[kept] / n[kept], rtol=1e-12)
            np.testing.assert_allclose(lines[label].get_ydata(), acc[kept] / n[kept], rtol=1e-12)
    ece_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "ECE (%)")
    for ln in ece_ax.get_lines():
        m = ln.get_label()
        want = [rows[m, "clean", 0]["ece"]] + [np.nan] * 5
        for s in (3, 5):
            want[s] = (rows[m, "gaussian_noise", s]["ece"] + rows[m, "brightness", s]["ece"]) / 2
        np.testing.assert_allclose(ln.get_ydata(), 100 * np.array(want), rtol=1e-12)


def test_calibration_figure_without_calibration_arrays_is_refused(swept, tmp_path, capsys):
    import shutil
    old = tmp_path / "old"
    shutil.copytree(swept["out"], old)
    analyse(old, old, "--bootstrap", "0")
    z = dict(np.load(old / "analysis_arrays.npz"))
    np.savez(old / "analysis_arrays.npz", **{k: v for k, v in z.items() if "/calibration/" not in k})
    line = refused(capsys, make_figures, "--results", old, "--out", tmp_path / "figs", "--only",
                   "miou_vs_severity", "calibration")
    assert "no calibration arrays" in line and "rerun analyze_logits.py" in line
    assert not (tmp_path / "figs").exists() or not os.listdir(tmp_path / "figs")


def test_worst_case_over_corruptions_and_its_bootstrap_by_hand(swept, tmp_path):
    # Per severity the lowest mIoU over the corruptions present (gaussian noise, brightness), which one, and
    # the paired interval of its difference, the minimum recomputed in each resample: a plain loop.
    a, _ = analyse(swept["out"], tmp_path, "--bootstrap", "50", "--seed", "7", "--reference", "baseline")
    rows = metric_rows(swept["out"])
    corrs = ("gaussian_noise", "brightness")
    for m in ("baseline", "ibe"):
        for s in (3, 5):
            w = a["per_model"][m]["worst_case"][str(s)]
            want = min((rows[m, c, s]["miou"], c) for c in corrs)
            assert (w["miou"], w["corruption"]) == want and w["n_corruptions"] == 2 and not w["complete"]
        assert a["per_model"][m]["worst_case"]["1"]["miou"] is None
    rng = np.random.default_rng(7)
    files = {(m, c, s): np.load(os.path.join(swept["out"], "confusion", m, f"{c}_{s}.npz"))
             for m in ("baseline", "ibe") for c in corrs for s in (3, 5)}
    n = len(files["baseline", corrs[0], 3]["image_ids"])
    draws = rng.integers(0, n, size=(50, n))

    def miou(m, c, s, draw):
        z = files[m, c, s]
        tp, fp, fn = (sum(z[k][i] for i in draw).astype(float) for k in ("tp", "fp", "fn"))
        union = tp + fp + fn
        return float(np.mean(tp[union > 0] / union[union > 0]))

    for s in (3, 5):
        diffs = [min(miou("ibe", c, s, d) for c in corrs) - min(miou("baseline", c, s, d) for c in corrs)
                 for d in draws]
        got = a["bootstrap"]["worst_case"]["comparisons"]["ibe"][str(s)]
        obs = min(miou("ibe", c, s, range(n)) for c in corrs) - min(miou("baseline", c, s, range(n)) for c in corrs)
        assert got["observed"] == pytest.approx(obs, abs=1e-12)
        assert (got["lower"], got["upper"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])), abs=1e-12)
    assert "## Worst case: the lowest mIoU" in open(tmp_path / "tables.md").read()


def test_worst_case_bootstrap_on_random_counts_by_hand():
    # Per-image TP and union counts drawn at random so that the worst corruption differs between models and
    # between resamples: the interval of the difference of minima, against a plain loop over the resamples.
    rng = np.random.default_rng(12)
    n, corrs = 12, ("gaussian_noise", "shot_noise", "fog")
    counts, miou = {}, {}
    for m, shift in (("baseline", 0), ("ibe", 1)):
        counts[m], miou[m] = {}, {}
        for j, c in enumerate(corrs):
            union = rng.integers(5, 40, (n, K)).astype(float)
            tp = np.floor(union * rng.uniform(0.1, 0.9, (n, K)) * (1 + 0.1 * ((j + shift) % 3))).clip(0, union)
            counts[m][c, 4] = (tp, union)
            miou[m][c, 4] = float(np.mean(tp.sum(0) / union.sum(0)))
    per_model = {m: worst_case(miou[m]) for m in ("baseline", "ibe")}
    boot = worst_case_intervals(["baseline", "ibe"], "baseline", counts, np.arange(n), n_resamples=300, seed=9)
    for m in ("baseline", "ibe"):
        want = min((miou[m][c, 4], c) for c in corrs)
        assert (per_model[m]["4"]["miou"], per_model[m]["4"]["corruption"]) == want
    assert per_model["baseline"]["4"]["corruption"] != per_model["ibe"]["4"]["corruption"]
    draws = np.random.default_rng(9).integers(0, n, size=(300, n))

    def worst(m, draw):
        return min(float(np.mean(counts[m][c, 4][0][draw].sum(0) / counts[m][c, 4][1][draw].sum(0))) for c in corrs)

    diffs = [worst("ibe", d) - worst("baseline", d) for d in draws]
    got = boot["comparisons"]["ibe"]["4"]
    assert got["observed"] == pytest.approx(worst("ibe", np.arange(n)) - worst("baseline", np.arange(n)), abs=1e-12)
    assert (got["lower"], got["upper"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])), abs=1e-12)
    assert got["n_corruptions"] == 3 and not got["complete"] and boot["comparisons"]["ibe"]["1"] is None

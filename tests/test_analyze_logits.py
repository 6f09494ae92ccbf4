"""analyze_logits.py against hand computations: mPC/rPC/CD/rCD, explained variance (eigh), paired bootstrap,
partial results and bad input. Results folders are written by hand here, so every expected number is
computed in the test, independently of the code under test."""
import json
import os

import numpy as np
import pytest
import torch

import analyze_logits as al
from common.analysis.bootstrap import resample_miou
from common.analysis.structure import explained_variance
from common.calibration import VARIANTS, Calibration, prefix_of
from common.corruptions import CORRUPTIONS, corruption_number
from common.cli import UsageError
from common.datasets import dataset_record, dataset_spec
from common.results import finite_or_none
from helpers import refused

K = 21
VOC = dataset_record(dataset_spec("voc"))


# ------------------------------------------------------------------------------------------- helpers

def write_results(root, mious, kinds, end=None, distance=None, confusion=None, logits=None, run_models=None,
                  distance_predicted=None, protocol="paper", sha256=None, readings=False, dataset=VOC, iou=None):
    """A results folder as evaluate_corruptions.py lays it out.

    mious {model: {(corruption, severity): mIoU}}; end/distance/distance_predicted same shape (optional; null
    where absent); confusion {model: {(c, s): (ids, tp, fp, fn)}}, each file with the calibration bins of random
    logits (``calibration_files``: the softmax reading only, and rows without calibration values, unless
    ``readings``: then all four readings and their values in the rows); logits {model: {(c, s): (count, sum, sq)}};
    run.json lists run_models [(name, kind)] (default: the models of ``mious``) with checkpoint hashes sha256
    {name: hex} (default 0...0) and the classes of ``dataset`` (a dataset_record; None: no dataset record);
    iou {model: {(c, s): [k IoUs]}} (default: null for every class).
    """
    os.makedirs(root, exist_ok=True)
    k = len((dataset or VOC)["classes"])
    run_models = list(kinds.items()) if run_models is None else run_models
    calibration = {(m, c, s): calibration_files(len(ids), readings, seed=n, k=k)
                   for n, (m, c, s, ids) in enumerate((m, c, s, v[0]) for m, conds in (confusion or {}).items()
                                                      for (c, s), v in conds.items())}
    no_values = ({}, {"ece": None, "nll": None, "brier": None, "calibration": {}})
    lines = []
    for m, conds in mious.items():
        for (c, s), v in conds.items():
            row = {"model": m, "kind": kinds[m], "corruption": c,
                   "corruption_number": None if c == "clean" else corruption_number(c), "severity": s,
                   "protocol": protocol, "size": 224 if protocol == "paper" else None, "miou": v, "pixel_acc": 0.9,
                   "iou": (iou or {}).get(m, {}).get((c, s), [None] * k), "end": (end or {}).get(m, {}).get((c, s)),
                   "distance": (distance or {}).get(m, {}).get((c, s)),
                   "distance_predicted": (distance_predicted or {}).get(m, {}).get((c, s)),
                   **calibration.get((m, c, s), no_values)[1], "images": 3, "seconds": 0.1, "shard": None}
            lines.append(json.dumps(row))
    with open(os.path.join(root, "metrics.jsonl"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with open(os.path.join(root, "run.json"), "w") as fh:
        json.dump({"models": [{"name": m, "kind": kind, "sha256": (sha256 or {}).get(m, "0" * 64)}
                              for m, kind in run_models],
                   "protocol": protocol, "size": 224 if protocol == "paper" else None, "images": 3,
                   **({"dataset": dataset} if dataset else {})}, fh)
    for m, conds in (confusion or {}).items():
        for (c, s), (ids, tp, fp, fn) in conds.items():
            os.makedirs(os.path.join(root, "confusion", m), exist_ok=True)
            np.savez(os.path.join(root, "confusion", m, f"{c}_{s}.npz"), confusion=np.zeros((k, k), np.int64),
                     image_ids=np.array(ids), tp=tp, fp=fp, fn=fn, **calibration[m, c, s][0])
    for m, conds in (logits or {}).items():
        for (c, s), (count, sm, sq) in conds.items():
            os.makedirs(os.path.join(root, "logits", m), exist_ok=True)
            np.savez(os.path.join(root, "logits", m, f"{c}_{s}.npz"), count=count, sum=sm, sq=sq,
                     end_sum=np.float64(0), pixels=np.int64(count.sum()))


def calibration_files(n_images, readings=False, seed=0, k=K):
    """(the calib_* arrays of one confusion NPZ, the calibration fields of its metrics.jsonl row) for random
    logits of n_images 2x2 images, made by common/calibration.py as evaluate_corruptions.py makes them: the
    softmax reading only and null row values, or with ``readings`` all four (temperature 1.5 for the scaled ones)."""
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(0, 3, (n_images, k, 2, 2)))
    labels = torch.from_numpy(rng.integers(0, k, (n_images, 2, 2)))
    arrays, values = {}, {}
    for v, (reading, scaled) in (VARIANTS if readings else {"softmax": VARIANTS["softmax"]}).items():
        cal = Calibration(n_images, reading=reading, temperature=1.5 if scaled else 1.0, fine=not scaled,
                          classwise=v == "sigmoid")
        cal.update(logits, labels, rows=np.arange(n_images))
        arrays.update(cal.state_dict(prefix_of(reading, scaled)))
        values[v] = {"reading": reading, "temperature": cal.temperature,
                     **{k: finite_or_none(x) for k, x in cal.metrics().items()}}
    if not readings:
        return arrays, {"ece": None, "nll": None, "brier": None, "calibration": {}}
    return arrays, {**{k: values["softmax"][k] for k in ("ece", "nll", "brier")}, "calibration": values}


def analyse(results, *extra):
    args = al.get_args_parser().parse_args(["--results", str(results), *extra])
    assert al.main(args) == 0
    out = args.out
    with open(os.path.join(out, "analysis.json")) as fh:
        return json.load(fh)


def miou_oracle(tp, fp, fn):
    """mIoU from summed per-image counts, the plain way: loop over classes."""
    t, p, n = tp.sum(0), fp.sum(0), fn.sum(0)
    ious = [t[k] / (t[k] + p[k] + n[k]) for k in range(K) if t[k] + p[k] + n[k] > 0]
    return sum(ious) / len(ious)


def random_counts(rng, n_images, skill):
    """Per-image TP/FP/FN for a few classes; higher skill -> more TP, fewer errors."""
    tp = np.zeros((n_images, K), np.int64)
    fp = np.zeros_like(tp)
    fn = np.zeros_like(tp)
    for i in range(n_images):
        for k in rng.choice(K, size=4, replace=False):
            tp[i, k] = rng.integers(50, 100) * skill
            fp[i, k] = rng.integers(0, 60)
            fn[i, k] = rng.integers(0, 60)
    return tp, fp, fn


def class_means_state(rng, count, k=K):
    """LogitTracker state with row n of sum = count_n * mu_n and a valid second moment, over k classes."""
    mu = rng.normal(size=(k, k)) * 3
    mu[:, :3] *= 4        # a few dominant directions, like real logits
    sm = mu * count[:, None]
    sq = count[:, None, None] * (mu[:, :, None] * mu[:, None, :] + np.eye(k))
    return count.astype(np.float64), sm, sq, mu


# ------------------------------------------------------------------------------ mPC / rPC / CD / rCD

# Two models, two corruptions, hand-picked mIoUs (fractions). "base" is the baseline kind but listed
# second, so the default reference must be found by kind, not by position.
IBE = {("clean", 0): 0.78,
       **{("gaussian_noise", s): v for s, v in zip(range(1, 6), (0.72, 0.65, 0.55, 0.45, 0.35))},
       **{("fog", s): v for s, v in zip(range(1, 6), (0.76, 0.72, 0.68, 0.64, 0.60))}}
BASE = {("clean", 0): 0.80,
        **{("gaussian_noise", s): v for s, v in zip(range(1, 6), (0.70, 0.60, 0.50, 0.40, 0.30))},
        **{("fog", s): v for s, v in zip(range(1, 6), (0.75, 0.70, 0.65, 0.60, 0.55))}}


def test_robustness_numbers_by_hand(tmp_path):
    end = {"ibe": {cs: (0.1 if cs[0] == "clean" else 0.3 if cs[0] == "fog" else 0.2) for cs in IBE}}
    write_results(tmp_path, {"ibe": IBE, "base": BASE}, {"ibe": "ibe", "base": "baseline"}, end=end)
    a = analyse(tmp_path, "--bootstrap", "0")
    assert a["reference"] == "base" and a["models"] == ["ibe", "base"]
    ibe, base = a["per_model"]["ibe"], a["per_model"]["base"]

    # mPC = mean of the 10 corrupted mIoUs: ibe (2.72 + 3.40) / 10, base (2.50 + 3.25) / 10.
    assert ibe["mpc"]["value"] == pytest.approx(0.612) and base["mpc"]["value"] == pytest.approx(0.575)
    assert ibe["mpc"]["n_conditions"] == 10 and ibe["mpc"]["of"] == 75 and ibe["mpc"]["complete"] is False
    assert ibe["rpc"]["value"] == pytest.approx(0.612 / 0.78) and base["rpc"]["value"] == pytest.approx(0.71875)
    assert ibe["clean_miou"] == pytest.approx(0.78)
    assert ibe["per_corruption"]["gaussian_noise"]["miou"] == pytest.approx(0.544)
    assert ibe["per_corruption"]["fog"]["miou"] == pytest.approx(0.68)
    assert ibe["per_corruption"]["fog"]["complete"] is True
    assert ibe["per_severity"]["1"]["miou"] == pytest.approx(0.74)     # (0.72 + 0.76) / 2
    assert ibe["per_severity"]["5"]["miou"] == pytest.approx(0.475)    # (0.35 + 0.60) / 2
    assert ibe["per_severity"]["0"]["miou"] == pytest.approx(0.78)
    assert ibe["per_severity"]["1"]["n_corruptions"] == 2 and ibe["per_severity"]["1"]["complete"] is False

    # CD_gauss = sum(1 - m) / sum(1 - ref) = (5 - 2.72) / (5 - 2.50) = 2.28 / 2.5; fog 1.60 / 1.75.
    # rCD_gauss = (5*0.78 - 2.72) / (5*0.80 - 2.50) = 1.18 / 1.5; fog (3.9 - 3.4) / (4.0 - 3.25) = 0.5 / 0.75.
    assert ibe["cd"]["gaussian_noise"]["cd"] == pytest.approx(0.912)
    assert ibe["cd"]["fog"]["cd"] == pytest.approx(1.6 / 1.75)
    assert ibe["cd"]["gaussian_noise"]["rcd"] == pytest.approx(1.18 / 1.5)
    assert ibe["cd"]["fog"]["rcd"] == pytest.approx(2 / 3)
    assert ibe["mcd"]["value"] == pytest.approx((0.912 + 1.6 / 1.75) / 2)
    assert ibe["mrcd"]["value"] == pytest.approx((1.18 / 1.5 + 2 / 3) / 2)
    assert ibe["mcd"]["n_corruptions"] == 2 and ibe["mcd"]["complete"] is False
    assert base["cd"]["fog"]["cd"] == pytest.approx(1.0) and base["cd"]["fog"]["rcd"] == pytest.approx(1.0)

    # END: clean 0.1; corrupted mean over 5 conditions at 0.2 and 5 at 0.3.
    assert ibe["end"]["clean"] == pytest.approx(0.1)
    assert ibe["end"]["corrupted"]["value"] == pytest.approx(0.25)
    assert ibe["end"]["corrupted"]["n_conditions"] == 10
    assert ibe["per_condition"]["fog/2"]["end"] == pytest.approx(0.3)
    assert base["end"]["clean"] is None

    tables = open(tmp_path / "tables.md").read()
    assert "| base (ref) | 80.0 | 57.5* |" in tables and "percent" in tables

    # Another reference: CD of base relative to ibe is the reciprocal.
    a = analyse(tmp_path, "--bootstrap", "0", "--reference", "ibe", "--out", str(tmp_path / "vs_ibe"))
    assert a["per_model"]["base"]["cd"]["gaussian_noise"]["cd"] == pytest.approx(2.5 / 2.28)


def test_zero_denominator_gives_null_with_note(tmp_path):
    flat = {("clean", 0): 0.5, **{("fog", s): 0.5 for s in range(1, 6)}}
    write_results(tmp_path, {"base": flat, "ibe": IBE}, {"base": "baseline", "ibe": "ibe"})
    a = analyse(tmp_path, "--bootstrap", "0")
    assert a["per_model"]["ibe"]["cd"]["fog"]["rcd"] is None
    assert a["per_model"]["ibe"]["cd"]["fog"]["cd"] == pytest.approx(1.6 / 2.5)
    assert any("rCD of fog" in n for n in a["notes"])


# ------------------------------------------------------------------------------- partial results

def test_partial_results_are_flagged(tmp_path, capsys):
    ibe = {k: v for k, v in IBE.items() if k != ("gaussian_noise", 3)}
    write_results(tmp_path, {"base": BASE, "ibe": ibe}, {"base": "baseline", "ibe": "ibe"},
                  run_models=[("base", "baseline"), ("ibe", "ibe"), ("scribe", "scribe")])
    a = analyse(tmp_path, "--bootstrap", "0")
    out = capsys.readouterr().out
    gaps = {(x["what"], tuple(x["models"]), tuple(x["conditions"])) for x in a["missing"]}
    assert ("metrics", ("ibe",), ("gaussian_noise/3",)) in gaps
    assert ("metrics", ("base", "ibe"), tuple(f"shot_noise/{s}" for s in range(1, 6))) in gaps
    assert any(x["models"] == ["scribe"] and "no rows at all" in x["message"] for x in a["missing"])
    assert "missing: ibe has no rows for gaussian_noise/3" in out
    assert "missing: scribe has no rows at all" in out
    assert "ibe: aggregate over 9 of 75 conditions" in out
    ibe_a = a["per_model"]["ibe"]
    assert ibe_a["mpc"]["complete"] is False and ibe_a["mpc"]["n_conditions"] == 9
    assert ibe_a["mpc"]["value"] == pytest.approx((2.72 - 0.55 + 3.40) / 9)
    # CD over the severities both models have: 1, 2, 4, 5.
    cd = ibe_a["cd"]["gaussian_noise"]
    assert cd["severities"] == [1, 2, 4, 5] and cd["complete"] is False
    assert cd["cd"] == pytest.approx((4 - (0.72 + 0.65 + 0.45 + 0.35)) / (4 - (0.70 + 0.60 + 0.40 + 0.30)))
    assert ibe_a["per_corruption"]["gaussian_noise"]["complete"] is False
    assert a["per_model"]["scribe"]["mpc"]["value"] is None


def test_complete_sweep(tmp_path):
    """Every condition with all three files: nothing missing, everything complete, numbers from counts."""
    rng = np.random.default_rng(1)
    ids = [f"2007_{i:06d}" for i in range(6)]
    conds = [("clean", 0)] + [(c, s) for c in CORRUPTIONS for s in range(1, 6)]
    mious, confusion, logits = {}, {}, {}
    state = class_means_state(rng, np.full(K, 10.0))[:3]
    for m, skill in (("base", 1), ("scribe", 2)):
        mious[m], confusion[m], logits[m] = {}, {}, {}
        for cs in conds:
            tp, fp, fn = random_counts(rng, len(ids), skill)
            mious[m][cs] = miou_oracle(tp, fp, fn)
            confusion[m][cs] = (ids, tp, fp, fn)
            logits[m][cs] = state
    write_results(tmp_path, mious, {"base": "baseline", "scribe": "scribe"}, confusion=confusion, logits=logits,
                  run_models=[("base", "baseline"), ("scribe", "scribe")])
    a = analyse(tmp_path, "--bootstrap", "50")
    assert a["missing"] == [] and a["notes"] == []
    s = a["per_model"]["scribe"]
    assert s["mpc"]["complete"] and s["mpc"]["n_conditions"] == 75 and s["mcd"]["complete"] and s["rpc"]["complete"]
    assert s["mpc"]["value"] == pytest.approx(np.mean([mious["scribe"][cs] for cs in conds[1:]]))
    assert s["mean_sev0_5"]["complete"] and s["mean_sev0_5"]["n_conditions"] == 75
    assert s["mean_sev0_5"]["value"] == pytest.approx(np.mean(
        [np.mean([mious["scribe"]["clean", 0]] + [mious["scribe"][c, sv] for sv in range(1, 6)]) for c in CORRUPTIONS]))
    agg = a["bootstrap"]["comparisons"]["scribe"]["aggregate"]
    assert agg["complete"] and agg["n_conditions"] == 75
    assert agg["observed"] == pytest.approx(np.mean([mious["scribe"][cs] - mious["base"][cs] for cs in conds[1:]]))
    z = np.load(tmp_path / "analysis_arrays.npz")
    for m in ("base", "scribe"):
        for key in ("count", "mean", "distance", "correlation", "correlation_notebook", "explained_variance",
                    "explained_variance_notebook", "explained_variance_count"):
            assert f"{m}/clean/{key}" in z.files
        assert all(f"{m}/{c}/{sv}/{key}" in z.files for c, sv in conds[1:]
                   for key in ("explained_variance", "explained_variance_notebook"))
    assert list(z["models"]) == ["base", "scribe"] and z["base/clean/correlation"].shape == (K, K, K)


# ------------------------------------------------------------------------------- explained variance

def eigh_explained(mean_rows):
    """Independent oracle: eigenvalues of the covariance of the centred rows, descending, cumulated."""
    x = mean_rows - mean_rows.mean(0)
    ev = np.linalg.eigh(x.T @ x / (len(x) - 1))[0][::-1].clip(min=0)
    return np.cumsum(ev) / ev.sum()


def test_explained_variance_against_eigh(tmp_path):
    rng = np.random.default_rng(0)
    count = rng.integers(1, 1000, size=K).astype(float)
    count[[4, 9, 17]] = 0                                     # three classes never predicted
    cnt, sm, sq, mu = class_means_state(rng, count)
    keep = count > 0
    want = eigh_explained(mu[keep])
    write_results(tmp_path, {"base": {("clean", 0): 0.5, ("fog", 1): 0.4}}, {"base": "baseline"},
                  logits={"base": {("clean", 0): (cnt, sm, sq), ("fog", 1): (cnt, sm * 2, sq * 4)}})
    a = analyse(tmp_path, "--bootstrap", "0")
    z = np.load(tmp_path / "analysis_arrays.npz")
    np.testing.assert_allclose(z["base/clean/explained_variance"], want, rtol=1e-9, atol=1e-12)
    # Scaling every mean by 2 leaves the ratios unchanged.
    np.testing.assert_allclose(z["base/fog/1/explained_variance"], want, rtol=1e-9, atol=1e-12)
    assert a["per_model"]["base"]["explained_variance_clean"]["classes_used"] == 18
    np.testing.assert_allclose(a["per_model"]["base"]["per_condition"]["clean/0"]["explained_variance"], want,
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(z["base/clean/mean"][keep], mu[keep], rtol=1e-12)
    assert np.isnan(z["base/clean/mean"][4]).all()
    i, j = 2, 5
    assert z["base/clean/distance"][i, j] == pytest.approx(np.sqrt(((mu[i] - mu[j]) ** 2).sum()))


def test_explained_variance_edge_cases():
    one = np.full((K, K), np.nan)
    one[3] = 1.0
    ev, used = explained_variance(one)           # a single predicted class: no variance to explain
    assert used == 1 and np.isnan(ev).all()
    two = np.full((K, K), np.nan)
    two[[0, 5]] = np.random.default_rng(0).normal(size=(2, K))
    ev, used = explained_variance(two)           # two points: one component explains everything
    assert used == 2 and ev[0] == pytest.approx(1.0) and np.all(ev == pytest.approx(1.0))


# ------------------------------------------------------------------------------------------ bootstrap

def test_resample_miou_matches_a_loop():
    rng = np.random.default_rng(3)
    n, conds = 7, 2
    per = [random_counts(rng, n, 1) for _ in range(conds)]
    idx = rng.integers(0, n, size=(5, n))
    weights = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(float)
    tp = np.stack([p[0] for p in per], axis=1)
    union = np.stack([p[0] + p[1] + p[2] for p in per], axis=1)
    got = resample_miou(tp, union, weights)
    for b in range(5):
        for c in range(conds):
            t, f, g = (per[c][k][idx[b]] for k in range(3))   # the resampled images, repeats included
            assert got[b, c] == pytest.approx(miou_oracle(t, f, g), rel=1e-12)


def paired_folder(root, copies=1):
    """Two models on 10 images (clean + gaussian_noise/1), the per-image data repeated `copies` times."""
    rng = np.random.default_rng(7)
    conf, mious = {"base": {}, "ibe": {}}, {"base": {}, "ibe": {}}
    for m, skill in (("base", 1), ("ibe", 2)):
        for cs in (("clean", 0), ("gaussian_noise", 1)):
            tp, fp, fn = (np.tile(x, (copies, 1)) for x in random_counts(rng, 10, skill))
            ids = [f"img{i}_{r}" for r in range(copies) for i in range(10)]
            conf[m][cs] = (ids, tp, fp, fn)
            mious[m][cs] = miou_oracle(tp, fp, fn)
    write_results(root, mious, {"base": "baseline", "ibe": "ibe"}, confusion=conf)
    return mious


def test_paired_bootstrap(tmp_path):
    mious = paired_folder(tmp_path / "x1")
    a = analyse(tmp_path / "x1", "--bootstrap", "400", "--seed", "5")
    c = a["bootstrap"]["comparisons"]["ibe"]
    want = mious["ibe"][("clean", 0)] - mious["base"][("clean", 0)]
    assert c["clean"]["observed"] == pytest.approx(want)
    assert c["aggregate"]["observed"] == pytest.approx(
        mious["ibe"][("gaussian_noise", 1)] - mious["base"][("gaussian_noise", 1)])
    for k in ("clean", "aggregate"):
        assert c[k]["lower"] < c[k]["observed"] < c[k]["upper"]
    assert c["aggregate"]["complete"] is False and c["aggregate"]["n_conditions"] == 1
    assert a["bootstrap"]["n_images"] == 10 and a["bootstrap"]["seed"] == 5

    # Seeded: a re-run gives the same intervals, another seed others.
    again = analyse(tmp_path / "x1", "--bootstrap", "400", "--seed", "5", "--out", str(tmp_path / "again"))
    assert again["bootstrap"] == a["bootstrap"]
    other = analyse(tmp_path / "x1", "--bootstrap", "400", "--seed", "6", "--out", str(tmp_path / "other"))
    assert other["bootstrap"]["comparisons"]["ibe"]["clean"] != c["clean"]

    # Four times the images (each repeated): same observed difference, interval about half as wide.
    paired_folder(tmp_path / "x4", copies=4)
    c4 = analyse(tmp_path / "x4", "--bootstrap", "400", "--seed", "5")["bootstrap"]["comparisons"]["ibe"]
    assert c4["clean"]["observed"] == pytest.approx(want)
    for k in ("clean", "aggregate"):
        assert (c4[k]["upper"] - c4[k]["lower"]) < 0.75 * (c[k]["upper"] - c[k]["lower"])


def test_unpaired_images_are_refused(tmp_path):
    paired_folder(tmp_path)
    z = dict(np.load(tmp_path / "confusion" / "ibe" / "clean_0.npz"))
    z["image_ids"] = np.array([f"other{i}" for i in range(10)])
    np.savez(tmp_path / "confusion" / "ibe" / "clean_0.npz", **z)
    with pytest.raises(UsageError, match="image_ids"):
        analyse(tmp_path)


# ------------------------------------------------------------------------------------------ bad input

def test_malformed_line_exits_2_and_keeps_old_outputs(tmp_path, capsys):
    write_results(tmp_path, {"ibe": IBE, "base": BASE}, {"ibe": "ibe", "base": "baseline"})
    analyse(tmp_path, "--bootstrap", "0")
    before = {f: open(tmp_path / f, "rb").read() for f in ("analysis.json", "tables.md", "analysis_arrays.npz")}
    lines = open(tmp_path / "metrics.jsonl").read().splitlines()
    lines[1] = lines[1][:40]                                  # a torn line
    open(tmp_path / "metrics.jsonl", "w").write("\n".join(lines) + "\n")
    assert "metrics.jsonl line 2" in refused(capsys, al, "--results", tmp_path, "--bootstrap", "0")
    assert {f: open(tmp_path / f, "rb").read() for f in before} == before
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]

    # Into a fresh --out: nothing is written at all.
    with pytest.raises(UsageError, match="line 2"):
        al.main(al.get_args_parser().parse_args(["--results", str(tmp_path), "--out", str(tmp_path / "new")]))
    assert not os.path.exists(tmp_path / "new")


@pytest.mark.parametrize("line, match", [
    ('{"model": "a", "corruption": "fog", "severity": 0, "miou": 0.5}', "severity"),
    ('{"model": "a", "corruption": "fogg", "severity": 1, "miou": 0.5}', "unknown corruption"),
    ('{"model": "a", "corruption": "fog", "severity": 1}', "no miou"),
    ('[1, 2]', "JSON object"),
])
def test_bad_rows(tmp_path, line, match):
    open(tmp_path / "metrics.jsonl", "w").write(line + "\n")
    with pytest.raises(UsageError, match=f"metrics.jsonl line 1: .*{match}"):
        analyse(tmp_path)


def test_missing_inputs(tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        analyse(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="metrics.jsonl: not found"):
        analyse(tmp_path)
    assert os.listdir(tmp_path) == []
    write_results(tmp_path, {"base": BASE}, {"base": "baseline"})
    with pytest.raises(UsageError, match="--reference nobody"):
        analyse(tmp_path, "--reference", "nobody")


# --------------------------------------------------------------- the notebook's definitions beside ours

def hand_state(rng, absent=(), pixels=3000):
    """count, sum, sq of random per-pixel logit vectors grouped by their argmax, summed by hand in numpy;
    the classes in ``absent`` are never the argmax."""
    x = rng.normal(-2, 2, (pixels, K))
    x[:, 0] += 2
    x[:, list(absent)] -= 50
    pred = x.argmax(1)
    count = np.array([(pred == n).sum() for n in range(K)], dtype=np.float64)
    sm = np.stack([x[pred == n].sum(0) for n in range(K)])
    sq = np.stack([x[pred == n].T @ x[pred == n] for n in range(K)])
    return count, sm, sq


def test_correlation_notebook_array_against_numpy(tmp_path):
    count, sm, sq = hand_state(np.random.default_rng(11), absent=(3, 8))
    write_results(tmp_path, {"base": {("clean", 0): 0.5}}, {"base": "baseline"},
                  logits={"base": {("clean", 0): (count, sm, sq)}})
    analyse(tmp_path, "--bootstrap", "0")
    z = np.load(tmp_path / "analysis_arrays.npz")
    got, ours = z["base/clean/correlation_notebook"], z["base/clean/correlation"]
    assert got.shape == (K, K, K)
    for n in range(K):
        if count[n] == 0:
            assert np.isnan(got[n]).all()
            continue
        mu = sm[n] / count[n]
        c = (sq[n] - np.outer(mu, mu)) / count[n]                 # the notebook's C_n, not a covariance
        want = c / np.sqrt(np.outer(np.diag(c), np.diag(c)))
        np.testing.assert_allclose(got[n], want, rtol=1e-10, atol=1e-12)
        cov = sq[n] / count[n] - np.outer(mu, mu)                 # and `correlation` stays the true one
        np.testing.assert_allclose(ours[n], cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov))), rtol=1e-8,
                                   atol=1e-10)
    assert np.nanmax(np.abs(got - ours)) > 0.1


def test_explained_variance_notebook_keeps_never_predicted_rows_as_zeros(tmp_path):
    rng = np.random.default_rng(4)
    count = rng.integers(1, 1000, size=K).astype(float)
    count[[2, 11]] = 0
    cnt, sm, sq, mu = class_means_state(rng, count)
    zeroed = np.where((count > 0)[:, None], mu, 0.0)          # sklearn PCA(21) on the NaN -> 0 matrix
    full = class_means_state(np.random.default_rng(4), np.full(K, 5.0))
    write_results(tmp_path, {"base": {("clean", 0): 0.5, ("fog", 2): 0.4}, "all": {("clean", 0): 0.5}},
                  {"base": "baseline", "all": "ibe"},
                  logits={"base": {("clean", 0): (cnt, sm, sq), ("fog", 2): (cnt, sm, sq)},
                          "all": {("clean", 0): full[:3]}})
    a = analyse(tmp_path, "--bootstrap", "0")
    z = np.load(tmp_path / "analysis_arrays.npz")
    want = eigh_explained(zeroed)
    np.testing.assert_allclose(z["base/clean/explained_variance_notebook"], want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(z["base/fog/2/explained_variance_notebook"], want, rtol=1e-9, atol=1e-12)
    ev = a["per_model"]["base"]["explained_variance_clean"]
    np.testing.assert_allclose(ev["cumulative_notebook"], want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ev["cumulative"], eigh_explained(mu[count > 0]), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a["per_model"]["base"]["per_condition"]["fog/2"]["explained_variance_notebook"],
                               want, rtol=1e-9, atol=1e-12)
    assert np.abs(np.array(ev["cumulative_notebook"]) - ev["cumulative"]).max() > 1e-3
    # Every class predicted: the two definitions are one.
    np.testing.assert_allclose(z["all/clean/explained_variance_notebook"], z["all/clean/explained_variance"],
                               rtol=1e-12)
    tables = open(tmp_path / "tables.md").read()
    assert "| base | notebook (all 21, NaN as 0) | " + f"{want[0]:.3f} | {want[1]:.3f} |" in tables
    assert "| base | predicted classes | " + f"{ev['cumulative'][0]:.3f} |" in tables


def test_both_headline_means_by_hand(tmp_path):
    write_results(tmp_path, {"ibe": IBE, "base": BASE}, {"ibe": "ibe", "base": "baseline"})
    a = analyse(tmp_path, "--bootstrap", "0")
    tables = open(tmp_path / "tables.md").read()
    for m, table in (("ibe", IBE), ("base", BASE)):
        rows = [[table["clean", 0]] + [table[c, s] for s in range(1, 6)] for c in ("gaussian_noise", "fog")]
        want = np.mean([np.mean(r) for r in rows])              # per corruption over levels 0-5, then over them
        mpc = np.mean([r[1:] for r in rows])
        got = a["per_model"][m]["mean_sev0_5"]
        assert got["value"] == pytest.approx(want)
        assert (got["n_conditions"], got["of"], got["clean"], got["complete"]) == (10, 75, True, False)
        name = m + (" (ref)" if m == "base" else "")
        assert f"| {name} | {100 * table['clean', 0]:.1f} | {100 * mpc:.1f}* | {100 * want:.1f}* |" in tables
    assert "mean sev. 0-5" in tables and "severity 0 being the clean mIoU" in tables
    # No clean row: the notebook's table rows start with it, so no mean over 0-5.
    write_results(tmp_path / "noclean", {"ibe": {k: v for k, v in IBE.items() if k[0] != "clean"}}, {"ibe": "ibe"})
    got = analyse(tmp_path / "noclean", "--bootstrap", "0")["per_model"]["ibe"]["mean_sev0_5"]
    assert got["value"] is None and got["clean"] is False and got["complete"] is False


def test_both_distances_reported(tmp_path):
    dist = {"ibe": {cs: (1.0 if cs[0] == "clean" else 0.5 if cs[0] == "fog" else 0.25) for cs in IBE}}
    pred = {"ibe": {cs: 2 * v for cs, v in dist["ibe"].items()}}
    write_results(tmp_path, {"ibe": IBE, "base": BASE}, {"ibe": "ibe", "base": "baseline"}, distance=dist,
                  distance_predicted=pred)
    a = analyse(tmp_path, "--bootstrap", "0")
    d, p = a["per_model"]["ibe"]["distance"], a["per_model"]["ibe"]["distance_predicted"]
    assert d["clean"] == 1.0 and p["clean"] == 2.0
    assert d["corrupted"]["value"] == pytest.approx(0.375) and p["corrupted"]["value"] == pytest.approx(0.75)
    assert p["corrupted"]["n_conditions"] == 10 and p["corrupted"]["complete"] is False
    assert a["per_model"]["ibe"]["per_condition"]["fog/1"]["distance_predicted"] == 1.0
    tables = open(tmp_path / "tables.md").read()
    header = tables.splitlines()[[line.startswith("| model | clean mIoU") for line in tables.splitlines()].index(True)]
    cols = [c.strip() for c in header.strip("|").split("|")]
    row = next(line for line in tables.splitlines() if line.startswith("| ibe |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    got = dict(zip(cols, cells))
    assert (got["Distance clean"], got["Distance corr."]) == ("1.000", "0.375*")
    assert (got["Distance (pred.) clean"], got["Distance (pred.) corr."]) == ("2.000", "0.750*")
    # Null in the rows (no foreground class predicted): null, not an error.
    write_results(tmp_path / "null", {"ibe": IBE}, {"ibe": "ibe"}, distance=dist)
    null = analyse(tmp_path / "null", "--bootstrap", "0")["per_model"]["ibe"]
    assert null["distance_predicted"]["clean"] is None and null["distance_predicted"]["corrupted"]["value"] is None
    assert null["distance"]["clean"] == 1.0


def test_distance_rows_checked_against_logits(tmp_path):
    count, sm, sq = hand_state(np.random.default_rng(2), absent=(4, 9, 15))
    mu = np.where((count > 0)[:, None], sm / np.maximum(count, 1)[:, None], 0.0)
    fg = [n for n in range(1, K) if count[n] > 0]
    notebook = sum(mu[n, n] - mu[n, 0] for n in fg) / 20
    predicted = sum(mu[n, n] - mu[n, 0] for n in fg) / len(fg)
    conds = {("clean", 0): 0.5}
    logits = {"base": {("clean", 0): (count, sm, sq)}}
    write_results(tmp_path / "ok", {"base": conds}, {"base": "baseline"}, logits=logits,
                  distance={"base": {("clean", 0): notebook}}, distance_predicted={"base": {("clean", 0): predicted}})
    assert not [n for n in analyse(tmp_path / "ok", "--bootstrap", "0")["notes"] if "distance" in n]
    # A row whose distance is not the one its logits give (here: the predicted-classes mean under that name).
    write_results(tmp_path / "old", {"base": conds}, {"base": "baseline"}, logits=logits,
                  distance={"base": {("clean", 0): predicted}})
    notes = [n for n in analyse(tmp_path / "old", "--bootstrap", "0")["notes"] if "distance" in n]
    assert len(notes) == 1 and "base: distance in metrics.jsonl differs" in notes[0] and "clean/0" in notes[0]


# ------------------------------------------------------------------------------ the shortside PCA pass

def pca_folders(root, pass_sha=None, pass_protocol="shortside"):
    """A main sweep (clean + fog/1, two models) and a clean shortside pass in root/shortside with other
    class means. Returns the class means of both passes."""
    rng = np.random.default_rng(9)
    count = rng.integers(1, 500, size=K).astype(float)
    count[6] = 0
    main = {m: class_means_state(rng, count) for m in ("base", "scribe")}
    short = {m: class_means_state(rng, count + 7 * (count > 0)) for m in ("base", "scribe")}
    kinds = {"base": "baseline", "scribe": "scribe"}
    sha = {"base": "a" * 64, "scribe": "b" * 64}
    write_results(root, {m: {("clean", 0): 0.6, ("fog", 1): 0.5} for m in kinds}, kinds,
                  logits={m: {("clean", 0): main[m][:3], ("fog", 1): main[m][:3]} for m in kinds},
                  run_models=list(kinds.items()), sha256=sha)
    write_results(root / "shortside", {m: {("clean", 0): 0.62} for m in kinds}, kinds,
                  logits={m: {("clean", 0): short[m][:3]} for m in kinds}, run_models=list(kinds.items()),
                  sha256={**sha, **(pass_sha or {})}, protocol=pass_protocol)
    return main, short


def test_pca_from_the_shortside_pass_when_present(tmp_path):
    main, short = pca_folders(tmp_path)
    keep = main["base"][0] > 0
    a = analyse(tmp_path, "--bootstrap", "0")
    src = f"shortside pass at {tmp_path / 'shortside'}"
    assert a["explained_variance_source"] == src and a["pca_pass"] == str(tmp_path / "shortside")
    z = np.load(tmp_path / "analysis_arrays.npz")
    assert str(z["explained_variance_source"]) == src
    for m in ("base", "scribe"):
        mu = short[m][3]
        want = eigh_explained(mu[keep])
        ev = a["per_model"][m]["explained_variance_clean"]
        np.testing.assert_allclose(ev["cumulative"], want, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ev["cumulative_notebook"], eigh_explained(np.where(keep[:, None], mu, 0)),
                                   rtol=1e-9, atol=1e-12)
        assert ev["source"] == src and ev["classes_used"] == K - 1
        np.testing.assert_allclose(z[f"{m}/clean/explained_variance"], want, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(z[f"{m}/clean/explained_variance_count"], short[m][0])
        # The main sweep's own clean condition is still there, per condition, and differs.
        main_ev = eigh_explained(main[m][3][keep])
        np.testing.assert_allclose(a["per_model"][m]["per_condition"]["clean/0"]["explained_variance"], main_ev,
                                   rtol=1e-9, atol=1e-12)
        assert np.abs(main_ev - want).max() > 1e-3
        # The other clean matrices come from the same pass, as the notebook's cells 44-45 (its run_one).
        assert a["per_model"][m]["clean_structure_source"] == src
        np.testing.assert_array_equal(z[f"{m}/clean/count"], short[m][0])
        np.testing.assert_allclose(z[f"{m}/clean/mean"][keep], mu[keep], rtol=1e-12)
        d = np.sqrt(((mu[keep][:, None, :] - mu[keep][None, :, :]) ** 2).sum(-1))
        np.testing.assert_allclose(z[f"{m}/clean/distance"][np.ix_(keep, keep)], d, rtol=1e-9, atol=1e-9)
    assert f"From the {src}." in open(tmp_path / "tables.md").read()

    # --pca-pass none: the main sweep's clean condition.
    b = analyse(tmp_path, "--bootstrap", "0", "--pca-pass", "none", "--out", str(tmp_path / "nopass"))
    assert b["explained_variance_source"] == "clean condition of the main sweep" and b["pca_pass"] is None
    np.testing.assert_allclose(b["per_model"]["base"]["explained_variance_clean"]["cumulative"],
                               eigh_explained(main["base"][3][keep]), rtol=1e-9, atol=1e-12)
    assert "From the clean condition of the main sweep." in open(tmp_path / "nopass" / "tables.md").read()
    assert b["per_model"]["base"]["clean_structure_source"] == "clean condition of the main sweep"
    np.testing.assert_array_equal(np.load(tmp_path / "nopass" / "analysis_arrays.npz")["base/clean/count"],
                                  main["base"][0])
    # An explicit folder elsewhere.
    os.rename(tmp_path / "shortside", tmp_path / "elsewhere")
    c = analyse(tmp_path, "--bootstrap", "0", "--pca-pass", str(tmp_path / "elsewhere"), "--out",
                str(tmp_path / "explicit"))
    assert c["explained_variance_source"] == f"shortside pass at {tmp_path / 'elsewhere'}"
    np.testing.assert_allclose(c["per_model"]["scribe"]["explained_variance_clean"]["cumulative"],
                               eigh_explained(short["scribe"][3][keep]), rtol=1e-9, atol=1e-12)
    # Without the folder, the default falls back to the main sweep.
    d = analyse(tmp_path, "--bootstrap", "0", "--out", str(tmp_path / "default"))
    assert d["explained_variance_source"] == "clean condition of the main sweep"


def test_pca_pass_of_other_checkpoints_is_refused(tmp_path, capsys):
    pca_folders(tmp_path, pass_sha={"scribe": "c" * 64})
    with pytest.raises(UsageError, match="scribe another checkpoint_sha256"):
        analyse(tmp_path, "--bootstrap", "0")
    line = refused(capsys, al, "--results", tmp_path, "--bootstrap", "0")
    assert line.startswith("error: --pca-pass") and "checkpoint_sha256" in line
    assert not os.path.exists(tmp_path / "analysis.json")


def test_pca_pass_gaps_and_damage(tmp_path):
    pca_folders(tmp_path, pass_protocol="paper")
    os.remove(tmp_path / "shortside" / "logits" / "scribe" / "clean_0.npz")
    a = analyse(tmp_path, "--bootstrap", "0")
    assert a["per_model"]["scribe"]["explained_variance_clean"] is None          # not the main sweep's instead
    assert a["per_model"]["base"]["explained_variance_clean"] is not None
    assert any(x["what"] == "pca_logits" and x["models"] == ["scribe"] for x in a["missing"])
    assert any("ran protocol paper, not shortside" in n for n in a["notes"])
    z = np.load(tmp_path / "analysis_arrays.npz")
    assert "scribe/clean/explained_variance" not in z.files and "scribe/clean/correlation" in z.files
    # A torn file there is refused like one of the main sweep's.
    with open(tmp_path / "shortside" / "logits" / "base" / "clean_0.npz", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(UsageError, match="shortside/logits/base/clean_0.npz: unreadable"):
        analyse(tmp_path, "--bootstrap", "0")
    os.remove(tmp_path / "shortside" / "run.json")
    with pytest.raises(UsageError, match="cannot be checked"):
        analyse(tmp_path, "--bootstrap", "0")
    with pytest.raises(UsageError, match="no logits/ folder"):
        analyse(tmp_path, "--bootstrap", "0", "--pca-pass", str(tmp_path / "logits" / "base"))


# ------------------------------------------------------------ the bootstrap against a hand-written loop

def hand_bootstrap(files, models, reference, conds, aggregate, n_resamples, seed):
    """The paired bootstrap written out: resample b draws row b of
    ``np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))`` (image positions in the order of
    the first file, models[0] clean; docs/protocol.md: images with replacement, n of them), the same draw for
    every model and condition; each model's mIoU of each condition from the drawn images' summed TP/FP/FN,
    looked up by image id; intervals at the 2.5th and 97.5th percentiles of the differences to the reference.
    files {model: {(c, s): (ids, tp, fp, fn)}}; returns {model: {"clean": (lo, hi), "aggregate": (lo, hi)}}."""
    order = list(files[models[0]][("clean", 0)][0])
    n = len(order)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    by_id = {m: {cs: {i: k for k, i in enumerate(files[m][cs][0])} for cs in conds} for m in models}
    diffs = {m: {"clean": [], "aggregate": []} for m in models if m != reference}
    for b in range(n_resamples):
        picked = [order[k] for k in draws[b]]
        score = {}
        for m in models:
            for cs in conds:
                ids, tp, fp, fn = files[m][cs]
                rows = [by_id[m][cs][i] for i in picked]
                score[m, cs] = miou_oracle(tp[rows], fp[rows], fn[rows])
        for m in diffs:
            diffs[m]["clean"].append(score[m, ("clean", 0)] - score[reference, ("clean", 0)])
            diffs[m]["aggregate"].append(np.mean([score[m, cs] - score[reference, cs] for cs in aggregate]))
    return {m: {k: tuple(np.percentile(v, [2.5, 97.5])) for k, v in d.items()} for m, d in diffs.items()}


def bootstrap_folder(root, permute=False, twin=True):
    """Three models (base, ibe, scribe) and a copy of base (twin) on 12 images, clean + three benchmark
    conditions + one held-out condition whose files must not enter the aggregate. With ``permute``, every
    file but base's clean one lists its images in its own random order (image ids keep the rows paired)."""
    rng = np.random.default_rng(21)
    ids = [f"2008_{i:06d}" for i in range(12)]
    conds = [("clean", 0), ("gaussian_noise", 1), ("fog", 3), ("jpeg_compression", 5), ("speckle_noise", 2)]
    files, mious = {}, {}
    for m, skill in (("base", 1), ("ibe", 2), ("scribe", 3)):
        files[m], mious[m] = {}, {}
        for cs in conds:
            tp, fp, fn = random_counts(rng, len(ids), skill)
            files[m][cs] = (ids, tp, fp, fn)
            mious[m][cs] = miou_oracle(tp, fp, fn)
    if twin:
        files["twin"], mious["twin"] = dict(files["base"]), dict(mious["base"])
    if permute:
        prng = np.random.default_rng(5)
        for m in files:
            for cs in conds:
                if (m, cs) == ("base", ("clean", 0)):
                    continue
                p = prng.permutation(len(ids))
                got_ids, tp, fp, fn = files[m][cs]
                files[m][cs] = ([got_ids[k] for k in p], tp[p], fp[p], fn[p])
    kinds = {"base": "baseline", "ibe": "ibe", "scribe": "scribe", "twin": "baseline"}
    names = list(files)
    write_results(root, mious, kinds, confusion=files, run_models=[(m, kinds[m]) for m in names])
    return files, names, conds


def test_bootstrap_intervals_equal_a_hand_written_paired_loop(tmp_path):
    files, names, conds = bootstrap_folder(tmp_path / "a")
    a = analyse(tmp_path / "a", "--bootstrap", "300", "--seed", "11")
    bench = conds[1:4]                       # speckle_noise is held out: never in the aggregate
    want = hand_bootstrap(files, names, "base", conds[:4], bench, 300, 11)
    comps = a["bootstrap"]["comparisons"]
    assert set(comps) == {"ibe", "scribe", "twin"} and a["bootstrap"]["confidence"] == 0.95
    for m in ("ibe", "scribe"):
        for k in ("clean", "aggregate"):
            assert (comps[m][k]["lower"], comps[m][k]["upper"]) == pytest.approx(want[m][k], rel=1e-9, abs=1e-12)
            assert comps[m][k]["lower"] < comps[m][k]["upper"]
        assert comps[m]["aggregate"]["n_conditions"] == 3
    # Two identical models: every resample gives a difference of exactly 0.
    for k in ("clean", "aggregate"):
        assert (comps["twin"][k]["observed"], comps["twin"][k]["lower"], comps["twin"][k]["upper"]) == (0, 0, 0)

    # Every file but the first in its own image order: the pairing goes by image id, so the same intervals.
    bootstrap_folder(tmp_path / "p", permute=True)
    b = analyse(tmp_path / "p", "--bootstrap", "300", "--seed", "11")
    assert b["bootstrap"]["comparisons"] == comps


def test_held_out_corruptions_enter_no_aggregate(tmp_path):
    # IBE/BASE plus all four held-out extras at every severity with values far from the benchmark's (mIoU 0,
    # END 0.9, Distances 50): any of them in an aggregate moves it. Expected values: benchmark rows only.
    held = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    mious, end, dist, pred = {}, {}, {}, {}
    for m, table in (("ibe", IBE), ("base", BASE)):
        mious[m] = {**table, **{(c, s): 0.0 for c in held for s in range(1, 6)}}
        end[m] = {cs: (0.9 if cs[0] in held else 0.1 + 0.01 * cs[1]) for cs in mious[m]}
        dist[m] = {cs: (50.0 if cs[0] in held else 1.0 + cs[1]) for cs in mious[m]}
        pred[m] = {cs: 2 * v for cs, v in dist[m].items()}
    write_results(tmp_path, mious, {"ibe": "ibe", "base": "baseline"}, end=end, distance=dist,
                  distance_predicted=pred)
    a = analyse(tmp_path, "--bootstrap", "0")
    for m, table in (("ibe", IBE), ("base", BASE)):
        p = a["per_model"][m]
        bench = [cs for cs in table if cs[0] != "clean"]
        assert p["mpc"]["value"] == pytest.approx(np.mean([table[cs] for cs in bench]))
        assert p["mpc"]["n_conditions"] == 10
        assert p["rpc"]["value"] == pytest.approx(np.mean([table[cs] for cs in bench]) / table["clean", 0])
        for s in range(1, 6):
            assert p["per_severity"][str(s)]["miou"] == pytest.approx(
                np.mean([table["gaussian_noise", s], table["fog", s]]))
            assert p["per_severity"][str(s)]["n_corruptions"] == 2
        sev0_5 = np.mean([np.mean([table["clean", 0]] + [table[c, s] for s in range(1, 6)])
                          for c in ("gaussian_noise", "fog")])
        assert p["mean_sev0_5"]["value"] == pytest.approx(sev0_5) and p["mean_sev0_5"]["n_conditions"] == 10
        for key, values in (("end", end), ("distance", dist), ("distance_predicted", pred)):
            corr = p[key]["corrupted"]
            assert corr["value"] == pytest.approx(np.mean([values[m][cs] for cs in bench]))
            assert corr["n_conditions"] == 10
        assert set(p["cd"]) == {"gaussian_noise", "fog"} and p["mcd"]["n_corruptions"] == 2
        # They are still reported on their own, marked as not the benchmark's.
        for c in held:
            assert p["per_corruption"][c] == {"miou": 0.0, "severities": [1, 2, 3, 4, 5], "complete": True,
                                              "benchmark": False}
            assert p["per_condition"][f"{c}/3"]["miou"] == 0.0
    assert a["per_model"]["ibe"]["mcd"]["value"] == pytest.approx((0.912 + 1.6 / 1.75) / 2)


# ------------------------------------------------------------------------------ any number of classes

CITYSCAPES = dataset_record(dataset_spec("cityscapes"))
# Six classes, the first a background (as a --data folder dataset with one might record them).
SIX = {"name": "six", "classes": ["background", "ant", "bee", "cat", "dog", "eel"],
       "palette": [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]],
       "has_background": True, "ignore_index": 255}
SIX_NO_BACKGROUND = {**SIX, "name": "six_nb", "classes": ["road", "ant", "bee", "cat", "dog", "eel"],
                     "has_background": False}


def k_class_folder(root, dataset, kinds, conds, seed=0, n_images=4, pixels=300, **extra):
    """A consistent results folder over the classes of ``dataset`` (a dataset_record) from labels and predictions
    drawn here: per model and condition, n_images random label vectors, predictions right 60% of the time; the
    last class never occurs (its IoU undefined). tp/fp/fn per image, the per-class IoU and the mIoU of each row
    are counted in numpy from them; each model gets a logit state (count, sum, sq) of random class means.
    Returns (truth {(model, c, s): {"iou": [k], "miou"}}, {model: class means (k, k)})."""
    k = len(dataset["classes"])
    rng = np.random.default_rng(seed)
    ids = [f"img{i:02d}" for i in range(n_images)]
    truth, mious, ious, confusion, logits, means = {}, {m: {} for m in kinds}, {m: {} for m in kinds}, {}, {}, {}
    for m in kinds:
        count = rng.integers(1, 500, k).astype(float)
        state = class_means_state(rng, count, k)
        logits[m], means[m] = {cs: state[:3] for cs in conds}, state[3]
        confusion[m] = {}
        for cs in conds:
            label = rng.integers(0, k - 1, (n_images, pixels))
            pred = np.where(rng.random((n_images, pixels)) < 0.6, label, rng.integers(0, k - 1, (n_images, pixels)))
            tp, fp, fn = (np.array([[((a(lab, c)) & (b(prd, c))).sum() for c in range(k)]
                                    for lab, prd in zip(label, pred)], np.int64)
                          for a, b in ((np.equal, np.equal), (np.not_equal, np.equal), (np.equal, np.not_equal)))
            t, u = tp.sum(0), (tp + fp + fn).sum(0)
            iou = [float(t[c] / u[c]) if u[c] else None for c in range(k)]
            truth[m, *cs] = {"iou": iou, "miou": float(np.mean([v for v in iou if v is not None]))}
            mious[m][cs], ious[m][cs], confusion[m][cs] = truth[m, *cs]["miou"], iou, (ids, tp, fp, fn)
    write_results(root, mious, kinds, confusion=confusion, logits=logits, iou=ious, dataset=dataset, **extra)
    return truth, means


K_CONDS = [("clean", 0), ("fog", 1), ("fog", 3), ("gaussian_noise", 2), ("snow", 5)]


def test_cityscapes_results_use_its_19_classes(tmp_path, capsys):
    kinds = {"base": "baseline", "other": "baseline"}
    names = CITYSCAPES["classes"]
    assert len(names) == 19
    truth, means = k_class_folder(tmp_path, CITYSCAPES, kinds, K_CONDS)
    a = analyse(tmp_path, "--bootstrap", "30")
    assert a["dataset"]["classes"] == names and a["dataset"]["has_background"] is False
    bench = [cs for cs in K_CONDS if cs[0] != "clean"]
    for m in kinds:
        entry = a["per_model"][m]
        assert entry["clean_miou"] == pytest.approx(truth[m, "clean", 0]["miou"])
        assert entry["mpc"]["value"] == pytest.approx(np.mean([truth[m, *cs]["miou"] for cs in bench]))
        assert entry["mpc"]["n_conditions"] == len(bench)
        per_class = entry["per_class_iou"]
        assert len(per_class["clean"]) == 19 and per_class["clean"][18] is None
        np.testing.assert_allclose(per_class["clean"][:18], truth[m, "clean", 0]["iou"][:18], rtol=1e-12)
        want = np.array([[truth[m, *cs]["iou"][c] for c in range(18)] for cs in bench]).mean(0)
        np.testing.assert_allclose(per_class["corrupted"][:18], want, rtol=1e-12)
        assert per_class["n_conditions"] == 4 and not per_class["complete"]
        # END and both Distances need a background class: null (as evaluate_corruptions.py writes them there).
        assert all(entry[key]["clean"] is None and entry[key]["corrupted"]["value"] is None
                   for key in ("end", "distance", "distance_predicted"))
    diff = truth["other", "clean", 0]["miou"] - truth["base", "clean", 0]["miou"]
    assert a["bootstrap"]["comparisons"]["other"]["clean"]["observed"] == pytest.approx(diff)
    note = "END and both Distances: undefined: cityscapes has no background class (class 0 is 'road')"
    assert note in a["notes"] and f"note: {note}" in capsys.readouterr().out
    tables = open(tmp_path / "tables.md").read()
    assert "## IoU (%) per class (cityscapes, 19 classes)" in tables
    for i, name in enumerate(names):
        row = f"| {i} {name} | {100 * truth['base', 'clean', 0]['iou'][i]:.1f} |" if i < 18 else f"| 18 {name} | – |"
        assert row in tables, row
    assert not any(line.startswith("| 19 ") for line in tables.splitlines())
    assert "END, Distance and Distance (pred.): undefined: cityscapes has no background class" in tables
    assert "softmax over the 19 output channels as the models build them. ECE" in tables   # no IBE/SCrIBE note
    assert "notebook (all 19, NaN as 0)" in tables
    assert not any(f"21 {word}" in tables for word in ("output", "classes", "one-vs-rest", "with a")), tables
    z = np.load(tmp_path / "analysis_arrays.npz")
    assert list(z["classes"]) == names
    assert z["base/clean/mean"].shape == (19, 19) and z["base/clean/correlation"].shape == (19, 19, 19)
    np.testing.assert_allclose(z["base/clean/mean"], means["base"], rtol=1e-12)
    np.testing.assert_allclose(z["base/clean/explained_variance"], eigh_explained(means["base"]), rtol=1e-9,
                               atol=1e-12)


def test_six_classes_with_a_background(tmp_path):
    kinds = {"base": "baseline", "ibe": "ibe"}
    truth, _ = k_class_folder(tmp_path, SIX, kinds, K_CONDS[:3], seed=1,
                              end={m: {cs: 0.25 for cs in K_CONDS} for m in kinds},
                              distance={m: {cs: 2.0 for cs in K_CONDS} for m in kinds})
    a = analyse(tmp_path, "--bootstrap", "0")
    for m in kinds:
        assert a["per_model"][m]["mpc"]["value"] == pytest.approx(
            np.mean([truth[m, *cs]["miou"] for cs in K_CONDS[1:3]]))
        assert a["per_model"][m]["end"]["clean"] == 0.25 and a["per_model"][m]["distance"]["clean"] == 2.0
    tables = open(tmp_path / "tables.md").read()
    assert "mean over all 5 foreground classes" in tables and "undefined" not in tables
    assert "(IBE/SCrIBE: background = -logsumexp of the 5 foreground logits)" in tables
    # Explained variance after 1, 2, 3 and 5 components: there are no 10 of six classes.
    assert "| model | definition | 1 comp. | 2 comp. | 3 comp. | 5 comp. | rows |" in tables
    assert [line.split(" | ")[0] for line in tables.splitlines() if line.startswith("| 5 ")] == ["| 5 eel"]


def test_six_classes_without_a_background(tmp_path):
    truth, _ = k_class_folder(tmp_path, SIX_NO_BACKGROUND, {"base": "baseline"}, K_CONDS[:2], seed=2)
    a = analyse(tmp_path, "--bootstrap", "0")
    assert a["per_model"]["base"]["clean_miou"] == pytest.approx(truth["base", "clean", 0]["miou"])
    assert "undefined: six_nb has no background class (class 0 is 'road')" in " ".join(a["notes"])


def test_results_without_their_classes_are_refused(tmp_path, capsys):
    k_class_folder(tmp_path, CITYSCAPES, {"base": "baseline"}, K_CONDS[:2])
    run = json.load(open(tmp_path / "run.json"))
    del run["dataset"]
    json.dump(run, open(tmp_path / "run.json", "w"))
    line = refused(capsys, al, "--results", tmp_path)
    assert "run.json: no dataset record (an earlier evaluate_corruptions.py's format)" in line
    os.remove(tmp_path / "run.json")
    assert "run.json: not found, so the classes of the results are unknown" in refused(capsys, al, "--results",
                                                                                         tmp_path)
    # Rows over another number of classes than run.json records.
    k_class_folder(tmp_path / "b", SIX, {"base": "baseline"}, K_CONDS[:2])
    run = json.load(open(tmp_path / "b" / "run.json"))
    json.dump({**run, "dataset": CITYSCAPES}, open(tmp_path / "b" / "run.json", "w"))
    assert "has 6 per-class IoUs" in refused(capsys, al, "--results", tmp_path / "b")
    assert not os.path.exists(tmp_path / "b" / "analysis.json")


def test_pca_pass_of_another_dataset_is_refused(tmp_path, capsys):
    k_class_folder(tmp_path, CITYSCAPES, {"base": "baseline"}, K_CONDS[:2])
    k_class_folder(tmp_path / "shortside", SIX_NO_BACKGROUND, {"base": "baseline"}, K_CONDS[:1], protocol="shortside")
    line = refused(capsys, al, "--results", tmp_path)
    assert "its run.json records other classes (six_nb)" in line


def test_a_presets_own_aggregate_by_hand():
    from common.analysis.robustness import preset_aggregate
    from common.presets import PRESETS

    rng = np.random.default_rng(0)
    segformer = PRESETS["segformer-cityscapes-c"].record()
    miou = {(c, s): float(rng.uniform(0.2, 0.7)) for c in segformer["corruptions"] for s in segformer["severities"][c]}
    # SegFormer's Table 6: one mIoU per corruption (mean over its 3 or 5 severities), then their mean.
    per_corruption = [np.mean([miou[c, s] for s in segformer["severities"][c]]) for c in segformer["corruptions"]]
    got = preset_aggregate(miou, segformer)
    assert got["value"] == pytest.approx(np.mean(per_corruption), abs=1e-12) and got["complete"]
    assert got["value"] != pytest.approx(np.mean(list(miou.values())), abs=1e-6)   # not the mean over conditions
    del miou["gaussian_noise", 2]
    assert preset_aggregate(miou, segformer)["complete"] is False
    ade = PRESETS["semsegbench-ade20k-c"].record()
    miou = {(c, 3): float(rng.uniform(0, 1)) for c in ade["corruptions"]}
    assert preset_aggregate(miou, ade)["value"] == pytest.approx(np.mean(list(miou.values())), abs=1e-12)
    assert preset_aggregate(miou, None) is None

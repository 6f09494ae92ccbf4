"""analyze_logits.py against hand computations: mPC/rPC/CD/rCD, explained variance (eigh), paired bootstrap,
partial results and bad input. Results folders are written by hand here, so every expected number is
computed in the test, independently of the code under test."""
import json
import os

import numpy as np
import pytest

import analyze_logits as al
from common.corruptions import CORRUPTIONS, corruption_number
from common.errors import UsageError
from helpers import cli

K = 21


# ------------------------------------------------------------------------------------------- helpers

def write_results(root, mious, kinds, end=None, distance=None, confusion=None, logits=None, run_models=None):
    """A results folder as evaluate_corruptions.py lays it out.

    mious {model: {(corruption, severity): mIoU}}; end/distance same shape (optional);
    confusion {model: {(c, s): (ids, tp, fp, fn)}}; logits {model: {(c, s): (count, sum, sq)}}.
    """
    os.makedirs(root, exist_ok=True)
    lines = []
    for m, conds in mious.items():
        for (c, s), v in conds.items():
            lines.append(json.dumps({
                "model": m, "kind": kinds[m], "corruption": c,
                "corruption_number": None if c == "clean" else corruption_number(c), "severity": s,
                "protocol": "paper", "size": 224, "miou": v, "pixel_acc": 0.9, "iou": [None] * K,
                "end": (end or {}).get(m, {}).get((c, s)), "distance": (distance or {}).get(m, {}).get((c, s)),
                "images": 3, "seconds": 0.1, "shard": None}))
    with open(os.path.join(root, "metrics.jsonl"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    if run_models is not None:
        with open(os.path.join(root, "run.json"), "w") as fh:
            json.dump({"models": [{"name": m, "kind": k, "sha256": "0" * 64} for m, k in run_models],
                       "protocol": "paper", "size": 224, "images": 3}, fh)
    for m, conds in (confusion or {}).items():
        for (c, s), (ids, tp, fp, fn) in conds.items():
            os.makedirs(os.path.join(root, "confusion", m), exist_ok=True)
            np.savez(os.path.join(root, "confusion", m, f"{c}_{s}.npz"), confusion=np.zeros((K, K), np.int64),
                     image_ids=np.array(ids), tp=tp, fp=fp, fn=fn)
    for m, conds in (logits or {}).items():
        for (c, s), (count, sm, sq) in conds.items():
            os.makedirs(os.path.join(root, "logits", m), exist_ok=True)
            np.savez(os.path.join(root, "logits", m, f"{c}_{s}.npz"), count=count, sum=sm, sq=sq,
                     end_sum=np.float64(0), pixels=np.int64(count.sum()))


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


def class_means_state(rng, count):
    """LogitTracker state with row n of sum = count_n * mu_n and a valid second moment."""
    mu = rng.normal(size=(K, K)) * 3
    mu[:, :3] *= 4        # a few dominant directions, like real logits
    sm = mu * count[:, None]
    sq = count[:, None, None] * (mu[:, :, None] * mu[:, None, :] + np.eye(K))
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
    agg = a["bootstrap"]["comparisons"]["scribe"]["aggregate"]
    assert agg["complete"] and agg["n_conditions"] == 75
    assert agg["observed"] == pytest.approx(np.mean([mious["scribe"][cs] - mious["base"][cs] for cs in conds[1:]]))
    z = np.load(tmp_path / "analysis_arrays.npz")
    for m in ("base", "scribe"):
        for key in ("count", "mean", "distance", "correlation", "explained_variance"):
            assert f"{m}/clean/{key}" in z.files
        assert all(f"{m}/{c}/{sv}/explained_variance" in z.files for c, sv in conds[1:])
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
    ev, used = al.explained_variance(one)           # a single predicted class: no variance to explain
    assert used == 1 and np.isnan(ev).all()
    two = np.full((K, K), np.nan)
    two[[0, 5]] = np.random.default_rng(0).normal(size=(2, K))
    ev, used = al.explained_variance(two)           # two points: one component explains everything
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
    got = al.resample_miou(tp, union, weights)
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

def test_malformed_line_exits_2_and_keeps_old_outputs(tmp_path):
    write_results(tmp_path, {"ibe": IBE, "base": BASE}, {"ibe": "ibe", "base": "baseline"})
    analyse(tmp_path, "--bootstrap", "0")
    before = {f: open(tmp_path / f, "rb").read() for f in ("analysis.json", "tables.md", "analysis_arrays.npz")}
    lines = open(tmp_path / "metrics.jsonl").read().splitlines()
    lines[1] = lines[1][:40]                                  # a torn line
    open(tmp_path / "metrics.jsonl", "w").write("\n".join(lines) + "\n")
    r = cli("analyze_logits.py", "--results", str(tmp_path), "--bootstrap", "0")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "metrics.jsonl line 2" in err[0] and "Traceback" not in r.stderr
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

"""evaluate_corruptions.py against oracles: saved predictions + numpy, dumps vs on the fly, shards, kills."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import dump_voc_c
import evaluate_corruptions as ev
from common.logits import LogitTracker
from helpers import ROOT, refused

SIZE = 48
CONDS = ["--corruptions", "gaussian", "glass", "jpeg", "--severities", "0", "1", "3"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic, tiny_ckpt):
    d = tmp_path_factory.mktemp("ev")
    return synthetic(n_val=5, max_side=96), [tiny_ckpt("baseline", 1), tiny_ckpt("scribe", 2)], d


def evaluate(setup, out, *extra):
    root, ckpts, _ = setup
    args = ev.get_args_parser().parse_args(["--checkpoints", *ckpts, "--data", "synthetic", "--synthetic-root", root,
                                            "--size", str(SIZE), "--batch-size", "2", "--workers", "0",
                                            "--out", str(out), *CONDS, *extra])
    return ev.main(args)


def rows(out, drop=("seconds", "checkpoint", "shard")):
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in open(os.path.join(out, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def reference(setup):
    out = setup[2] / "reference"
    evaluate(setup, out, "--save-predictions", str(setup[2] / "preds"))
    return out


def test_rows_cover_every_model_and_condition(setup, reference):
    r = rows(reference)
    assert len(r) == 2 * (1 + 3 * 2)
    assert {(x["corruption"], x["severity"]) for x in r} == {("clean", 0)} | {
        (c, s) for c in ("gaussian_noise", "glass_blur", "jpeg_compression") for s in (1, 3)}
    x = next(x for x in r if x["corruption"] == "glass_blur")
    assert x["corruption_number"] == 4 and x["protocol"] == "paper" and x["size"] == SIZE and x["images"] == 5
    assert len(x["iou"]) == 21
    # Each row names its checkpoint's SHA-256 (hashed as it loads): hashlib, by hand.
    want = {os.path.abspath(p): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in setup[1]}
    full = [json.loads(line) for line in open(os.path.join(reference, "metrics.jsonl"))]
    assert {(x["checkpoint"], x["checkpoint_sha256"]) for x in full} == set(want.items())


def test_miou_equals_numpy_oracle_from_saved_predictions(setup, reference):
    root = setup[0]
    from common.data import eval_sample, voc_dataset
    ds = voc_dataset(os.path.join(root, "voc"), "val")
    labels = {eval_sample(ds, i, "paper", SIZE)[0]: eval_sample(ds, i, "paper", SIZE)[2] for i in range(len(ds))}
    for row in rows(reference):
        folder = setup[2] / "preds" / row["model"] / f"{row['corruption']}_{row['severity']}"
        t = np.concatenate([labels[i].ravel() for i in sorted(labels)])
        p = np.concatenate([np.array(Image.open(folder / f"{i}.png")).ravel() for i in sorted(labels)])
        keep = t != 255
        t, p = t[keep].astype(int), p[keep].astype(int)
        ious = []
        for k in range(21):
            inter, union = np.sum((t == k) & (p == k)), np.sum((t == k) | (p == k))
            if union:
                ious.append(inter / union)
        assert row["miou"] == pytest.approx(np.mean(ious), abs=1e-12)
        assert row["pixel_acc"] == pytest.approx(np.mean(t == p), abs=1e-12)


def test_npz_files_agree_with_metrics(reference):
    for row in rows(reference):
        stem = f"{row['corruption']}_{row['severity']}.npz"
        cf = np.load(os.path.join(reference, "confusion", row["model"], stem))
        lg = np.load(os.path.join(reference, "logits", row["model"], stem))
        # Per-image TP/FP/FN add up to the summed confusion matrix.
        assert np.array_equal(cf["tp"].sum(0), np.diag(cf["confusion"]))
        assert np.array_equal(cf["fp"].sum(0), cf["confusion"].sum(0) - np.diag(cf["confusion"]))
        assert np.array_equal(cf["fn"].sum(0), cf["confusion"].sum(1) - np.diag(cf["confusion"]))
        assert len(cf["image_ids"]) == 5
        tr = LogitTracker.from_state_dict(lg)
        assert tr.num_pixels == 5 * SIZE * SIZE == int(lg["pixels"])
        # Both Distances from the saved sums by hand: mu_n = S_n / N_n (0 where N_n = 0), margin mu_n[n] - mu_n[0].
        count, mean = lg["count"], np.zeros((21, 21))
        mean[count > 0] = lg["sum"][count > 0] / count[count > 0, None]
        margin = np.array([mean[n, n] - mean[n, 0] for n in range(1, 21)])
        assert row["distance"] == pytest.approx(margin.sum() / 20, rel=1e-12)
        seen = count[1:] > 0
        if seen.any():
            assert row["distance_predicted"] == pytest.approx(margin[seen].mean(), rel=1e-12)
        else:
            assert row["distance_predicted"] is None
        assert 0 <= row["end"] <= 1


def test_dumped_images_give_identical_metrics(setup, reference, tmp_path):
    args = dump_voc_c.get_args_parser().parse_args(["--data", "synthetic", "--synthetic-root", setup[0], "--out",
                                                    str(tmp_path / "vocc"), "--size", str(SIZE), "--corruptions",
                                                    "gaussian", "glass", "jpeg", "--severities", "1", "3"])
    dump_voc_c.main(args)
    evaluate(setup, tmp_path / "from_dump", "--voc-c", str(tmp_path / "vocc"))
    assert rows(tmp_path / "from_dump") == rows(reference)


def test_shards_merge_to_the_unsharded_result(setup, reference, tmp_path):
    evaluate(setup, tmp_path / "s0", "--shard", "0/2")
    evaluate(setup, tmp_path / "s1", "--shard", "1/2")
    args = ev.get_args_parser().parse_args(["--merge", str(tmp_path / "s0"), str(tmp_path / "s1"),
                                            "--out", str(tmp_path / "merged")])
    ev.main(args)
    a, b = rows(tmp_path / "merged"), rows(reference)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        # Counts add exactly; float64 moment sums are added in another order (last-digit differences).
        for k in x:
            if k in ("distance", "end"):
                assert x[k] == pytest.approx(y[k], rel=1e-12, abs=1e-12)
            elif k == "calibration":   # the class-wise sums are float32 within a batch (docs/calibration.md)
                for reading, values in x[k].items():
                    for key, v in values.items():
                        want = y[k][reading][key]
                        assert v == want or v == pytest.approx(want, rel=1e-5 if key == "ece_classwise" else 1e-12), \
                            (reading, key)
            else:
                assert x[k] == y[k], k
    for m in ("baseline", "scribe"):
        c1 = np.load(tmp_path / "merged" / "confusion" / m / "glass_blur_3.npz")
        c2 = np.load(os.path.join(reference, "confusion", m, "glass_blur_3.npz"))
        for k in ("confusion", "image_ids", "tp", "fp", "fn"):
            assert np.array_equal(c1[k], c2[k])


@pytest.mark.slow
def test_sigkill_at_several_points_then_rerun_gives_the_same_metrics(setup, reference, tmp_path):
    root, ckpts, _ = setup
    out = tmp_path / "killed"
    cmd = [sys.executable, "evaluate_corruptions.py", "--checkpoints", *ckpts, "--data", "synthetic",
           "--synthetic-root", root, "--size", str(SIZE), "--batch-size", "2", "--workers", "0", "--out", str(out), *CONDS]
    metrics = out / "metrics.jsonl"
    for after in (1, 3, 5):  # kill once that many conditions are written
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:
            if metrics.exists() and len(open(metrics).readlines()) >= 2 * after:
                break
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
    # A torn last line, as a crash in some other writer would leave, is dropped and recomputed.
    with open(metrics, "a") as fh:
        fh.write('{"model": "baseline", "corrupt')
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    # Every field equal, END to 1e-4: on random weights the logits are near-uniform, and END's (1/s - 1/20) cancels,
    # so the forward's float32 last bits (these runs are other processes than the reference) move it by ~1e-5.
    got, want = rows(out), rows(reference)
    assert [{k: v for k, v in x.items() if k != "end"} for x in got] == [
        {k: v for k, v in y.items() if k != "end"} for y in want]
    assert [x["end"] for x in got] == pytest.approx([y["end"] for y in want], rel=1e-4)
    assert not [f for d, _, fs in os.walk(out) for f in fs if ".tmp-" in f]


# A corruption name, a severity, --shard, --batch-size and a foreign checkpoint: in test_error_lines.py.
@pytest.mark.parametrize("flags,needle", [
    (["--corruptions", "99"], "99"),
])
def test_bad_flags_are_one_line_exit_2(setup, tmp_path, flags, needle, capsys):
    root, ckpts, _ = setup
    assert needle in refused(capsys, ev, "--checkpoints", *ckpts, "--data", "synthetic", "--synthetic-root", root,
                             "--out", tmp_path / "o", *flags)
    assert not os.path.exists(tmp_path / "o" / "metrics.jsonl")


def test_condition_stats_prediction_and_end_against_numpy():
    import torch
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 21, 7, 9, generator=g) * 4
    logits[0, 3, 0, 0] = logits[0, 7, 0, 0] = 50.0  # a tie: the first maximum wins, as np.argmax
    logits[1, 0, 1, 1] = logits[1, 2, 1, 1] = 60.0
    logits[2, 0, 0, 0], logits[2, 5, 0, 1] = 300.0, 300.0   # exp(+-300) overflows float32: no NaN allowed
    labels = torch.randint(0, 21, (3, 7, 9), generator=g)
    labels[:, 2] = 255                                 # ignored pixels count in no confusion cell
    st = ev.ConditionStats(5)
    pred = st.update(logits, labels, np.array([4, 0, 2]))
    z = logits.double().numpy()
    assert np.array_equal(pred.numpy(), z.argmax(1))
    e = np.exp(z - z.max(1, keepdims=True))
    bg = e[:, 0] / e.sum(1)
    f = np.exp(z[:, 1:] - z[:, 1:].max(1, keepdims=True))
    ident = ((f / f.sum(1, keepdims=True)).max(1) - 1 / 20) / (1 - 1 / 20)
    assert np.isfinite(st.end_sum) and st.end_sum / st.pixels == pytest.approx(np.mean(bg * ident), rel=1e-6)
    assert st.pixels == 3 * 7 * 9
    # Per-image confusion (rows: label, columns: prediction) at each image's slot, by hand.
    lab, p = labels.numpy(), z.argmax(1)
    for j, slot in enumerate([4, 0, 2]):
        want = np.zeros((21, 21), np.int64)
        for t, q in zip(lab[j].ravel(), p[j].ravel()):
            if t != 255:
                want[t, q] += 1
        assert np.array_equal(st.per_image[slot], want)
    assert not st.per_image[[1, 3]].any() and np.array_equal(st.confusion, st.per_image.sum(0))


def test_shortside_clean_pass_sees_pillow_resized_images_at_their_own_aspect(setup, tmp_path):
    # The notebook's FixScaleResize pass, recomputed by hand: Pillow resize to short side SIZE (long side
    # int(long * SIZE / short)), normalisation by formula, the model called directly, numpy argmax.
    import torch
    from common.checkpoint import load_model
    from common.constants import IMAGENET_MEAN, IMAGENET_STD
    root, ckpts, _ = setup
    out, preds = tmp_path / "short", tmp_path / "preds"
    args = ev.get_args_parser().parse_args(["--checkpoints", *ckpts, "--data", "synthetic", "--synthetic-root", root,
                                            "--protocol", "shortside", "--size", str(SIZE), "--severities", "0",
                                            "--workers", "0", "--out", str(out), "--save-predictions", str(preds)])
    assert ev.main(args) == 0
    r = rows(out)
    assert len(r) == 2 and {(x["protocol"], x["size"], x["corruption"]) for x in r} == {("shortside", SIZE, "clean")}
    model, _ = load_model(ckpts[0])
    images = sorted(os.listdir(os.path.join(root, "voc", "VOCdevkit", "VOC2012", "JPEGImages")))
    val = open(os.path.join(root, "voc", "VOCdevkit", "VOC2012", "ImageSets", "Segmentation", "val.txt")).read().split()
    shapes = set()
    for image_id in val:
        img = Image.open(os.path.join(root, "voc", "VOCdevkit", "VOC2012", "JPEGImages", f"{image_id}.jpg")).convert("RGB")
        w, h = img.size
        size = (int(w * SIZE / h), SIZE) if w > h else (SIZE, int(h * SIZE / w))
        x = (np.asarray(img.resize(size, Image.BILINEAR)) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        with torch.no_grad():
            logits = model(torch.from_numpy(x.transpose(2, 0, 1)[None]).float()).numpy()[0]
        got = np.array(Image.open(preds / r[0]["model"] / "clean_0" / f"{image_id}.png"))
        assert got.shape == (size[1], size[0])
        assert (got == logits.argmax(0)).mean() > 0.999   # float32 rounding may flip a near-tie
        shapes.add(got.shape)
    assert len(images) >= len(val) and len(shapes) > 1   # the images kept their different aspects


# ------------------------------------------------------------------ one sweep condition, by hand end to end

def val_ids(root):
    return open(os.path.join(root, "voc", "VOCdevkit", "VOC2012", "ImageSets", "Segmentation", "val.txt")).read().split()


def hand_inputs(root, corruption, severity, size=SIZE):
    """What the paper protocol feeds the models, written out from docs/protocol.md: Pillow BILINEAR image and
    NEAREST label (size x size, or the original size with size None), the image corrupted by
    ``imagecorruptions.corrupt`` after ``np.random.seed(crc32("<id>|<corruption>|<severity>"))`` (the seed
    also as keyword for impulse_noise and glass_blur), then (x / 255 - mean) / std."""
    import zlib

    from imagecorruptions import corrupt

    from common.constants import IMAGENET_MEAN, IMAGENET_STD
    base = os.path.join(root, "voc", "VOCdevkit", "VOC2012")
    xs, labels = [], []
    for image_id in val_ids(root):
        img = Image.open(os.path.join(base, "JPEGImages", f"{image_id}.jpg")).convert("RGB")
        lbl = Image.open(os.path.join(base, "SegmentationClass", f"{image_id}.png"))
        if size is not None:
            img, lbl = img.resize((size, size), Image.BILINEAR), lbl.resize((size, size), Image.NEAREST)
        rgb, label = np.array(img), np.array(lbl)
        if severity > 0:
            seed = zlib.crc32(f"{image_id}|{corruption}|{severity}".encode())
            kw = {"seed": seed} if corruption in ("impulse_noise", "glass_blur") else {}
            np.random.seed(seed)
            rgb = np.uint8(corrupt(rgb, corruption_name=corruption, severity=severity, **kw))
        x = (rgb / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        xs.append(x.transpose(2, 0, 1).astype(np.float32))
        labels.append(label.astype(np.int64))
    return xs, labels


def hand_condition(model, xs, labels):
    """Everything the sweep writes for one model and condition, by numpy from ``model(x)`` called directly:
    per-image confusion (rows target, columns prediction, label 255 left out), the tracker's sums over every
    pixel grouped by argmax, END by its formula. Also the number of near-tie pixels, where float32 rounding
    of another but equivalent normalisation may flip the argmax."""
    import torch
    k = 21
    per, count, sm, sq = [], np.zeros(k), np.zeros((k, k)), np.zeros((k, k, k))
    end_terms, ties = [], 0
    for x, label in zip(xs, labels):
        with torch.no_grad():
            z = model(torch.from_numpy(x)[None]).double().numpy()[0].reshape(k, -1).T     # pixels x 21
        pred = z.argmax(1)
        top2 = np.sort(z, 1)[:, -2:]
        ties += int((top2[:, 1] - top2[:, 0] < 1e-4).sum())
        conf = np.zeros((k, k), np.int64)
        t = label.ravel()
        np.add.at(conf, (t[t != 255], pred[t != 255]), 1)      # row: target, column: prediction
        per.append(conf)
        for n in range(k):
            rows = z[pred == n]
            count[n] += len(rows)
            sm[n] += rows.sum(0)
            sq[n] += rows.T @ rows
        e = np.exp(z - z.max(1, keepdims=True))
        bg = e[:, 0] / e.sum(1)
        f = np.exp(z[:, 1:] - z[:, 1:].max(1, keepdims=True))
        ident = ((f / f.sum(1, keepdims=True)).max(1) - 1 / 20) / (1 - 1 / 20)
        end_terms.append(bg * ident)
    per = np.stack(per)
    mu = np.zeros((k, k))
    mu[count > 0] = sm[count > 0] / count[count > 0, None]
    margin = np.array([mu[n, n] - mu[n, 0] for n in range(1, k)])
    conf = per.sum(0)
    ious = [conf[c, c] / (conf[c].sum() + conf[:, c].sum() - conf[c, c]) if conf[c].sum() + conf[:, c].sum() else None
            for c in range(k)]
    return {"per_image": per, "confusion": conf, "count": count, "sum": sm, "sq": sq, "ties": ties,
            "iou": ious, "miou": np.mean([v for v in ious if v is not None]),
            "pixel_acc": np.trace(conf) / conf.sum(), "end": np.concatenate(end_terms).mean(),
            "distance": margin.sum() / 20, "distance_predicted": margin[count[1:] > 0].mean(),
            "pixels": sum(len(t.ravel()) for t in labels)}


def check_against_hand(out, model_name, corruption, severity, want, ids):
    """Every file of one condition against the hand computation: the metrics row, both NPZ files."""
    stem = f"{corruption}_{severity}.npz"
    row = next(r for r in rows(out) if (r["model"], r["corruption"], r["severity"]) == (model_name, corruption, severity))
    cf = np.load(os.path.join(out, "confusion", model_name, stem))
    lg = np.load(os.path.join(out, "logits", model_name, stem))
    flips = want["ties"]
    assert np.abs(cf["confusion"] - want["confusion"]).sum() <= 2 * flips
    per = want["per_image"]
    tp = np.einsum("nkk->nk", per)
    for key, value in (("tp", tp), ("fp", per.sum(1) - tp), ("fn", per.sum(2) - tp)):
        assert np.abs(cf[key] - value).sum() <= 2 * flips, key
    assert list(cf["image_ids"]) == ids
    exact = 0 if flips else 1e-12
    assert row["miou"] == pytest.approx(want["miou"], abs=exact or 0.01)
    assert row["pixel_acc"] == pytest.approx(want["pixel_acc"], abs=exact or 0.01)
    for got, w in zip(row["iou"], want["iou"]):
        assert (got is None) == (w is None) and (w is None or got == pytest.approx(w, abs=exact or 0.05))
    assert int(lg["pixels"]) == want["pixels"] and lg["count"].sum() == want["pixels"]
    if not flips:
        np.testing.assert_array_equal(lg["count"], want["count"])
        np.testing.assert_allclose(lg["sum"], want["sum"], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(lg["sq"], want["sq"], rtol=1e-4, atol=1e-3)
        assert row["distance"] == pytest.approx(want["distance"], rel=1e-5, abs=1e-6)
        assert row["distance_predicted"] == pytest.approx(want["distance_predicted"], rel=1e-5, abs=1e-6)
    # END as written to metrics.jsonl against its formula, and the sums behind it in the logits file.
    assert row["end"] == pytest.approx(want["end"], rel=1e-5, abs=1e-7)
    assert float(lg["end_sum"]) / int(lg["pixels"]) == pytest.approx(row["end"], rel=1e-12)


@pytest.mark.parametrize("corruption, severity", [("clean", 0), ("gaussian_noise", 3), ("glass_blur", 1)])
def test_one_condition_recomputed_by_hand_matches_every_file(setup, reference, corruption, severity):
    from common.checkpoint import load_model
    root, ckpts, _ = setup
    xs, labels = hand_inputs(root, corruption, severity)
    for path in ckpts:
        model, ckpt = load_model(path)
        want = hand_condition(model, xs, labels)
        assert want["ties"] < 0.001 * want["pixels"]
        check_against_hand(reference, ckpt["name"], corruption, severity, want, val_ids(root))


# ------------------------------------------------------------------------------------- the other flags

def test_native_protocol_corrupts_and_scores_the_original_resolution(setup, tmp_path):
    from common.checkpoint import load_model
    root, ckpts, _ = setup
    out = tmp_path / "native"
    assert evaluate(setup, out, "--protocol", "native", "--corruptions", "gaussian", "--severities", "0", "1") == 0
    assert {(r["protocol"], r["size"]) for r in rows(out)} == {("native", None)} and len(rows(out)) == 4
    for corruption, severity in (("clean", 0), ("gaussian_noise", 1)):
        xs, labels = hand_inputs(root, corruption, severity, size=None)
        assert len({x.shape for x in xs}) > 1          # the images keep their own sizes
        for path in ckpts:
            model, ckpt = load_model(path)
            want = hand_condition(model, xs, labels)
            check_against_hand(out, ckpt["name"], corruption, severity, want, val_ids(root))


def test_amp_bf16_is_other_arithmetic_with_nearly_the_same_miou(setup, reference, tmp_path):
    out = tmp_path / "bf16"
    assert evaluate(setup, out, "--amp", "bf16", "--corruptions", "gaussian", "--severities", "0", "1") == 0
    assert json.load(open(out / "run.json"))["args"]["amp"] == "bf16"
    ref = {(r["model"], r["corruption"], r["severity"]): r for r in rows(reference)}
    got = rows(out)
    assert len(got) == 4
    for r in got:
        fp32 = ref[r["model"], r["corruption"], r["severity"]]
        assert r["miou"] == pytest.approx(fp32["miou"], abs=0.02)
        assert r["pixel_acc"] == pytest.approx(fp32["pixel_acc"], abs=0.02)
        stem = f"{r['corruption']}_{r['severity']}.npz"
        a = np.load(out / "logits" / r["model"] / stem)
        b = np.load(os.path.join(reference, "logits", r["model"], stem))
        # bfloat16 keeps 8 significant bits: the logit sums move by far more than float32 rounding would.
        rel = np.abs(a["sum"] - b["sum"]).max() / np.abs(b["sum"]).max()
        assert 1e-4 < rel < 0.1


def test_names_rename_the_models_everywhere(setup, reference, tmp_path, capsys):
    out = tmp_path / "named"
    assert evaluate(setup, out, "--names", "first", "second", "--corruptions", "gaussian", "--severities", "0") == 0
    got = {r["model"]: r for r in rows(out)}
    assert set(got) == {"first", "second"}
    assert [m["name"] for m in json.load(open(out / "run.json"))["models"]] == ["first", "second"]
    ref = {r["model"]: r for r in rows(reference) if r["corruption"] == "clean"}
    for name, old in (("first", "baseline"), ("second", "scribe")):     # the checkpoints' order
        assert {k: v for k, v in got[name].items() if k != "model"} == {k: v for k, v in ref[old].items() if k != "model"}
        for sub in ("logits", "confusion"):
            assert os.path.exists(out / sub / name / "clean_0.npz") and not os.path.exists(out / sub / old)
    root, ckpts, _ = setup
    assert "--names: 1 names for 2 checkpoints" in refused(capsys, ev, "--checkpoints", *ckpts, "--names", "only-one",
                                                           "--data", "synthetic", "--synthetic-root", root,
                                                           "--out", tmp_path / "o")


@pytest.mark.slow
def test_two_sweeps_at_224_px_are_bit_identical(setup, tmp_path):
    root, ckpts, _ = setup
    outs = [tmp_path / "a", tmp_path / "b"]
    for out, workers in zip(outs, ("0", "1")):
        args = ev.get_args_parser().parse_args(["--checkpoints", *ckpts, "--data", "synthetic", "--synthetic-root",
                                                root, "--size", "224", "--limit", "1", "--workers", workers,
                                                "--corruptions", "gaussian", "jpeg", "--severities", "0", "2",
                                                "--out", str(out)])
        assert ev.main(args) == 0
    a, b = (rows(out, drop=("seconds",)) for out in outs)
    assert len(a) == 2 * 3 and a == b and {r["size"] for r in a} == {224}
    for sub in ("logits", "confusion"):
        for dirpath, _, files in os.walk(outs[0] / sub):
            for f in files:
                x, y = np.load(os.path.join(dirpath, f)), np.load(os.path.join(dirpath.replace(str(outs[0]), str(outs[1])), f))
                assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files), f


def test_a_folder_made_in_another_precision_is_refused(setup, tmp_path):
    out = tmp_path / "amp"
    args = ["--corruptions", "brightness", "--severities", "0"]
    root, ckpts, _ = setup
    base = ["--checkpoints", *ckpts, "--data", "synthetic", "--synthetic-root", root, "--size", str(SIZE),
            "--workers", "0", "--out", str(out), *args]
    assert ev.main(ev.get_args_parser().parse_args(base)) == 0
    before = open(out / "metrics.jsonl").read()
    with pytest.raises(ev.UsageError, match="--amp none, this run has --amp bf16"):
        ev.main(ev.get_args_parser().parse_args(base + ["--amp", "bf16"]))
    assert open(out / "metrics.jsonl").read() == before

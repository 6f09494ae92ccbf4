"""One run per folder, and damaged intermediate files, through the real command lines.

A results folder (or a VOC-C dump) reused for another run is refused with one line naming the first field that
differs, and stays byte for byte as it was; --overwrite starts it afresh without touching it before the new run's
first result; a run extended by more conditions equals one run that did them all; --merge refuses shards of
different runs. Every file one step reads from another is checked: damage is one line naming the file and the
command that rewrites it, or, for the sweep's own finished conditions and VOC-C PNGs (caches), a recomputation
that gives the numbers of a clean run.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import analyze_logits as al
import dump_voc_c
import evaluate_corruptions as ev
import make_figures as mf
from common.cli import UsageError
from common.sweep import images
from helpers import ROOT, assert_same_results, cli, digest, refused, result_rows as rows

SIZE = 32
CONDS = ["--corruptions", "gaussian", "--severities", "0", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, synthetic, tiny_ckpt):
    d = tmp_path_factory.mktemp("runs")
    root = synthetic(n_voc_train=2, n_sbd=1, n_val=4, max_side=64)
    ck = {"a": tiny_ckpt("baseline", 1), "b": tiny_ckpt("scribe", 2),
          "a2": tiny_ckpt("baseline", 7)}   # the same stored name as a, other weights
    return {"dir": d, "root": root, "ck": ck}


def sweep_argv(world, out, *extra, ckpts=("a", "b"), root=None):
    return ["--checkpoints", *[world["ck"][k] for k in ckpts], "--data", "synthetic", "--synthetic-root",
            root or world["root"], "--size", str(SIZE), "--batch-size", "4", "--workers", "0", "--out", str(out),
            *CONDS, *extra]


def sweep(world, out, *extra, **kw):
    return ev.main(ev.get_args_parser().parse_args(sweep_argv(world, out, *extra, **kw)))


def dump(world, out, *extra, root=None):
    return dump_voc_c.main(dump_voc_c.get_args_parser().parse_args(
        ["--data", "synthetic", "--synthetic-root", root or world["root"], "--size", str(SIZE), "--out", str(out),
         *extra]))


def analyse(results, out=None):
    return al.main(al.get_args_parser().parse_args(["--results", str(results), "--bootstrap", "0",
                                                    *(["--out", str(out)] if out else [])]))


def figures(results, out):
    return mf.main(mf.get_args_parser().parse_args(["--results", str(results), "--out", str(out), "--only",
                                                    "miou_vs_severity", "class_means"]))


def copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def change_one_val_label(root):
    """One pixel of the first val image's label changed: the same ids and paths, other data."""
    voc = os.path.join(root, "voc", "VOCdevkit", "VOC2012")
    first_id = open(os.path.join(voc, "ImageSets", "Segmentation", "val.txt")).read().split()[0]
    path = os.path.join(voc, "SegmentationClass", first_id + ".png")
    lbl = Image.open(path)
    a = np.array(lbl)
    a[0, 0] = 1 if a[0, 0] != 1 else 2
    out = Image.fromarray(a, mode="P")
    out.putpalette(lbl.getpalette())
    out.save(path)


@pytest.fixture(scope="module")
def base(world):
    out = world["dir"] / "base"
    assert sweep(world, out) == 0
    return out


@pytest.fixture(scope="module")
def analysed(world, base):
    out = copy(base, world["dir"] / "analysed")
    assert analyse(out) == 0
    return out


# ---------------------------------------------------------------------------------- one run per folder

@pytest.mark.parametrize("change, needle", [
    ("checkpoint", "this run has model baseline from another checkpoint (sha256 "),
    ("models", "the models"),
    ("size", "--size 32, this run has --size 40"),
    ("protocol", "--protocol paper, this run has --protocol shortside"),
    ("amp", "--amp none, this run has --amp bf16"),
    ("limit", "images: 4, this run has images: 3"),
    ("data", "val files sha256"),
    ("versions", "numpy"),
    ("code", "--corruption-code imagenet-c, this run has --corruption-code imagecorruptions"),
])
def test_a_folder_of_another_run_is_refused_and_left_as_it_was(world, base, monkeypatch, change, needle):
    before = digest(base)
    kw, extra = {}, []
    if change == "checkpoint":
        kw["ckpts"] = ("a2", "b")
    elif change == "models":
        kw["ckpts"] = ("b",)
    elif change == "data":   # the same image ids in another folder, one label with other pixels
        kw["root"] = str(world["dir"] / "syn-other")
        if not os.path.exists(kw["root"]):
            shutil.copytree(world["root"], kw["root"])
            change_one_val_label(kw["root"])
    elif change == "versions":
        real = ev.corruption_versions
        monkeypatch.setattr(ev, "corruption_versions", lambda: {**real(), "numpy": "0.0.other"})
    else:
        extra = {"size": ["--size", "40"], "protocol": ["--protocol", "shortside"], "amp": ["--amp", "bf16"],
                 "limit": ["--limit", "3"], "code": ["--corruption-code", "imagecorruptions"]}[change]
    with pytest.raises(UsageError) as e:
        sweep(world, base, *extra, **kw)
    msg = str(e.value)
    assert needle in msg and "another --out" in msg and "--overwrite" in msg and "\n" not in msg, msg
    assert msg.startswith(os.path.join(str(base), "run.json"))
    assert digest(base) == before


def test_other_image_ids_with_the_same_count_are_another_run(world, tmp_path):
    root = str(tmp_path / "syn")
    shutil.copytree(world["root"], root)
    out = tmp_path / "r"
    assert sweep(world, out, "--severities", "0", root=root) == 0
    before = digest(out)
    split = os.path.join(root, "voc", "VOCdevkit", "VOC2012", "ImageSets", "Segmentation", "val.txt")
    ids = open(split).read().split()
    ids[-1] = "2024_000000"                    # a training image (it has a label) instead of the last val image
    open(split, "w").write("\n".join(ids) + "\n")
    with pytest.raises(UsageError, match="image ids sha256"):
        sweep(world, out, "--severities", "0", root=root)
    assert digest(out) == before


def test_a_refused_run_is_one_line_and_exit_2_from_the_command_line(world, base, capsys):
    before = digest(base)
    line = refused(capsys, ev, *sweep_argv(world, base, "--size", "40"))
    assert "--size 32, this run has --size 40" in line and "--overwrite" in line
    assert digest(base) == before


@pytest.mark.parametrize("damage, needle", [
    ("run.json not JSON", "run.json: damaged"),
    ("run.json a list", "run.json: damaged"),
    ("run.json removed", "holds results but no run.json"),
])
def test_results_without_a_readable_run_json_are_not_reused(world, base, tmp_path, damage, needle):
    out = copy(base, tmp_path / "r")
    path = out / "run.json"
    if damage == "run.json removed":
        path.unlink()
    else:
        path.write_text("{\"models\": [" if damage == "run.json not JSON" else "[1, 2]")
    before = digest(out)
    with pytest.raises(UsageError, match=needle) as e:
        sweep(world, out)
    assert "--overwrite" in str(e.value)
    assert digest(out) == before


def test_overwrite_touches_nothing_before_the_first_result_then_moves_the_old_folder_aside(
        world, base, tmp_path, monkeypatch, capsys):
    out = copy(base, tmp_path / "r")
    before = digest(out)
    # Interrupted before its first result (Ctrl-C while corrupting the first image): the folder is as it was,
    # and the half-built new run is gone.
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(images, "corrupt_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep(world, out, "--overwrite", "--severities", "1", ckpts=("a2", "b"))
    monkeypatch.undo()
    assert digest(out) == before and sorted(os.listdir(tmp_path)) == ["r"]
    # Completed: the new run takes the folder's place; the old one is moved aside, byte for byte, and said so.
    capsys.readouterr()
    assert sweep(world, out, "--overwrite", ckpts=("a2", "b")) == 0
    moved = [f for f in os.listdir(tmp_path) if f.startswith("r.replaced-")]
    assert sorted(os.listdir(tmp_path)) == ["r"] + moved and len(moved) == 1
    assert digest(tmp_path / moved[0]) == before
    assert str(tmp_path / moved[0]) in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    assert sweep(world, fresh, ckpts=("a2", "b")) == 0
    assert_same_results(out, fresh)


@pytest.mark.slow
def test_a_kill_before_the_first_result_leaves_the_old_folder_byte_identical(world, base, tmp_path):
    out = copy(base, tmp_path / "r")
    before = digest(out)
    cmd = [sys.executable, "evaluate_corruptions.py",
           *sweep_argv(world, out, "--overwrite", "--size", "64", "--corruptions", "glass", "--severities", "5",
                       ckpts=("a2", "b"))]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline and \
            not any(f.startswith(".r.afresh-") for f in os.listdir(tmp_path)):
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert [f for f in os.listdir(tmp_path) if f.startswith(".r.afresh-")], "killed too late to test this"
    assert digest(out) == before and not [f for f in os.listdir(tmp_path) if ".replaced-" in f]
    # The next run on the folder (the same run: nothing to compute) clears the dead run's hidden folder.
    assert sweep(world, out) == 0
    assert sorted(os.listdir(tmp_path)) == ["r"] and digest(out) == before


def test_extending_a_run_equals_one_run_that_did_it_all(world, base, tmp_path):
    more = ["--corruptions", "gaussian", "jpeg", "--severities", "0", "1", "2"]
    out = copy(base, tmp_path / "extended")
    assert sweep(world, out, *more) == 0
    one = tmp_path / "one"
    assert sweep(world, one, *more) == 0
    assert len(rows(one)) == 2 * (1 + 2 * 2)
    assert_same_results(out, one)


def test_merge_refuses_shards_of_different_runs(world, base, tmp_path):
    s0, s1, s1_bf16 = tmp_path / "s0", tmp_path / "s1", tmp_path / "s1-bf16"
    assert sweep(world, s0, "--shard", "0/2") == 0
    assert sweep(world, s1, "--shard", "1/2") == 0
    assert sweep(world, s1_bf16, "--shard", "1/2", "--amp", "bf16") == 0

    def merge(*folders, out=tmp_path / "merged"):
        return ev.main(ev.get_args_parser().parse_args(["--merge", *map(str, folders), "--out", str(out)]))

    for folders, needle in (((s0, s1_bf16), f"--merge {s1_bf16}: a shard of another run than {s0}: {s0} was made "
                                            f"with --amp none, {s1_bf16} with --amp bf16"),
                            ((s0,), "1/2 missing"), ((s0, s0), "again"), ((s0, base), "not a shard")):
        with pytest.raises(UsageError) as e:
            merge(*folders)
        assert needle in str(e.value), str(e.value)
        assert not os.path.exists(tmp_path / "merged" / "metrics.jsonl")
    # A shard whose NPZ has no calibration arrays (the format before they were measured): one line naming the file.
    s1_old = tmp_path / "s1-old"
    shutil.copytree(s1, s1_old)
    npz = sorted(next((s1_old / "confusion").iterdir()).iterdir())[0]
    z = dict(np.load(npz))
    np.savez(npz, **{k: v for k, v in z.items() if not k.startswith("calib_")})
    with pytest.raises(UsageError, match=f"{re.escape(str(npz))}: .*calib_.*rerun that shard"):
        merge(s0, s1_old)
    assert not os.path.exists(tmp_path / "merged" / "metrics.jsonl")
    assert merge(s0, s1) == 0
    run, ref = (json.load(open(d / "run.json")) for d in (tmp_path / "merged", base))
    assert run["images"] == 4 and run["image_ids_sha256"] == ref["image_ids_sha256"] and run["shard"] is None
    # A merged folder is the unsharded run: the same sweep extends it, another one is refused.
    assert sweep(world, tmp_path / "merged", "--corruptions", "jpeg", "--severities", "1") == 0
    with pytest.raises(UsageError, match="--amp none, this run has --amp bf16"):
        sweep(world, tmp_path / "merged", "--amp", "bf16")


# ------------------------------------------------------------------------------------- VOC-C dumps

def test_a_dump_of_another_kind_is_refused_and_overwrite_replaces_it(world, tmp_path, capsys):
    out = tmp_path / "vocc"
    assert dump(world, out, "--corruptions", "jpeg", "--severities", "1") == 0
    before = digest(out)
    other = str(tmp_path / "syn-other")
    shutil.copytree(world["root"], other)
    change_one_val_label(other)
    for extra, kw, needle in ((["--size", "40"], {}, "--size 32, this run has --size 40"),
                              ([], {"root": other}, "val files sha256")):
        with pytest.raises(UsageError) as e:
            dump(world, out, "--corruptions", "jpeg", "--severities", "1", *extra, **kw)
        assert needle in str(e.value) and "--overwrite" in str(e.value) and "manifest.json" in str(e.value)
        assert digest(out) == before
    # More corruptions extend the dump.
    assert dump(world, out, "--corruptions", "gaussian", "--severities", "1") == 0
    m = json.load(open(out / "manifest.json"))
    assert m["images"] == {"gaussian_noise/1": 4, "jpeg_compression/1": 4}
    extended = digest(out)
    # --overwrite: the new dump takes the folder's place, the old one is moved aside untouched.
    capsys.readouterr()
    assert dump(world, out, "--corruptions", "jpeg", "--severities", "2", "--overwrite", root=other) == 0
    moved = [f for f in os.listdir(tmp_path) if f.startswith("vocc.replaced-")]
    assert len(moved) == 1 and digest(tmp_path / moved[0]) == extended
    assert str(tmp_path / moved[0]) in capsys.readouterr().out
    m = json.load(open(out / "manifest.json"))
    assert m["images"] == {"jpeg_compression/2": 4} and m["voc_root"] == os.path.abspath(os.path.join(other, "voc"))
    fresh = tmp_path / "fresh"
    assert dump(world, fresh, "--corruptions", "jpeg", "--severities", "2", root=other) == 0
    assert digest(out) == digest(fresh)


def test_folders_of_the_other_corruption_code_or_without_one_are_refused(world, tmp_path):
    # A dump or results folder of the other code is refused with the code on each side; one that records no code
    # (the format before it was recorded) is refused as an earlier format, in one line, and left as it was.
    conds = ["--corruptions", "frost", "--severities", "1"]
    old = tmp_path / "old-vocc"
    assert dump(world, old, *conds, "--corruption-code", "imagecorruptions") == 0
    manifest = json.load(open(old / "manifest.json"))
    assert manifest["corruption_code"] == "imagecorruptions" and "imagecorruptions.corrupt" in manifest["seed_rule"]
    before = digest(old)
    with pytest.raises(UsageError, match="--corruption-code imagecorruptions, this run has --corruption-code "
                                         "imagenet-c.*--overwrite"):
        dump(world, old, *conds)
    with pytest.raises(UsageError, match="dumped with --corruption-code \"imagecorruptions\", this run has "
                                         "\"imagenet-c\""):
        sweep(world, tmp_path / "r", "--voc-c", str(old), *conds)
    assert digest(old) == before and not os.path.exists(tmp_path / "r" / "metrics.jsonl")
    assert dump(world, old, *conds, "--corruption-code", "imagecorruptions") == 0       # the same code: reused
    # A results folder likewise; its rows and run.json record the code.
    res = tmp_path / "old-results"
    assert sweep(world, res, "--corruption-code", "imagecorruptions", "--voc-c", str(old), *conds) == 0
    run = json.load(open(res / "run.json"))
    assert run["corruption_code"] == run["voc_c"]["corruption_code"] == "imagecorruptions"
    assert {r["corruption_code"] for r in rows(res)} == {"imagecorruptions"}
    assert analyse(res) == 0
    assert "corruptions by imagecorruptions" in (res / "tables.md").read_text()
    with pytest.raises(UsageError, match="--corruption-code imagecorruptions, this run has --corruption-code "
                                         "imagenet-c"):
        sweep(world, res, *conds)
    # Without a recorded code: an earlier format, refused under either code.
    del manifest["corruption_code"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    before = digest(old)
    for code in ("imagecorruptions", "imagenet-c"):
        with pytest.raises(UsageError, match="manifest.json: no corruption_code \\(an earlier dump_voc_c.py's "
                                             "format\\).*--overwrite"):
            dump(world, old, *conds, "--corruption-code", code)
    assert digest(old) == before
    for r in (run, run["voc_c"]):
        del r["corruption_code"]
    (res / "run.json").write_text(json.dumps(run))
    before = digest(res)
    with pytest.raises(UsageError, match="run.json: no corruption_code, voc_c.corruption_code \\(written by an "
                                         "earlier evaluate_corruptions.py\\); .*--overwrite"):
        sweep(world, res, "--corruption-code", "imagecorruptions", *conds)
    assert digest(res) == before
    # The notebook's frost is another texture and crop: the two codes' dumps differ.
    new = tmp_path / "new-vocc"
    assert dump(world, new, *conds) == 0
    a, b = (sorted((f / "frost" / "1").iterdir()) for f in (old, new))
    assert any(np.array(Image.open(x)).tobytes() != np.array(Image.open(y)).tobytes() for x, y in zip(a, b))


@pytest.mark.parametrize("content", ['{"protocol": "paper", "size"', "[1, 2]", '{"protocol": "paper", "size": 32}',
                                     ""])
def test_a_damaged_manifest_is_one_line_for_the_dump_and_the_sweep(world, tmp_path, content):
    out = tmp_path / "vocc"
    assert dump(world, out, "--corruptions", "jpeg", "--severities", "1", "--limit", "1") == 0
    (out / "manifest.json").write_text(content)
    before = digest(out)
    with pytest.raises(UsageError, match="manifest.json: damaged manifest .*dump_voc_c.py --overwrite"):
        dump(world, out, "--corruptions", "jpeg", "--severities", "1")
    with pytest.raises(UsageError, match="manifest.json: damaged manifest"):
        sweep(world, tmp_path / "r", "--voc-c", str(out))
    assert digest(out) == before and not os.path.exists(tmp_path / "r" / "metrics.jsonl")


def test_damaged_voc_c_pngs_are_corrupted_again_with_the_clean_numbers(world, base, tmp_path):
    vocc = tmp_path / "vocc"
    assert dump(world, vocc, "--corruptions", "gaussian", "--severities", "1") == 0
    files = sorted((vocc / "gaussian_noise" / "1").iterdir())
    files[0].write_bytes(files[0].read_bytes()[:60])                                  # truncated
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(files[1])                  # another size
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(files[2])                 # grey, the right size
    files[3].write_bytes(b"")                                                         # empty
    out = tmp_path / "r"
    assert sweep(world, out, "--voc-c", str(vocc)) == 0
    assert_same_results(out, base)


# ------------------------------------------------------------ damaged results: the sweep's own cache

@pytest.mark.parametrize("damage", ["truncated confusion", "zero-byte logits", "logits without sq",
                                    "confusion of another shape", "NaN in a logit sum", "torn last line",
                                    "row without miou", "non-JSON line", "a repeated row"])
def test_a_damaged_finished_condition_is_computed_again(world, base, tmp_path, damage, capsys):
    out = copy(base, tmp_path / "r")
    lg, cf = out / "logits" / "baseline" / "gaussian_noise_1.npz", out / "confusion" / "scribe" / "gaussian_noise_1.npz"
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    if damage == "truncated confusion":
        cf.write_bytes(cf.read_bytes()[:500])
    elif damage == "zero-byte logits":
        lg.write_bytes(b"")
    elif damage in ("logits without sq", "NaN in a logit sum"):
        z = dict(np.load(lg))
        if damage == "logits without sq":
            del z["sq"]
        else:
            z["sum"][0, 0] = np.nan
        np.savez(lg, **z)
    elif damage == "confusion of another shape":
        z = dict(np.load(cf))
        z["tp"] = z["tp"][:, :20]
        np.savez(cf, **z)
    elif damage == "torn last line":
        metrics.write_text("\n".join(lines[:-1] + [lines[-1][:30]]) + "\n")
    elif damage == "row without miou":
        row = json.loads(lines[-1])
        del row["miou"]
        metrics.write_text("\n".join(lines[:-1] + [json.dumps(row)]) + "\n")
    elif damage == "non-JSON line":
        metrics.write_text("\n".join([lines[0], "{not json"] + lines[1:]) + "\n")
    else:
        metrics.write_text("\n".join(lines + [lines[-1]]) + "\n")
    assert sweep(world, out) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "computed again" in err
    assert_same_results(out, base)


# -------------------------------------------------------- damaged results: analyze_logits, make_figures

def damage_results(out, damage):
    """Damage one file of a results folder; returns the file's name."""
    lg = out / "logits" / "scribe" / "clean_0.npz"
    cf = out / "confusion" / "baseline" / "gaussian_noise_1.npz"
    if damage == "truncated logits":
        lg.write_bytes(lg.read_bytes()[:1000])
        return lg
    if damage == "zero-byte confusion":
        cf.write_bytes(b"")
        return cf
    if damage in ("logits without count", "logits of another shape", "NaN in a logit sum"):
        z = dict(np.load(lg))
        if damage == "logits without count":
            del z["count"]
        elif damage == "logits of another shape":
            z["sum"] = z["sum"][:20]
        else:
            z["sq"][3, 2, 1] = np.inf
        np.savez(lg, **z)
        return lg
    if damage == "image ids and counts disagree":
        z = dict(np.load(cf))
        z["image_ids"] = z["image_ids"][:3]
        np.savez(cf, **z)
        return cf
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    if damage == "torn last line":
        metrics.write_text("\n".join(lines[:-1] + [lines[-1][:25]]) + "\n")
    elif damage == "non-JSON line":
        metrics.write_text("\n".join([lines[0], "<<<<<<< HEAD"] + lines[1:]) + "\n")
    elif damage == "row without severity":
        row = json.loads(lines[0])
        del row["severity"]
        metrics.write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")
    elif damage == "run.json a list":
        (out / "run.json").write_text("[]")
        return out / "run.json"
    elif damage == "run.json truncated":
        (out / "run.json").write_text((out / "run.json").read_text()[:100])
        return out / "run.json"
    return metrics


ANALYSIS_DAMAGE = ["truncated logits", "zero-byte confusion", "logits without count", "logits of another shape",
                   "NaN in a logit sum", "image ids and counts disagree", "torn last line", "non-JSON line",
                   "row without severity", "run.json a list", "run.json truncated"]


@pytest.mark.parametrize("damage", ANALYSIS_DAMAGE)
def test_analyze_logits_refuses_a_damaged_file_naming_it_and_what_rewrites_it(world, base, tmp_path, damage):
    out = copy(base, tmp_path / "r")
    path = damage_results(out, damage)
    before = digest(out)
    with pytest.raises(UsageError) as e:
        analyse(out)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "evaluate_corruptions.py" in msg and "\n" not in msg, msg
    assert digest(out) == before                       # no analysis.json, tables.md or arrays written


def test_a_truncated_logits_npz_is_one_line_from_the_command_line_and_the_sweep_rewrites_it(world, base, tmp_path):
    out = copy(base, tmp_path / "r")
    path = damage_results(out, "truncated logits")
    r = cli("analyze_logits.py", "--results", str(out), "--bootstrap", "0", timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert str(path) in lines[0] and f"evaluate_corruptions.py with the same arguments and --out {out}" in lines[0]
    assert not os.path.exists(out / "analysis.json")
    # The command it names rewrites the file, after which the analysis runs.
    assert sweep(world, out) == 0
    assert_same_results(out, base)
    assert analyse(out) == 0


@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "an array of another shape", "an array of strings",
                                    "no models", "analysis.json of other checkpoints", "analysis.json not JSON",
                                    "torn metrics line", "run.json a list"])
def test_make_figures_refuses_damaged_results_before_drawing(analysed, tmp_path, damage):
    res = copy(analysed, tmp_path / "r")
    arr, aj = res / "analysis_arrays.npz", res / "analysis.json"
    if damage == "truncated":
        arr.write_bytes(arr.read_bytes()[:2000])
    elif damage == "zero bytes":
        arr.write_bytes(b"")
    elif damage in ("an array of another shape", "an array of strings", "no models"):
        z = dict(np.load(arr))
        if damage == "an array of another shape":
            z["scribe/clean/mean"] = z["scribe/clean/mean"][:, :5]
        elif damage == "an array of strings":
            z["baseline/gaussian_noise/1/explained_variance"] = np.array(["x"] * 21)
        else:
            del z["models"]
        np.savez(arr, **z)
    elif damage == "analysis.json of other checkpoints":
        a = json.load(open(aj))
        a["source"]["models"][0]["checkpoint_sha256"] = "f" * 64
        aj.write_text(json.dumps(a))
    elif damage == "analysis.json not JSON":
        aj.write_text(aj.read_text()[:50])
    elif damage == "torn metrics line":
        damage_results(res, "torn last line")
    else:
        damage_results(res, "run.json a list")
    with pytest.raises(UsageError) as e:
        figures(res, tmp_path / "figs")
    msg = str(e.value)
    fix = "evaluate_corruptions.py" if damage in ("torn metrics line", "run.json a list") else "analyze_logits.py"
    assert fix in msg and "\n" not in msg, msg
    assert not os.path.exists(tmp_path / "figs")


def test_make_figures_damaged_arrays_from_the_command_line(analysed, tmp_path):
    res = copy(analysed, tmp_path / "r")
    (res / "analysis_arrays.npz").write_bytes((res / "analysis_arrays.npz").read_bytes()[:3000])
    r = cli("make_figures.py", "--results", str(res), "--out", str(tmp_path / "figs"), "--only", "class_means",
            timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "analysis_arrays.npz" in lines[0] and f"analyze_logits.py --results {res}" in lines[0]
    assert not os.path.exists(tmp_path / "figs")


@pytest.mark.parametrize("edit, needle", [
    ("images", "has images 4, "), ("model", "names a model that"), ("protocol", "has protocol \"paper\""),
    ("size", "has size 32"), ("sha256", "has checkpoint_sha256"),
])
def test_rows_that_run_json_does_not_describe_are_refused_by_analysis_and_figures(analysed, tmp_path, edit, needle):
    res = copy(analysed, tmp_path / "r")
    run = json.load(open(res / "run.json"))
    if edit == "images":
        run["images"] = 5
    elif edit == "model":
        run["models"][0]["name"] = "someone_else"
    elif edit == "protocol":
        run["protocol"] = "shortside"
    elif edit == "size":
        run["size"] = 40
    else:
        run["models"][1]["sha256"] = "f" * 64
    (res / "run.json").write_text(json.dumps(run))
    before = digest(res)
    for call in (lambda: analyse(res), lambda: figures(res, tmp_path / "figs")):
        with pytest.raises(UsageError) as e:
            call()
        assert needle in str(e.value) and "mixes results of two runs" in str(e.value), str(e.value)
    assert digest(res) == before and not os.path.exists(tmp_path / "figs")

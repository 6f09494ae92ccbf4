"""Bad input, clear error: every case through the script's command line gives exit status 2, one stderr line that
names the problem and the file, no traceback, no partial output, and earlier results untouched.

The cases run in-process (``run_cli`` on that sys.argv, stderr captured at the file descriptors, DataLoader
workers included); those in REAL_PROCESS, one or two a script, run in a fresh interpreter as a user's shell does.
"""
import hashlib
import importlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import analyze_logits
import evaluate_corruptions
from helpers import cli, refused, run_script


class Evil:
    """Pickles as a call to os.system: what a malicious checkpoint carries."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/pwned-by-checkpoint",))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_data, tiny_ckpt):
    """A folder with bad inputs of every kind beside a good checkpoint and a good earlier evaluation ("results");
    ``world / "synthetic"`` is the shared tiny dataset."""
    d = tmp_path_factory.mktemp("bad")
    syn = d / "synthetic"
    syn.symlink_to(tiny_data, target_is_directory=True)
    good = str(shutil.copy(tiny_ckpt("ibe", 0), d / "good.pt"))
    torch.save(torch.nn.Conv2d(1, 1, 1).state_dict(), d / "foreign.pt")
    torch.save({"model": {}, "model_config": {}, "hook": Evil()}, d / "evil.pt")
    (d / "a_file").write_text("not a folder")
    # A previous, good evaluation whose files must survive every failed run below.
    assert run_script(evaluate_corruptions, "--checkpoints", good, "--data", "synthetic", "--synthetic-root", syn,
                      "--size", "32", "--workers", "0", "--corruptions", "jpeg", "--severities", "0", "1",
                      "--out", d / "results") == 0
    assert run_script(analyze_logits, "--results", d / "results", "--bootstrap", "10") == 0
    return d


def damaged_voc(world, name, damage):
    """A copy of the synthetic VOC part (a real VOC layout) with one thing broken."""
    root = world / name
    if not root.exists():
        shutil.copytree(world / "synthetic" / "voc", root)
        damage(root / "VOCdevkit" / "VOC2012", first_val_id(root))
    return str(root)


def first_val_id(root):
    return open(root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").readline().strip()


def missing_image(base, i):
    with open(base / "ImageSets" / "Segmentation" / "val.txt", "a") as fh:
        fh.write("2099_000001\n")


def truncated_jpeg(base, i):
    p = base / "JPEGImages" / f"{i}.jpg"
    p.write_bytes(p.read_bytes()[:300])


def bad_label_values(base, i):
    p = base / "SegmentationClass" / f"{i}.png"
    im = Image.open(p)
    a = np.array(im)
    a[0, :5] = 42
    out = Image.frombytes("P", im.size, a.tobytes())
    out.putpalette(im.getpalette())
    out.save(p)


def label_size_differs(base, i):
    p = base / "SegmentationClass" / f"{i}.png"
    im = Image.open(p)
    im.crop((0, 0, im.width - 3, im.height)).save(p)


def tree_digest(path):
    h = hashlib.sha256()
    for d, _, fs in sorted(os.walk(path)):
        for f in sorted(fs):
            if f == ".lock":
                continue
            h.update(f.encode())
            h.update(open(os.path.join(d, f), "rb").read())
    return h.hexdigest()


DUMP = ["dump_voc_c.py", "--corruptions", "jpeg", "--severities", "1", "--size", "32", "--workers", "1"]


def cases(w, o):
    syn = ["--data", "synthetic", "--synthetic-root", str(w / "synthetic")]
    good = str(w / "good.pt")
    ev = ["evaluate_corruptions.py", "--size", "32", "--workers", "0", "--corruptions", "jpeg", "--severities", "1"]
    tr = ["train.py", "--model", "ibe", "--backbone", "resnet18", "--head-channels", "8", "--crop-size", "32",
          "--batch-size", "2", "--epochs", "1", "--workers", "0"]
    voc = w / "synthetic" / "voc"
    return {
        "missing --voc-root": (tr + ["--data", "voc", "--out", str(o)], ["--voc-root", "--data synthetic"]),
        "root is VOC2012": (tr + ["--data", "voc", "--voc-root", str(voc / "VOCdevkit" / "VOC2012"),
                                  "--sbd-root", str(w / "synthetic" / "sbd"), "--out", str(o)],
                            ["VOC2012", "VOCdevkit"]),
        "missing SBD": (tr + ["--data", "voc", "--voc-root", str(voc), "--out", str(o)], ["--sbd-root"]),
        "split names a missing image": (DUMP + ["--data", "voc", "--voc-root", damaged_voc(w, "v1", missing_image),
                                                "--out", str(o)], ["val.txt", "2099_000001"]),
        "truncated JPEG": (DUMP + ["--data", "voc", "--voc-root", damaged_voc(w, "v2", truncated_jpeg),
                                   "--out", str(o)], [".jpg", "truncated"]),
        "truncated JPEG in a loader worker": (
            ev + ["--workers", "1", "--checkpoints", good, "--data", "voc", "--voc-root",
                  damaged_voc(w, "v2", truncated_jpeg), "--out", str(o)], [".jpg", "truncated"]),
        "label values outside 0..20": (DUMP + ["--data", "voc", "--voc-root", damaged_voc(w, "v3", bad_label_values),
                                               "--out", str(o)], [".png", "42"]),
        "label size differs": (DUMP + ["--data", "voc", "--voc-root", damaged_voc(w, "v4", label_size_differs),
                                       "--out", str(o)], [".png", "must match"]),
        "missing checkpoint": (ev + syn + ["--checkpoints", str(w / "nope.pt"), "--out", str(o)],
                               ["nope.pt", "no such file"]),
        "foreign checkpoint": (ev + syn + ["--checkpoints", str(w / "foreign.pt"), "--out", str(o)],
                               ["foreign.pt", "not a checkpoint written by train.py"]),
        "pickled callable": (ev + syn + ["--checkpoints", str(w / "evil.pt"), "--out", str(o)],
                             ["evil.pt", "run code"]),
        "unknown corruption name": (ev + syn + ["--checkpoints", good, "--corruptions", "rain", "--out",
                                                str(o)], ["rain", "gaussian_noise"]),
        "unknown corruption number": (DUMP + syn + ["--corruptions", "23", "--out", str(o)], ["23"]),
        "severity outside 0..5": (ev + syn + ["--checkpoints", good, "--severities", "6", "--out", str(o)],
                                  ["6", "0..5"]),
        "--shard 3/2": (ev + syn + ["--checkpoints", good, "--shard", "3/2", "--out", str(o)], ["--shard"]),
        "--out is a file": (ev + syn + ["--checkpoints", good, "--out", str(w / "a_file")], ["a_file", "file"]),
        "--out not writable": (DUMP + syn + ["--out", "/proc/no/such/dir"], ["/proc/no/such/dir", "cannot create"]),
        "train --out is a file": (tr + syn + ["--out", str(w / "a_file")], ["a_file"]),
        "--batch-size 0 (evaluate)": (ev + syn + ["--checkpoints", good, "--batch-size", "0", "--out", str(o)],
                                      ["--batch-size"]),
        "--batch-size 0 (train)": (tr + syn + ["--batch-size", "0", "--out", str(o)], ["--batch-size"]),
        "--val-every -1 (train)": (tr + syn + ["--val-every", "-1", "--out", str(o)], ["--val-every -1"]),
    }


CASES = ["missing --voc-root", "root is VOC2012", "missing SBD", "split names a missing image", "truncated JPEG",
         "truncated JPEG in a loader worker", "label values outside 0..20", "label size differs",
         "missing checkpoint", "foreign checkpoint", "pickled callable",
         "unknown corruption name", "unknown corruption number", "severity outside 0..5", "--shard 3/2",
         "--out is a file", "--out not writable", "train --out is a file", "--batch-size 0 (evaluate)",
         "--batch-size 0 (train)", "--val-every -1 (train)"]
# Through a real interpreter: the exit status and the whole stderr as a shell sees them, pool and loader workers
# included (make_video's and the other scripts' own such cases are in their test files).
REAL_PROCESS = {"missing --voc-root", "truncated JPEG", "truncated JPEG in a loader worker"}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(world, case, capfd):
    out = world / ("o-" + "".join(ch if ch.isalnum() else "_" for ch in case))
    args, needles = cases(world, out)[case]
    before = tree_digest(world / "results")
    if os.path.exists("/tmp/pwned-by-checkpoint"):
        os.remove("/tmp/pwned-by-checkpoint")
    if case in REAL_PROCESS:
        r = cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (case, r.returncode, r.stderr[-1500:])
        assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-1500:]
        line = lines[0]
    else:
        line = refused(capfd, importlib.import_module(Path(args[0]).stem), *args[1:])
    for needle in needles:
        assert needle in line, (needle, line)
    # No partial output anywhere, and earlier results untouched.
    assert not out.exists() or not [f for _, _, fs in os.walk(out) for f in fs if f != ".lock"]
    assert tree_digest(world / "results") == before
    assert not os.path.exists("/tmp/pwned-by-checkpoint")


def test_malformed_last_metrics_line_for_analysis(world, tmp_path, capsys):
    # A torn last line is refused, not dropped as evaluate_corruptions.py's resume drops it.
    shutil.copytree(world / "results", tmp_path / "r")
    before = (tmp_path / "r" / "analysis.json").read_bytes()
    with open(tmp_path / "r" / "metrics.jsonl", "a") as fh:
        fh.write("{not json\n")
    assert "metrics.jsonl" in refused(capsys, analyze_logits, "--results", tmp_path / "r")
    assert (tmp_path / "r" / "analysis.json").read_bytes() == before


def test_a_fifo_or_device_as_checkpoint_is_refused_without_hanging(world):
    # evaluate_corruptions.py hashes each checkpoint after loading it. A FIFO without a writer, or /dev/zero,
    # would block the load or the hash forever: they must be refused like a missing file, at once, also after a
    # good checkpoint.
    fifo = world / "fifo.pt"
    if not fifo.exists():
        os.mkfifo(fifo)
    good = str(world / "good.pt")
    for ckpts in ([str(fifo)], [good, str(fifo)], [good, "/dev/zero"]):
        out = world / "o-fifo"
        r = cli("evaluate_corruptions.py", "--checkpoints", *ckpts, "--data", "synthetic", "--synthetic-root",
                str(world / "synthetic"), "--size", "32", "--workers", "0", "--corruptions", "jpeg",
                "--severities", "1", "--out", str(out), timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert ckpts[-1] in lines[0] and "not a regular file" in lines[0], lines[0]
        assert not out.exists()

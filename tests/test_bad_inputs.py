"""Bad input, clear error: every case through the real CLI gives exit status 2, one stderr line that names the
problem and the file, no traceback, no partial output, and earlier results untouched."""
import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from common.synthetic import ensure_synthetic
from helpers import cli, tiny_checkpoint


class Evil:
    """Pickles as a call to os.system: what a malicious checkpoint carries."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/pwned-by-checkpoint",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    syn = d / "synthetic"
    ensure_synthetic(syn, n_voc_train=2, n_sbd=2, n_val=3, max_side=80, quiet=True)
    good = tiny_checkpoint(d / "good.pt", "ibe", 0)
    torch.save(torch.nn.Conv2d(1, 1, 1).state_dict(), d / "foreign.pt")
    (d / "truncated.pt").write_bytes(open(good, "rb").read()[:1000])
    torch.save({"model": {}, "model_config": {}, "hook": Evil()}, d / "evil.pt")
    (d / "a_file").write_text("not a folder")
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 50)
    # A previous, good evaluation whose files must survive every failed run below.
    r = cli("evaluate_corruptions.py", "--checkpoints", good, "--data", "synthetic", "--synthetic-root", str(syn),
            "--size", "32", "--workers", "0", "--corruptions", "jpeg", "--severities", "0", "1", "--out",
            str(d / "results"))
    assert r.returncode == 0, r.stderr
    r = cli("analyze_logits.py", "--results", str(d / "results"), "--bootstrap", "10")
    assert r.returncode == 0, r.stderr
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
    vid = ["make_video.py", "--baseline", good, "--robust", good]
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
        "truncated checkpoint": (ev + syn + ["--checkpoints", str(w / "truncated.pt"), "--out", str(o)],
                                 ["truncated.pt", "truncated"]),
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
        "missing --video": (vid + ["--video", str(w / "nope.mp4"), "--out", str(o / "demo.mp4")], ["nope.mp4"]),
        "empty --video": (vid + ["--video", str(w / "empty.mp4"), "--out", str(o / "demo.mp4")], ["empty.mp4"]),
        "non-video --video": (vid + ["--video", str(w / "text.mp4"), "--out", str(o / "demo.mp4")], ["text.mp4"]),
    }


CASES = ["missing --voc-root", "root is VOC2012", "missing SBD", "split names a missing image", "truncated JPEG",
         "truncated JPEG in a loader worker", "label values outside 0..20", "label size differs",
         "missing checkpoint", "truncated checkpoint", "foreign checkpoint", "pickled callable",
         "unknown corruption name", "unknown corruption number", "severity outside 0..5", "--shard 3/2",
         "--out is a file", "--out not writable", "train --out is a file", "--batch-size 0 (evaluate)",
         "--batch-size 0 (train)", "missing --video", "empty --video", "non-video --video"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(world, case):
    out = world / ("o-" + "".join(ch if ch.isalnum() else "_" for ch in case))
    args, needles = cases(world, out)[case]
    before = tree_digest(world / "results")
    if os.path.exists("/tmp/pwned-by-checkpoint"):
        os.remove("/tmp/pwned-by-checkpoint")
    r = cli(*args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (case, r.returncode, r.stderr[-1500:])
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-1500:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    # No partial output anywhere, and earlier results untouched.
    assert not out.exists() or not [f for _, _, fs in os.walk(out) for f in fs if f != ".lock"]
    assert tree_digest(world / "results") == before
    assert not os.path.exists("/tmp/pwned-by-checkpoint")


def test_malformed_metrics_line_for_analysis(world, tmp_path):
    shutil.copytree(world / "results", tmp_path / "r")
    before = (tmp_path / "r" / "analysis.json").read_bytes()
    with open(tmp_path / "r" / "metrics.jsonl", "a") as fh:
        fh.write("{not json\n")
    r = cli("analyze_logits.py", "--results", str(tmp_path / "r"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "metrics.jsonl" in r.stderr
    assert (tmp_path / "r" / "analysis.json").read_bytes() == before


def test_a_fifo_or_device_as_checkpoint_is_refused_without_hanging(world):
    # evaluate_corruptions.py hashes the checkpoints on a thread while the models load. A FIFO without a writer,
    # or /dev/zero, would block that thread and the exit with it: they must be refused like a missing file,
    # at once, also after a good checkpoint whose hash is under way.
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

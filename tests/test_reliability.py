"""Kill -9 anywhere and lose nothing; one writer per output folder; same arguments, same bytes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from common.checkpoint import read_checkpoint
from helpers import ROOT, cli, digest as digest_tree

TRAIN = ["train.py", "--model", "scribe", "--data", "synthetic", "--backbone", "resnet18", "--head-channels", "8",
         "--crop-size", "32", "--batch-size", "2", "--epochs", "4", "--workers", "0", "--print-freq", "1"]
DUMP = ["dump_voc_c.py", "--data", "synthetic", "--corruptions", "gaussian", "motion", "jpeg", "--severities",
        "1", "3", "5", "--size", "40", "--workers", "2"]


@pytest.fixture(scope="module")
def data(synthetic):
    return synthetic(n_voc_train=3, n_sbd=3, n_val=4)


def descendants(pid):
    """Every live process below ``pid`` (children, grandchildren...), from the ppid column of /proc."""
    parent = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pids):
    """The pids still running (a zombie counts as gone: it has exited)."""
    out = []
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(p)
        except OSError:
            continue
    return out


def kill_when(cmd, ready, timeout=300):
    """Start ``cmd`` and SIGKILL it as soon as ``ready()`` holds (or it exits by itself).

    Returns the processes it had started (the DataLoader's workers) at the moment it was killed.
    """
    p = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline and not ready():
        time.sleep(0.01)
    below = set()
    if p.poll() is None:
        below = descendants(p.pid)
        p.send_signal(signal.SIGKILL)
    p.wait()
    return below


@pytest.mark.slow
def test_train_killed_at_several_points_resumes_to_identical_weights(data, tmp_path):
    straight = cli(*TRAIN, "--synthetic-root", data, "--out", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "b"
    ckpt = out / "scribe" / "checkpoint.pt"
    log = out / "scribe" / "log.jsonl"

    def epochs_logged():
        try:
            return len(open(log).readlines())
        except OSError:
            return 0

    # Mid-epoch, right after the first epoch's log line (before or while its checkpoint is written),
    # and during the third epoch.
    kill_when(TRAIN + ["--synthetic-root", data, "--out", str(out)], lambda: os.path.exists(out / "scribe"))
    kill_when(TRAIN + ["--synthetic-root", data, "--out", str(out), "--resume"], lambda: epochs_logged() >= 1)
    kill_when(TRAIN + ["--synthetic-root", data, "--out", str(out), "--resume"], lambda: epochs_logged() >= 3)
    r = cli(*TRAIN, "--synthetic-root", data, "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    a = read_checkpoint(str(tmp_path / "a" / "scribe" / "checkpoint.pt"))
    b = read_checkpoint(str(ckpt))
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows_a = [json.loads(x) for x in open(tmp_path / "a" / "scribe" / "log.jsonl")]
    rows_b = [json.loads(x) for x in open(log)]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert [r["epoch"] for r in rows_b] == [1, 2, 3, 4]
    assert not [f for f in os.listdir(out / "scribe") if ".tmp-" in f]


@pytest.mark.slow
def test_dump_killed_at_several_points_ends_valid_and_verified(data, tmp_path):
    full = tmp_path / "full"
    assert cli(*DUMP, "--synthetic-root", data, "--out", str(full)).returncode == 0
    out = tmp_path / "killed"

    def n_png(k):
        return lambda: sum(f.endswith(".png") for _, _, fs in os.walk(out) for f in fs) >= k

    orphans = set()
    for k in (1, 9, 20):
        orphans |= kill_when(DUMP + ["--synthetic-root", data, "--out", str(out)], n_png(k))
    # The DataLoader's workers notice the dump's death (their parent is gone) and leave instead of lingering
    # as orphans.
    assert len(orphans) >= 2   # at least one kill caught the DataLoader's two workers
    deadline = time.time() + 10
    while alive(orphans) and time.time() < deadline:
        time.sleep(0.2)
    assert alive(orphans) == []
    r = cli(*DUMP, "--synthetic-root", data, "--out", str(out))
    assert r.returncode == 0, r.stderr
    # Every PNG equals the uninterrupted dump's, byte for byte, and no temporary file is left behind.
    a, b = digest_tree(full), digest_tree(out)
    a.pop("manifest.json"), b.pop("manifest.json")
    assert a == b
    r = cli(*DUMP, "--synthetic-root", data, "--out", str(out), "--verify", "--verify-sample", "36")
    assert r.returncode == 0 and "36 of 36" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_same_arguments_give_identical_bytes(data, tmp_path, tiny_ckpt):
    # Dump: two runs, identical bytes (manifest included, apart from nothing: same commit, same versions).
    for name in ("d1", "d2"):
        assert cli(*DUMP, "--synthetic-root", data, "--out", str(tmp_path / name)).returncode == 0
    assert digest_tree(tmp_path / "d1") == digest_tree(tmp_path / "d2")
    # Evaluation: identical metrics.jsonl apart from the timing column, identical NPZ files.
    ck = tiny_ckpt("ibe", 3)
    ev = ["evaluate_corruptions.py", "--checkpoints", ck, "--data", "synthetic", "--synthetic-root", data,
          "--size", "32", "--workers", "1", "--corruptions", "shot", "zoom", "--severities", "0", "2"]
    for name in ("e1", "e2"):
        assert cli(*ev, "--out", str(tmp_path / name)).returncode == 0

    def rows(name):
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in open(tmp_path / name / "metrics.jsonl")]

    assert rows("e1") == rows("e2")
    ea, eb = digest_tree(tmp_path / "e1"), digest_tree(tmp_path / "e2")
    npz = [k for k in ea if k.endswith(".npz")]
    assert npz and all(ea[k] == eb[k] for k in npz)
    # Training on CPU: identical weights (the resume test above covers training's determinism too).


@pytest.mark.slow
def test_second_writer_is_refused_and_a_stale_lock_is_taken_over(data, tmp_path):
    out = tmp_path / "vocc"
    p = subprocess.Popen([sys.executable, *DUMP, "--synthetic-root", data, "--out", str(out), "--workers", "1"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / ".lock").exists():
            time.sleep(0.01)
        time.sleep(0.2)
        r = cli(*DUMP, "--synthetic-root", data, "--out", str(out))
        if p.poll() is None:  # only meaningful while the first one still runs
            assert r.returncode == 2 and "being written by dump_voc_c.py" in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    # The killed writer's lock file is still there, but its lock died with it: a new run proceeds.
    assert (out / ".lock").exists()
    r = cli(*DUMP, "--synthetic-root", data, "--out", str(out))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("durable", [True, False])
def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, durable, monkeypatch):
    from common.folders import atomic_write

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))

    def half_then_fail(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(target), half_then_fail, durable=durable)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    def whole(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"new")

    atomic_write(str(target), whole, durable=durable)
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.bin"]
    assert len(synced) == (1 if durable else 0)   # only the durable write pays an fsync

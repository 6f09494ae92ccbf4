"""Full and read-only disks, Ctrl-C and SIGTERM, non-finite models, two processes on one folder, and the data
reached by another path: each through the real command lines, each one line and a documented exit status.

Disks: every script that writes is run with its writes refused by the OS (an injected OSError(ENOSPC / EROFS) on
the rename that publishes a file, which needs no privileges), and on a real small tmpfs (full, or remounted
read-only) where this process may mount one (root; CI runs as root): exit 2, one ``error:`` line naming the path
and the cause, the files there before intact, no temporary file left.
"""
import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import analyze_logits as al
import dump_voc_c
import evaluate_corruptions as ev
import import_checkpoint
import make_figures as mf
import make_video as mv
import train
from common.checkpoint import read_checkpoint, save_checkpoint
from common.cli import Terminated, UsageError, run_cli
from common.folders import OutputLock, atomic_write
from helpers import ROOT, TINY_TRAIN, assert_same_results, digest, result_rows as rows, run_script

SIZE = "32"
CONDS = ["--corruptions", "gaussian", "--severities", "0", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, synthetic, tiny_ckpt):
    d = tmp_path_factory.mktemp("failures")
    root = synthetic(n_voc_train=4, n_sbd=2, n_val=3, max_side=64)
    ck = {"a": tiny_ckpt("baseline", 1), "b": tiny_ckpt("scribe", 2)}
    results = d / "results"
    assert run_script(ev, *sweep_argv(root, ck, results)) == 0
    assert run_script(al, "--results", results, "--bootstrap", "0") == 0
    return {"dir": d, "root": root, "ck": ck, "results": results}


def sweep_argv(root, ck, out, *extra):
    return ["--checkpoints", ck["a"], ck["b"], "--data", "synthetic", "--synthetic-root", root, "--size", SIZE,
            "--batch-size", "4", "--workers", "0", "--out", out, *CONDS, *extra]


def temps(folder):
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if ".tmp-" in f]


def exits_with_one_line(capture, module, *argv, status=2):
    """Run ``module``'s command line in-process; check its exit status and that stderr is one line; the line."""
    capture.readouterr()
    got = run_script(module, *argv)
    err = capture.readouterr().err.strip().splitlines()
    assert got == status and len(err) == 1 and "Traceback" not in err[0], (got, err[-20:])
    return err[0]


# --------------------------------------------------------------------------- every script that writes

def writers(world, where):
    """{name: (module, argv)}: each script writing into the folder ``where`` (one file or folder in it)."""
    w, root, ck = where, world["root"], world["ck"]
    state = world["dir"] / "state.pth"
    ckpt = read_checkpoint(ck["a"])
    if not state.exists():
        torch.save(ckpt["model"], state)
    cfg = ckpt["model_config"]
    shape = ["--arch", cfg["arch"], "--backbone", cfg["backbone"], "--output-stride", str(cfg["output_stride"]),
             "--head-channels", str(cfg["head_channels"])]
    return {
        "train": (train, [*TINY_TRAIN, "--model", "baseline", "--synthetic-root", root, "--epochs", "1",
                          "--out", w / "runs"]),
        "sweep": (ev, sweep_argv(root, ck, w / "results")),
        "save-predictions": (ev, sweep_argv(root, ck, w.parent / "res", "--save-predictions", w / "preds")),
        "synthetic-root": (ev, sweep_argv(w / "syn", ck, w.parent / "res")),
        "dump": (dump_voc_c, ["--data", "synthetic", "--synthetic-root", root, "--size", SIZE, "--corruptions",
                              "jpeg", "--severities", "1", "--out", w / "vocc"]),
        "analyze_logits": (al, ["--results", world["results"], "--bootstrap", "0", "--out", w / "analysis"]),
        "make_figures": (mf, ["--results", world["results"], "--out", w / "figures", "--only", "miou_vs_severity"]),
        "make_video": (mv, ["--synthetic", "--frames", "3", "--baseline", ck["a"], "--robust", ck["b"], "--size",
                            SIZE, "--device", "cpu", "--out", w / "demo.mp4"]),
        "import_checkpoint": (import_checkpoint, ["--state-dict", state, *shape, "--out", w / "imported.pt"]),
    }


SCRIPTS = ["train", "sweep", "save-predictions", "synthetic-root", "dump", "analyze_logits", "make_figures",
           "make_video", "import_checkpoint"]
CAUSES = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only"}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_every_writer_refused_by_the_disk_is_one_line_naming_the_path(world, tmp_path, monkeypatch, capfd, script,
                                                                    code):
    """An OSError on the rename that publishes each file into ``where`` (what a full or read-only disk raises
    on a write); synthetic-root: on the one that installs the generated set."""
    where = tmp_path / "w"
    module, argv = writers(world, where)[script]

    def refusing(real):
        def rename(src, dst, *a, **k):
            if str(dst).startswith(str(where)):
                raise OSError(code, os.strerror(code), str(src))
            return real(src, dst, *a, **k)
        return rename

    monkeypatch.setattr(os, "replace", refusing(os.replace))
    monkeypatch.setattr(os, "rename", refusing(os.rename))
    line = exits_with_one_line(capfd, module, *argv)
    assert line.startswith("error: ") and CAUSES[code] in line and str(where) in line, line
    assert ".tmp-" not in line.split(":")[1]   # the file the user asked for, not a temporary name
    assert not where.exists() or temps(where) == []


def mount_tmpfs(path, size):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:80]}); the injected errors above cover it")
    return path


@pytest.fixture
def disk(tmp_path):
    """``disk(size)``: a fresh tmpfs of that size under tmp_path, unmounted after the test."""
    mounted = []

    def make(size, name="disk"):
        mounted.append(mount_tmpfs(tmp_path / name, size))
        return mounted[-1]

    yield make
    for p in reversed(mounted):
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


def fill(folder, leave=0):
    """Write a filler file until ``folder``'s file system has about ``leave`` bytes free."""
    st = os.statvfs(folder)
    with open(os.path.join(folder, "filler"), "wb") as fh:
        try:
            fh.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))
            fh.flush()
        except OSError:
            pass


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_writer_on_an_already_full_disk(world, disk, capfd, script):
    where = disk("2m")
    module, argv = writers(world, where)[script]
    fill(where)
    before = digest(where)
    line = exits_with_one_line(capfd, module, *argv)
    assert "no space left on the device" in line and str(where) in line, line
    assert temps(where) == [] and {k: v for k, v in digest(where).items() if k == "filler"} == before


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_writer_on_a_read_only_disk(world, disk, capfd, script):
    where = disk("4m")
    module, argv = writers(world, where)[script]
    (where / "kept.txt").write_text("earlier output\n")
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    line = exits_with_one_line(capfd, module, *argv)
    assert ("read-only" in line.lower() or "not writable" in line) and str(where) in line, line
    assert digest(where) == {"kept.txt": hashlib.sha256(b"earlier output\n").hexdigest()}


def test_train_checkpoint_save_on_a_full_disk_keeps_the_last_good_one(world, disk, tmp_path, capfd):
    """torch.save's own writer reports a full disk as ``RuntimeError: ... unexpected pos``: the line says the disk
    is full and names checkpoint.pt, whose previous epoch stays loadable."""
    argv = [*TINY_TRAIN, "--model", "baseline", "--synthetic-root", world["root"], "--val-every", "0"]
    assert run_script(train, *argv, "--epochs", "1", "--out", tmp_path / "ref") == 0
    size = os.path.getsize(tmp_path / "ref" / "baseline" / "checkpoint.pt")
    where = disk(f"{size * 3 // 2 // 4096 * 4096}")   # room for one checkpoint, not for its replacement beside it
    line = exits_with_one_line(capfd, train, *argv, "--epochs", "2", "--out", where)
    ckpt = where / "baseline" / "checkpoint.pt"
    assert line == (f"error: cannot write {ckpt}: no space left on the device; free space or choose a writable place "
                    f"(--out) and run the same command again (files written before are intact)")
    assert read_checkpoint(str(ckpt))["epoch"] == 0 and temps(where) == []   # epoch 1 (0-based), intact


def test_sweep_filling_the_disk_mid_run_keeps_finished_conditions_and_resumes(world, disk, tmp_path, capfd):
    straight = world["results"]
    where = disk("1m")
    # run.json, the lock and clean/0's NPZ files fit (their size in the uninterrupted run, plus 40 KB); gaussian/1's
    # do not.
    first = [os.path.join(d, f) for d, _, fs in os.walk(straight) for f in fs if f == "clean_0.npz" or f == "run.json"]
    fill(where, leave=sum(os.path.getsize(p) for p in first) + 40_000)
    out = where / "r"
    line = exits_with_one_line(capfd, ev, *sweep_argv(world["root"], world["ck"], out))
    assert "no space left on the device" in line and str(out) in line and temps(where) == []
    done = rows(out)
    assert done and done == rows(straight)[:len(done)]
    os.remove(where / "filler")
    assert run_script(ev, *sweep_argv(world["root"], world["ck"], out)) == 0
    assert_same_results(out, straight)


def test_analysis_on_a_full_disk_leaves_the_earlier_analysis(world, disk, capfd):
    where = disk("2m")
    out = where / "analysis"
    shutil.copytree(world["results"], out, ignore=shutil.ignore_patterns(".lock", "logits", "confusion"))
    before = digest(out)
    fill(where)
    line = exits_with_one_line(capfd, al, "--results", world["results"], "--bootstrap", "0", "--out", out)
    assert "no space left on the device" in line and str(out) in line
    assert digest(out) == before and temps(where) == []


# ----------------------------------------------------------------------------------- injected errors, units

@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "permission denied")])
def test_atomic_write_refused_by_the_disk_names_the_file_and_keeps_the_old_one(tmp_path, code, words):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def half_then_refused(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"new, half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(UsageError) as e:
        atomic_write(str(target), half_then_refused)
    assert str(e.value).startswith(f"cannot write {target}: ") and words in str(e.value)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_torch_save_on_a_full_disk_says_so(tmp_path, monkeypatch):
    """torch.save raises RuntimeError('... unexpected pos ...') without an errno: asked, the disk says it is full."""
    import common.folders as folders

    monkeypatch.setattr(torch, "save", lambda obj, f: (f.write(b"x"),
                                                       (_ for _ in ()).throw(RuntimeError("unexpected pos 64 vs 0"))))
    monkeypatch.setattr(folders, "disk_is_full", lambda path: True)
    with pytest.raises(UsageError, match="no space left on the device"):
        save_checkpoint(str(tmp_path / "c.pt"), {})
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(folders, "disk_is_full", lambda path: False)   # not full: a RuntimeError stays a bug
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save_checkpoint(str(tmp_path / "c.pt"), {})


def test_the_lock_file_refused_by_the_disk(tmp_path, monkeypatch):
    import builtins

    real = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system", p)) if str(p).endswith(".lock") else real(p, *a, **k))
    with pytest.raises(UsageError, match=r"cannot write .*\.lock: the file system is read-only"):
        OutputLock(str(tmp_path), "x").__enter__()


class Parser:
    def parse_args(self):
        return None


@pytest.mark.parametrize("exc, status, words", [
    (KeyboardInterrupt(), 130, "interrupted (Ctrl-C): every finished file is kept"),
    (Terminated(), 143, "terminated (SIGTERM): every finished file is kept"),
    (OSError(errno.ENOSPC, "No space left on device", "/x/y.npz"), 2, "error: cannot write /x/y.npz: no space left"),
    (OSError(errno.EROFS, "Read-only file system", "/x"), 2, "error: cannot write /x: the file system is read-only"),
])
def test_run_cli_turns_interrupts_and_refused_writes_into_one_line(capsys, exc, status, words):
    def main(args):
        raise exc

    with pytest.raises(SystemExit) as e:
        run_cli(main, Parser())
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == status and len(err) == 1 and err[0].startswith(words), err
    assert signal.getsignal(signal.SIGTERM) is not None   # restored
    other = OSError(errno.ENOENT, "No such file or directory", "/x")   # not a disk's refusal: a bug, a traceback

    def main2(args):
        raise other

    with pytest.raises(OSError):
        run_cli(main2, Parser())


@pytest.mark.parametrize("exc, status", [(Terminated(), 143), (KeyboardInterrupt(), 130)])
def test_a_signal_python_drops_in_a_callback_is_delivered_again(capsys, exc, status):
    """A signal that lands in a weakref callback (an import's, say) raises there, where Python ignores exceptions:
    run_cli sends it again, so the run still stops (it went on to the end with exit 0 before)."""
    import weakref

    def main(args):
        class X:
            pass

        def callback(ref):
            raise exc

        x = X()
        ref = weakref.ref(x, callback)   # noqa: F841
        del x
        for _ in range(200):
            time.sleep(0.01)
        return 0

    saved = signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal, even under nohup
    try:
        with pytest.raises(SystemExit) as e:
            run_cli(main, Parser())
    finally:
        signal.signal(signal.SIGINT, saved)
    assert e.value.code == status


# ------------------------------------------------------------------------------------------ Ctrl-C, SIGTERM

def test_sweep_interrupted_between_conditions_reruns_to_the_same_results(world, tmp_path, monkeypatch, capfd):
    out = tmp_path / "r"
    real = ev.write_condition
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:   # the first model of the second condition: clean/0 is finished
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ev, "write_condition", interrupted)
    line = exits_with_one_line(capfd, ev, *sweep_argv(world["root"], world["ck"], out), status=130)
    assert line.startswith("interrupted (Ctrl-C): ") and "the same command continues" in line
    assert len(rows(out)) == 2 and temps(out) == []
    monkeypatch.undo()
    assert run_script(ev, *sweep_argv(world["root"], world["ck"], out)) == 0
    assert_same_results(out, world["results"])


def test_dump_interrupted_writing_a_png_reruns_to_the_same_files(world, tmp_path, monkeypatch, capfd):
    argv = ["--data", "synthetic", "--synthetic-root", world["root"], "--size", SIZE, "--corruptions", "jpeg",
            "shot", "--severities", "1", "--out"]
    assert run_script(dump_voc_c, *argv, tmp_path / "straight") == 0
    import common.vocc as vocc

    real, calls = vocc.atomic_write, []

    def interrupted(path, write, durable=True):
        calls.append(path)
        if len(calls) == 5:
            def half(tmp):
                open(tmp, "wb").write(b"half a png")
                raise KeyboardInterrupt
            return real(path, half, durable)
        return real(path, write, durable)

    monkeypatch.setattr(vocc, "atomic_write", interrupted)
    out = tmp_path / "cut"
    exits_with_one_line(capfd, dump_voc_c, *argv, out, status=130)
    assert temps(out) == []
    monkeypatch.undo()
    assert run_script(dump_voc_c, *argv, out) == 0
    assert digest(out) == digest(tmp_path / "straight")


def test_train_interrupted_while_saving_resumes_to_identical_weights(world, tmp_path, monkeypatch, capfd):
    argv = [*TINY_TRAIN, "--model", "ibe", "--synthetic-root", world["root"], "--epochs", "3", "--val-every", "0"]
    assert run_script(train, *argv, "--out", tmp_path / "straight") == 0
    import common.checkpoint as checkpoint

    real, saves = checkpoint.torch.save, []

    def interrupted(obj, f):
        saves.append(f)
        real(obj, f)
        if len(saves) == 2:   # epoch 2's checkpoint, whole under its temporary name: Ctrl-C before the rename
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    out = tmp_path / "cut"
    exits_with_one_line(capfd, train, *argv, "--out", out, status=130)
    monkeypatch.undo()
    assert temps(out) == [] and read_checkpoint(str(out / "ibe" / "checkpoint.pt"))["epoch"] == 0
    assert run_script(train, *argv, "--out", out, "--resume") == 0
    a = read_checkpoint(str(tmp_path / "straight" / "ibe" / "checkpoint.pt"))
    b = read_checkpoint(str(out / "ibe" / "checkpoint.pt"))
    assert a["epoch"] == b["epoch"] == 2 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [json.loads(x)["loss"] for x in open(tmp_path / "straight" / "ibe" / "log.jsonl")] == \
        [json.loads(x)["loss"] for x in open(out / "ibe" / "log.jsonl")]


def signal_when(cmd, ready, sig, timeout=300):
    """Start ``cmd``, send it ``sig`` as soon as ``ready()`` holds; (exit status, stderr lines)."""
    # SIGINT as a terminal sends it: a shell's background job starts with it ignored, and Python then never
    # raises KeyboardInterrupt; restore the default in the child first.
    p = subprocess.Popen([sys.executable, *map(str, cmd)], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline and not ready():
        time.sleep(0.01)
    if p.poll() is None:
        p.send_signal(sig)
    err = p.communicate(timeout=120)[1]
    return p.returncode, err.strip().splitlines()


TRAIN_CLI = ["train.py", "--model", "scribe", *TINY_TRAIN, "--epochs", "3", "--val-every", "0"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, status, words", [(signal.SIGINT, 130, "interrupted (Ctrl-C): "),
                                                (signal.SIGTERM, 143, "terminated (SIGTERM): ")])
def test_train_signalled_at_several_points_says_what_it_kept_and_resumes_identically(world, tmp_path, sig, status,
                                                                                     words):
    data = world["root"]
    straight = tmp_path / "a"
    r = subprocess.run([sys.executable, *TRAIN_CLI, "--synthetic-root", data, "--out", str(straight)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "b"
    log = out / "scribe" / "log.jsonl"

    def logged(k):
        return lambda: os.path.exists(log) and len(open(log).readlines()) >= k

    # Before any epoch, right after the first epoch's log line (while its checkpoint is written), mid-epoch 3.
    got = signal_when([*TRAIN_CLI, "--synthetic-root", data, "--out", out], lambda: os.path.exists(out / "scribe"),
                      sig)
    assert got[0] == status and len(got[1]) == 1 and got[1][0].startswith(words), got
    for k in (1, 2):
        got = signal_when([*TRAIN_CLI, "--synthetic-root", data, "--out", out, "--resume"], logged(k), sig)
        if got[0] == 0:   # it finished first: nothing to check at this point
            continue
        assert got[0] == status and len(got[1]) == 1 and got[1][0].startswith(words), got
        kept = out / "scribe" / "checkpoint.pt"
        assert ("holds the last finished epoch; run the same command again" in got[1][0]) == kept.exists(), got
        assert temps(out) == []
    r = subprocess.run([sys.executable, *TRAIN_CLI, "--synthetic-root", data, "--out", str(out), "--resume"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a = read_checkpoint(str(straight / "scribe" / "checkpoint.pt"))
    b = read_checkpoint(str(out / "scribe" / "checkpoint.pt"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and temps(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sweep_signalled_mid_run_reruns_to_the_same_results(world, tmp_path, sig, status):
    out = tmp_path / "r"
    cmd = ["evaluate_corruptions.py", *sweep_argv(world["root"], world["ck"], out, "--workers", "1")]
    got = signal_when(cmd, lambda: os.path.exists(out / "metrics.jsonl"), sig)
    assert got[0] in (0, status) and (got[0] == 0 or len(got[1]) == 1), got
    assert temps(out) == []
    r = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_same_results(out, world["results"])


@pytest.mark.slow
def test_synthetic_generation_terminated_leaves_no_temporary_folder(tmp_path):
    root = tmp_path / "syn"
    cmd = ["-m", "common.synthetic", "--root", root, "--n-voc-train", "60", "--n-sbd", "60", "--n-val", "30"]
    got = signal_when(cmd, lambda: any(".tmp-" in f for f in os.listdir(tmp_path)), signal.SIGTERM)
    assert got[0] == 143 and len(got[1]) == 1 and got[1][0].startswith("terminated (SIGTERM): "), got
    assert os.listdir(tmp_path) == []


def test_stale_temporary_files_are_removed_on_start(world, tmp_path):
    from common import synthetic

    # A generation SIGKILLed on this host (its pid is gone): removed by the next one at once, not after an hour.
    parent = tmp_path / "data"
    parent.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = parent / f"syn.tmp-{os.uname().nodename}-{dead.pid}-abc"
    stale.mkdir()
    synthetic.ensure_synthetic(parent / "syn", n_voc_train=1, n_sbd=1, n_val=1, max_side=64, quiet=True)
    assert sorted(os.listdir(parent)) == ["syn"]
    # A checkpoint's temporary file from a killed train.py: removed when the next run takes the folder.
    run = tmp_path / "runs" / "baseline"
    run.mkdir(parents=True)
    (run / "checkpoint.pt.tmp-99999999").write_bytes(b"half")
    assert run_script(train, *TINY_TRAIN, "--model", "baseline", "--synthetic-root", world["root"], "--epochs", "1",
                      "--val-every", "0", "--out", tmp_path / "runs") == 0
    assert temps(run) == []


# ------------------------------------------------------------------------------------ non-finite models

def poisoned(src, dst, key_part):
    """A copy of checkpoint ``src`` with one NaN in the first tensor whose name contains ``key_part``."""
    ckpt = read_checkpoint(src)
    key = next(k for k in ckpt["model"] if key_part in k)
    ckpt["model"][key] = ckpt["model"][key].clone()
    ckpt["model"][key].view(-1)[0] = float("nan")
    torch.save(ckpt, dst)
    return str(dst), key


class NaNNet(nn.Module):
    """Finite weights, NaN logits: its forward divides zero by zero."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 21, 1)

    def forward(self, x):
        out = self.conv(x)
        return out * 0 / 0


def nan_factory():
    torch.manual_seed(0)
    return NaNNet()


def refused_by_every_model_script(world, tmp_path, capfd, spec, expect):
    """The sweep, the video and the figures each refuse the model ``spec`` with one line holding ``expect``."""
    for module, argv in (
            (ev, ["--checkpoints", spec, "--data", "synthetic", "--synthetic-root", world["root"], "--size", SIZE,
                  "--workers", "0", "--out", tmp_path / "r", *CONDS]),
            (mv, ["--synthetic", "--frames", "3", "--baseline", spec, "--robust", world["ck"]["b"], "--size", SIZE,
                  "--device", "cpu", "--out", tmp_path / "v.mp4"]),
            (mf, ["--results", world["results"], "--checkpoints", spec, "--out", tmp_path / "f", "--only",
                  "voc_sample"])):
        line = exits_with_one_line(capfd, module, *argv)
        assert expect in line, line


@pytest.mark.parametrize("where", ["backbone.conv1.weight", "running_var"])
def test_a_checkpoint_with_a_nan_is_refused_at_load_by_every_script(world, tmp_path, capfd, where):
    bad, key = poisoned(world["ck"]["a"], tmp_path / "nan.pt", where)
    refused_by_every_model_script(world, tmp_path, capfd, bad, f"checkpoint {bad}: {key} holds NaN or infinite values")
    assert sorted(os.listdir(tmp_path)) == ["nan.pt"]


def test_a_model_whose_logits_are_nan_is_refused_at_its_first_batch(world, tmp_path, capfd, monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    spec = "test_failure_modes:nan_factory"
    refused_by_every_model_script(world, tmp_path, capfd, spec,
                                  f"model nan_factory ({spec}): its logits hold NaN or infinite values")
    assert not os.path.exists(tmp_path / "r" / "metrics.jsonl") and not os.path.exists(tmp_path / "v.mp4")
    assert not os.path.exists(tmp_path / "f" / "voc_sample.png")


class LaterNaNNet(NaNNet):
    """Finite logits for its first two forwards (the load's probe, the first batch), NaN from the third on."""

    calls = 0

    def forward(self, x):
        LaterNaNNet.calls += 1
        out = self.conv(x)
        return out if LaterNaNNet.calls <= 2 else out * 0 / 0


def later_nan_factory():
    torch.manual_seed(0)
    LaterNaNNet.calls = 0
    return LaterNaNNet()


def test_the_sweep_refuses_nan_logits_in_a_later_batch_naming_the_condition(world, tmp_path, capfd, monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    spec = "test_failure_modes:later_nan_factory"
    line = exits_with_one_line(capfd, ev, "--checkpoints", spec, "--data", "synthetic", "--synthetic-root",
                               world["root"], "--size", SIZE, "--workers", "0", "--out", tmp_path / "r", *CONDS,
                               "--calibration-images", "0")   # no temperature fit: the factory counts forwards
    assert f"model later_nan_factory ({spec}): its logits hold NaN or infinite values at gaussian_noise/1" in line
    assert [r["corruption"] for r in rows(tmp_path / "r")] == ["clean"]   # the finished condition is kept


def test_import_checkpoint_refuses_non_finite_weights(world, tmp_path, capfd):
    state = read_checkpoint(world["ck"]["a"])["model"]
    key = next(k for k in state if "running_mean" in k)
    state[key] = state[key].clone().fill_(float("inf"))
    torch.save(state, tmp_path / "bad.pth")
    cfg = read_checkpoint(world["ck"]["a"])["model_config"]
    line = exits_with_one_line(capfd, import_checkpoint, "--state-dict", tmp_path / "bad.pth", "--arch", cfg["arch"],
                               "--backbone", cfg["backbone"], "--output-stride", str(cfg["output_stride"]),
                               "--head-channels", str(cfg["head_channels"]), "--out", tmp_path / "x.pt")
    assert f"{key} holds NaN or infinite values" in line and not os.path.exists(tmp_path / "x.pt")


# ---------------------------------------------------------------------------------- check-then-act races

def test_train_started_while_another_finishes_does_not_replace_its_checkpoint(world, tmp_path, monkeypatch, capfd):
    """The second run checks (no checkpoint yet), then the first writes its checkpoint and log, then the second
    takes the folder's lock: made deterministic by writing the first run's files between the two steps."""
    first = tmp_path / "first"
    argv = [*TINY_TRAIN, "--model", "baseline", "--synthetic-root", world["root"], "--epochs", "1", "--val-every", "0"]
    assert run_script(train, *argv, "--out", first) == 0
    out = tmp_path / "runs"
    from common import training_sets
    real = training_sets.resolve_roots

    def first_run_finishes_meanwhile(*a, **k):
        shutil.copytree(first, out)
        return real(*a, **k)

    monkeypatch.setattr(training_sets, "resolve_roots", first_run_finishes_meanwhile)
    line = exits_with_one_line(capfd, train, *argv, "--out", out)
    assert "checkpoint.pt was written by another train.py while this one started" in line
    assert digest(out) == digest(first)
    # With --resume the same: the checkpoint read before the lock was replaced by the time the lock was held.
    shutil.rmtree(out)
    shutil.copytree(first, out)
    monkeypatch.setattr(training_sets, "resolve_roots", lambda *a, **k: (
        os.utime(out / "baseline" / "checkpoint.pt", ns=(1, 1)), real(*a, **k))[1])
    line = exits_with_one_line(capfd, train, *argv, "--out", out, "--resume")
    assert "changed while this run started" in line


@contextlib.contextmanager
def held_by_another_process(folder, what):
    """``folder``'s writer lock held by a second process (POSIX locks are per process: this one could take it
    again), as a running sweep holds it; yields that process's pid."""
    code = ("import sys, time; from common.folders import OutputLock\n"
            "with OutputLock(sys.argv[1], sys.argv[2]):\n    print('held', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder), what], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        yield p.pid
    finally:
        p.kill()
        p.wait()


def test_save_predictions_folder_held_by_another_sweep_is_refused(world, tmp_path, capfd):
    preds = tmp_path / "preds"
    preds.mkdir()
    with held_by_another_process(preds, "evaluate_corruptions.py --save-predictions") as pid:
        line = exits_with_one_line(capfd, ev, *sweep_argv(world["root"], world["ck"], tmp_path / "r",
                                                          "--save-predictions", preds))
    assert f"{preds} is being written by evaluate_corruptions.py --save-predictions (pid {pid})" in line
    assert os.listdir(preds) == [".lock"]


def test_analysis_into_a_folder_a_sweep_holds_is_refused(world, tmp_path, capfd):
    res = tmp_path / "res"
    shutil.copytree(world["results"], res, ignore=shutil.ignore_patterns(".lock"))
    before = digest(res)
    with held_by_another_process(res, "evaluate_corruptions.py"):
        line = exits_with_one_line(capfd, al, "--results", res, "--bootstrap", "0")
    assert f"{res} is being written by evaluate_corruptions.py" in line and digest(res) == before


def test_figures_refuse_tables_older_than_the_results(world, tmp_path, capfd):
    res = tmp_path / "res"
    shutil.copytree(world["results"], res, ignore=shutil.ignore_patterns(".lock"))
    assert run_script(mf, "--results", res, "--out", tmp_path / "f1", "--only", "class_means") == 0
    # The sweep goes on after the analysis (one more condition): the analysis is now stale.
    assert run_script(ev, *sweep_argv(world["root"], world["ck"], res, "--corruptions", "shot")) == 0
    line = exits_with_one_line(capfd, mf, "--results", res, "--out", tmp_path / "f2", "--only", "class_means")
    assert "computed from an older" in line and "analyze_logits.py --results" in line
    assert run_script(al, "--results", res, "--bootstrap", "0") == 0
    assert run_script(mf, "--results", res, "--out", tmp_path / "f2", "--only", "class_means") == 0


# ----------------------------------------------------------------- the same data through another path

def test_a_symlinked_or_copied_data_root_is_the_same_run(world, tmp_path):
    link = tmp_path / "link"
    os.symlink(world["root"], link)
    copied = tmp_path / "scratch-copy"
    shutil.copytree(world["root"], copied)
    out = tmp_path / "r"
    assert run_script(ev, *sweep_argv(str(link), world["ck"], out)) == 0
    before = digest(out, skip=(".lock", "metrics.jsonl", "run.json"))
    for root in (world["root"], str(copied), str(link)):
        assert run_script(ev, *sweep_argv(root, world["ck"], out, "--corruptions", "shot")) == 0
    assert {k: v for k, v in digest(out).items() if k in before} == before   # nothing recomputed
    assert [r["corruption"] for r in rows(out)].count("shot_noise") == 2

    dump = ["--data", "synthetic", "--size", SIZE, "--corruptions", "jpeg", "--severities", "1", "--out",
            tmp_path / "vocc"]
    assert run_script(dump_voc_c, *dump, "--synthetic-root", link) == 0
    for root in (world["root"], str(copied)):
        assert run_script(dump_voc_c, *dump, "--synthetic-root", root) == 0
    # and the sweep reads that dump through the real path
    assert run_script(ev, *sweep_argv(world["root"], world["ck"], tmp_path / "r2", "--voc-c", tmp_path / "vocc",
                                      "--corruptions", "jpeg")) == 0


def test_records_compare_the_data_digest_not_the_path(tmp_path):
    from common import results

    old = {"voc_root": str(tmp_path / "voc"), "data": "synthetic", "data_sha256": "a" * 64}
    # The same files read through another path (a symlink, a copy on scratch): the same run.
    assert results.first_difference(old, {**old, "voc_root": str(tmp_path / "copy")}) is None
    # Other files under the same path: another run, said by the digest.
    assert results.first_difference(old, {**old, "data_sha256": "b" * 64})[0] == "data_sha256"

"""evaluate_corruptions.py over several processes (torchrun, common/distributed.py) and in SLURM arrays
(--shard auto), against the single-process sweep of the same images: the same files, and one error line.

The oracle is the single-process run: metrics.jsonl equal field by field (timing aside), every integer array and
every per-image row of the NPZ files equal exactly, the float64 logit moments and END sums to 1e-12 of the
array's largest entry (they are added per rank, then across ranks: another order of the same float64 sums).
"""
import contextlib
import glob
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import evaluate_corruptions as ev
from common import distributed
from common.cli import UsageError, run_cli
from helpers import ROOT, cli

SIZE = 40
N_IMAGES = 6
CONDS = ["--corruptions", "gaussian", "shot", "jpeg", "pixelate", "--severities", "0", "1"]   # 5 conditions
MODELS = ("baseline", "scribe")
# float64 sums added in another order (per rank, then across ranks): equal to this fraction of the largest entry
FLOAT_SUMS = {("logits", "sum"), ("logits", "sq"), ("logits", "end_sum")}
REL = 1e-12


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic, tiny_ckpt):
    d = tmp_path_factory.mktemp("dist")
    root = synthetic(n_val=N_IMAGES, max_side=64)
    return {"root": root, "ckpts": [tiny_ckpt("baseline", 1), tiny_ckpt("scribe", 2)], "dir": d}


def argv(setup, out, *extra):
    return ["--checkpoints", *setup["ckpts"], "--data", "synthetic", "--synthetic-root", setup["root"],
            "--size", str(SIZE), "--batch-size", "2", "--workers", "0", "--out", str(out), *CONDS, *extra]


def evaluate(setup, out, *extra):
    # One thread, like every rank (torchrun's workers get OMP_NUM_THREADS=1): CPU convolutions round
    # differently with another thread count, and the comparisons are about the ranks' reduction, not that.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ev.main(ev.get_args_parser().parse_args(argv(setup, out, *extra)))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(setup):
    out = setup["dir"] / "reference"
    evaluate(setup, out, "--save-predictions", str(setup["dir"] / "reference_preds"))
    return out


def rows(out, drop=("seconds",)):
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in open(os.path.join(out, "metrics.jsonl"))]


def assert_same_results(out, ref, drop=("seconds",)):
    a, b = rows(out, drop), rows(ref, drop)
    assert len(a) == len(b) == len(MODELS) * 5
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if k in ("distance", "distance_predicted", "end"):   # from the float64 sums
                assert x[k] == pytest.approx(y[k], rel=REL), k
            else:
                assert x[k] == y[k], (k, x["model"], x["corruption"])
    files = sorted(os.path.relpath(f, ref) for f in glob.glob(os.path.join(ref, "*", "*", "*.npz")))
    assert len(files) == 2 * len(MODELS) * 5
    assert files == sorted(os.path.relpath(f, out) for f in glob.glob(os.path.join(out, "*", "*", "*.npz")))
    for f in files:
        x, y = np.load(os.path.join(out, f)), np.load(os.path.join(ref, f))
        assert sorted(x.files) == sorted(y.files)
        for k in y.files:
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, (f, k)
            if (f.split(os.sep)[0], k) in FLOAT_SUMS:
                assert np.abs(x[k] - y[k]).max() <= REL * np.abs(y[k]).max(), (f, k)
            else:   # counts, image ids, per-image TP/FP/FN, calibration bins and per-image rows: exactly
                assert np.array_equal(x[k], y[k]), (f, k)


def same_files(a, b):
    fa = sorted(os.path.relpath(f, a) for f in glob.glob(os.path.join(a, "**", "*.png"), recursive=True))
    assert fa and fa == sorted(os.path.relpath(f, b) for f in glob.glob(os.path.join(b, "**", "*.png"), recursive=True))
    return all(open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read() for f in fa)


# --------------------------------------------------------------------------------- torchrun itself

def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "evaluate_corruptions.py", *args]


def children(pid):
    """The pids of a process's children (torchrun's workers), from /proc."""
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            kids += [int(x) for x in open(f"/proc/{pid}/task/{task}/children").read().split()]
    return kids


@pytest.mark.slow
def test_torchrun_killed_and_rerun_gives_the_single_process_files(setup, reference, tmp_path):
    out, preds = tmp_path / "torchrun", tmp_path / "preds"
    cmd = torchrun(*argv(setup, out, "--save-predictions", str(preds)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    metrics = out / "metrics.jsonl"
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers, deadline = [], time.time() + 300
    # SIGKILL torchrun and both workers (a node lost, scancel -9) once the first condition is written.
    while time.time() < deadline and p.poll() is None:
        if len(workers) < 2:
            workers = children(p.pid)
        if metrics.exists() and len(open(metrics).readlines()) >= len(MODELS):
            break
        time.sleep(0.005)
    assert p.poll() is None and len(workers) == 2, p.stderr.read()[-3000:] if p.poll() is not None else workers
    for pid in workers + [p.pid]:
        os.kill(pid, signal.SIGKILL)
    p.wait()
    written = len(open(metrics).readlines())
    assert len(MODELS) <= written < len(MODELS) * 5     # killed mid-sweep, not after it
    # The rerun, under torchrun again, does what is left; the files are one process's.
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"({written // len(MODELS)} conditions already done)" in r.stdout
    assert r.stdout.count("git commit:") == 1          # rank 0 alone prints
    assert_same_results(out, reference)
    assert same_files(preds, setup["dir"] / "reference_preds")    # predictions of both ranks, written by rank 0
    assert not glob.glob(str(out / "**" / "*.tmp-*"), recursive=True)


@pytest.mark.slow
def test_torchrun_with_more_processes_than_batches_is_one_line(setup, tmp_path):
    # 1 image, 2 processes: every rank refuses, rank 0 prints the line once and all exit 2; torchrun then
    # adds its own report (a ChildFailedError traceback of run.py, naming a worker with "exitcode  : 2") and
    # returns 1.
    out = tmp_path / "none"
    r = cli(*torchrun(*argv(setup, out, "--limit", "1"))[1:], env=dict(os.environ, OMP_NUM_THREADS="1"))
    ours = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert ours == ["error: torchrun: 2 processes (WORLD_SIZE) for 1 batch(es) of --batch-size 2 (1 images); every "
                    "process needs at least one: launch at most 1 (--nproc_per_node x --nnodes) or lower --batch-size"]
    assert r.returncode == 1 and "ChildFailedError" in r.stderr and "exitcode  : 2" in r.stderr
    assert "evaluate_corruptions.py\", line" not in r.stderr     # no traceback of ours
    assert not out.exists()


# ------------------------------------------------------------- two ranks in forked processes

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, port, args, logdir, failing_rank, fail_at):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    torch.set_num_threads(1)
    sys.stdout = open(os.path.join(logdir, f"out{rank}"), "w", buffering=1)
    sys.stderr = open(os.path.join(logdir, f"err{rank}"), "w", buffering=1)
    if rank == failing_rank:   # a refusal on this rank only, while it reads the images of condition fail_at
        real = ev.ConditionImages.__getitem__

        def broken(self, k):
            if k // len(self.indices) == fail_at:
                raise UsageError("VOC-C/shot_noise/1/x.png: damaged; dump it again")
            return real(self, k)
        ev.ConditionImages.__getitem__ = broken
    sys.argv = ["evaluate_corruptions.py", *args]
    try:
        code = run_cli(ev.main, ev.get_args_parser())
    except SystemExit as e:
        code = e.code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def two_ranks(args, logdir, failing_rank=None, fail_at=None):
    """ev's command line in two forked processes that form a gloo group as torchrun's workers would;
    [(exit status, stdout, stderr)] per rank. A rank that hangs fails the test."""
    ctx, port = multiprocessing.get_context("fork"), free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, args, str(logdir), failing_rank, fail_at)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a rank waited for ever"
    return [(p.exitcode, open(logdir / f"out{r}").read(), open(logdir / f"err{r}").read())
            for r, p in enumerate(procs)]


@pytest.mark.slow
def test_a_refusal_on_one_rank_mid_sweep_stops_every_rank_with_one_line(setup, reference, tmp_path):
    out = tmp_path / "out"
    res = two_ranks(argv(setup, out), tmp_path, failing_rank=1, fail_at=2)   # conditions 0 and 1 done, then rank 1 stops reading condition 2
    assert [r[0] for r in res] == [2, 2]
    assert res[0][2].strip().splitlines() == ["error: rank 1: VOC-C/shot_noise/1/x.png: damaged; dump it again"]
    assert res[1][1] == "" and res[1][2] == ""          # rank 1 is silent
    # The two conditions both ranks finished are written (by rank 0), and nothing half-written.
    assert [(r["corruption"], r["severity"]) for r in rows(out)][::2] == [("clean", 0), ("gaussian_noise", 1)]
    assert not glob.glob(str(out / "**" / "*.tmp-*"), recursive=True)
    # A single process resumes them: the whole result is one process's.
    evaluate(setup, out)
    assert_same_results(out, reference)


@pytest.mark.slow
def test_a_refusal_on_rank_0_before_the_sweep_reaches_rank_1(setup, reference, tmp_path, tiny_ckpt):
    # --out holds another checkpoint's results: rank 0 alone reads --out, rank 1 waits for its plan.
    out = tmp_path / "out"
    evaluate(setup, out, "--corruptions", "gaussian", "--severities", "1")
    other = tiny_ckpt("baseline", 7)
    args = argv(setup, out)
    args[1] = str(other)
    res = two_ranks(args, tmp_path)
    assert [r[0] for r in res] == [2, 2]
    lines = res[0][2].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "another checkpoint" in lines[0]
    assert res[1][2] == ""


# -------------------------------------------------------------------------------- --shard auto

def slurm(monkeypatch, task, count, low=None):
    for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", str(count))
    if low is not None:
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", str(low))


def test_shard_auto_takes_the_array_task_and_merges_to_one_run(setup, tmp_path, monkeypatch):
    val = open(os.path.join(setup["root"], "voc", "VOCdevkit", "VOC2012", "ImageSets", "Segmentation",
                            "val.txt")).read().split()
    assert len(val) == N_IMAGES
    # One image per batch here: --shard K/N takes images K, K + N, ..., so with larger batches an image would
    # meet other neighbours and another batch size than in one run, and CPU kernels round by batch size.
    one = ("--batch-size", "1")
    evaluate(setup, tmp_path / "single", *one)
    folders = []
    for k, task in enumerate((10, 11)):    # an array --array=10-11: SLURM_ARRAY_TASK_MIN=10
        slurm(monkeypatch, task, 2, low=10)
        folders.append(tmp_path / f"s{k}")
        evaluate(setup, folders[-1], "--shard", "auto", *one)
        run = json.load(open(folders[-1] / "run.json"))
        assert run["shard"] == f"{k}/2" and run["images"] == 3
        assert {r["shard"] for r in rows(folders[-1])} == {f"{k}/2"}
        z = np.load(folders[-1] / "confusion" / "baseline" / "clean_0.npz")
        assert list(z["image_ids"]) == val[k::2]          # --shard K/N's images: K, K + N, ...
    ev.main(ev.get_args_parser().parse_args(["--merge", *map(str, folders), "--out", str(tmp_path / "merged")]))
    assert_same_results(tmp_path / "merged", tmp_path / "single", drop=("seconds", "shard"))


def test_slurm_shard_rule():
    assert distributed.slurm_shard({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}) == (3, 8)
    assert distributed.slurm_shard({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4",
                                    "SLURM_ARRAY_TASK_MIN": "4"}) == (3, 4)
    assert distributed.slurm_shard({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "3",
                                    "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2"}) == (2, 3)
    with pytest.raises(UsageError, match="array task 8 of 4"):
        distributed.slurm_shard({"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "4"})


@pytest.mark.parametrize("env, says", [({}, "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT not set"),
                                       ({"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT not set"),
                                       ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "not integers")])
def test_shard_auto_outside_an_array_is_one_line(setup, tmp_path, monkeypatch, capsys, env, says):
    for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", ["evaluate_corruptions.py", *argv(setup, tmp_path / "o", "--shard", "auto")])
    with pytest.raises(SystemExit) as e:
        run_cli(ev.main, ev.get_args_parser())
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and says in err[0] and err[0].startswith("error: --shard auto: ")
    assert not (tmp_path / "o").exists()


def test_split_gives_each_rank_whole_batches():
    # 7 images in batches of 2 over 3 ranks: batches {0,1} {2,3} {4,5} {6} -> ranks 0: b0 b3, 1: b1, 2: b2
    got = [distributed.World(r, 3).split(7, 2) for r in range(3)]
    assert got == [[0, 1, 6], [2, 3], [4, 5]]
    assert distributed.World().split(5, 4) == [0, 1, 2, 3, 4]
    with pytest.raises(UsageError, match="4 processes .* 3 batch"):
        distributed.World(0, 4).split(5, 2)


def test_the_backend_follows_the_device(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    w = distributed.World.from_env("cpu")
    assert (w.rank, w.size, w.local_rank, w.backend, w.is_root) == (5, 8, 1, "gloo", False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    # On CUDA: NCCL for CUDA tensors, gloo for the host objects the sweep exchanges (torch picks the CPU
    # backend for object collectives when one is given).
    assert distributed.World.from_env(None).backend == distributed.World.from_env("cuda").backend == \
        "cpu:gloo,cuda:nccl"
    assert distributed.World.from_env("cpu").backend == "gloo"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.World.from_env("cuda").size == 1
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UsageError, match="expected integers"):
        distributed.World.from_env("cpu")

"""The measuring tools every bench.py group shares: timers, the result row, a script's ``main`` timed in process.

bench.py and benchmarks/models.py import them; BENCHMARKS.md defines the groups and their JSON fields.
"""
import contextlib
import io
import sys
import time

import cv2
import torch

import train as train_script
from common.models import default_output_stride

KINDS = ("baseline", "ibe", "scribe")   # the sweep's three checkpoints (the paper's three models)
RECIPE_OF, SHORT = {"deeplabv3": "notebook", "deeplabv3plus": "paper"}, {"deeplabv3": "v3", "deeplabv3plus": "v3plus"}
HEADLINE_ARCH = "deeplabv3"   # the default recipe's model (the notebook's DeepLabV3, output stride 8)


class Skip(Exception):
    """A group that cannot run for a reason that is not a failure (its inputs were not measured)."""


def timed(fn, device="cpu", repeats=1, warmup=False):
    """(seconds, result) of ``fn()``, the fastest of ``repeats`` calls (timeit's rule), the GPU drained around."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    if warmup:
        fn()
    best = None
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best or 1e30, time.perf_counter() - t0)
    return best, out


@contextlib.contextmanager
def torch_threads(n):
    """torch's and OpenCV's thread pools at ``n`` threads (a DataLoader worker has one of each)."""
    old = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(n), cv2.setNumThreads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old[0]), cv2.setNumThreads(old[1])


def result(measured, target, rule, seconds=None, **extra):
    """One row of the JSON line. ``rule`` "info" marks a reported value without a target (ok is None)."""
    ok = None if rule == "info" else {"<=": measured <= target, ">=": measured >= target,
                                      "==": measured == target}[rule]
    return {"measured": None if measured is None else round(float(measured), 4), "target": target, "rule": rule,
            "ok": None if ok is None else bool(ok),
            "seconds": {k: round(float(v), 4) for k, v in (seconds or {}).items()}, **extra}


def run_main(script, argv, log, device="cpu"):
    """(wall seconds, printed text) of ``script.main`` on ``argv``, its output to ``log`` (its tail to stderr)."""
    args, buf = script.get_args_parser().parse_args(argv), io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            seconds, rc = timed(lambda: script.main(args), device)
    except BaseException:
        sys.__stderr__.write("".join(buf.getvalue().splitlines(True)[-20:]))
        raise
    finally:
        with open(log, "a") as fh:
            fh.write(buf.getvalue())
    if rc != 0 and script is not train_script:   # train.main returns the best val mIoU
        raise RuntimeError(f"{script.__name__}.main returned {rc}; see {log}")
    return seconds, buf.getvalue()


def model_kw(cfg, arch):
    """build_model keywords of ``arch`` as its recipe trains it (output stride 32 for ResNet-18/34)."""
    return dict(arch=arch, backbone=cfg["backbone"], head_channels=cfg["head_channels"],
                output_stride=default_output_stride(arch, cfg["backbone"]),
                ibe_placement=train_script.RECIPES[RECIPE_OF[arch]]["ibe_placement"])


def peak_memory(device, reset=False):
    """torch.cuda.max_memory_allocated in MiB (None on a CPU); ``reset`` starts a new peak instead."""
    if str(device).startswith("cuda"):
        return torch.cuda.reset_peak_memory_stats(device) if reset else round(
            torch.cuda.max_memory_allocated(device) / 2**20, 1)

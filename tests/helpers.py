"""Shared test helpers: the repository root, tiny checkpoints without training, the scripts' command lines run
in-process (``run_script``, ``refused``) or as a user's shell runs them (``cli``), a tiny train.py run.

The fixtures built from these (the tiny dataset and checkpoints, made once a session) are in conftest.py.
"""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np

from common.checkpoint import save_random_checkpoint
from common.cli import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_checkpoint(path, kind, seed=0, name=None):
    """A randomly initialised ResNet-18 model with 8-channel heads, saved the way train.py saves it."""
    return save_random_checkpoint(path, kind, seed, name, backbone="resnet18", head_channels=8)


def cli(*args, timeout=600, **kw):
    """Run a script of the repository in a fresh interpreter, as a user would; returns the CompletedProcess.

    Each call imports torch anew (seconds): keep it for what only a real process shows (its exit status, a
    traceback from anywhere in it, kills, several processes); ``run_script`` does the rest in-process.
    """
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def run_script(module, *argv):
    """``python <module>.py ARGV`` in-process: the script's own ``run_cli`` on that sys.argv; its exit status.

    A UsageError or an argparse error is exit status 2 (``SystemExit``), as in a shell. A script exits with what
    ``main`` returns when that is a status (an int); train.py's and pretrain_backbone.py's ``main`` return their
    results instead, and their guards exit 0.
    """
    saved = sys.argv
    sys.argv = [module.__name__ + ".py", *map(str, argv)]
    try:
        status = run_cli(module.main, module.get_args_parser())
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = saved
    return status if type(status) is int else 0


def one_error_line(capture, warnings=False):
    """The one ``error: ...`` line of a refused run from ``capsys`` or ``capfd`` (which also sees the DataLoader
    workers' stderr), checked to be all there is on stderr (no traceback, no second line) but, with
    ``warnings``, the ``warning: ...`` lines printed before it."""
    err = capture.readouterr().err.strip().splitlines()
    rest = [line for line in err if not (warnings and line.startswith("warning: "))]
    assert len(rest) == 1 and rest[0].startswith("error: ") and "Traceback" not in "\n".join(err), err[-30:]
    return rest[0]


def refused(capture, module, *argv, warnings=False):
    """Run ``module``'s command line in-process and check it exits 2 with one stderr line; returns that line."""
    capture.readouterr()
    status = run_script(module, *argv)
    line = one_error_line(capture, warnings)
    assert status == 2, (status, line)
    return line


# train.py at a size that trains in seconds: ResNet-18 with 8-channel heads, 48 px crops, batches of 4.
TINY_TRAIN = ["--data", "synthetic", "--backbone", "resnet18", "--head-channels", "8", "--crop-size", "48",
              "--batch-size", "4", "--workers", "0", "--lr", "0.01", "--print-freq", "2"]


def run_tiny_train(data, out, *extra):
    """train.main in-process on the tiny synthetic set ``data``, writing to ``out``; later flags win."""
    import train
    args = train.get_args_parser().parse_args(TINY_TRAIN + ["--synthetic-root", data, "--out", str(out), *extra])
    return train.main(args)


def digest(folder, skip=(".lock",)):
    """{relative path: sha256} of every file below ``folder`` but the writer lock."""
    out = {}
    for d, _, fs in os.walk(folder):
        for f in fs:
            if f not in skip:
                p = os.path.join(d, f)
                out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def result_rows(out):
    """A results folder's metrics.jsonl rows without their timing."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in open(os.path.join(out, "metrics.jsonl"))]


def result_arrays(out):
    """Every NPZ array below a results folder's logits/ and confusion/, by file and key."""
    found = {}
    for sub in ("logits", "confusion"):
        for d, _, fs in os.walk(os.path.join(out, sub)):
            for f in fs:
                with np.load(os.path.join(d, f)) as z:
                    found[os.path.relpath(os.path.join(d, f), out)] = {k: z[k] for k in z.files}
    return found


def assert_same_results(a, b):
    """Two results folders hold the same rows (timing aside) and the same NPZ arrays, bit for bit."""
    assert result_rows(a) == result_rows(b)
    x, y = result_arrays(a), result_arrays(b)
    assert x.keys() == y.keys()
    for f in x:
        assert x[f].keys() == y[f].keys() and all(np.array_equal(x[f][k], y[f][k]) for k in x[f]), f

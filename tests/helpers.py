"""Shared test helpers: tiny checkpoints without training, a tiny synthetic dataset, CLI runner."""
import os
import subprocess
import sys

from common.checkpoint import save_random_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_checkpoint(path, kind, seed=0, name=None):
    """A randomly initialised ResNet-18 model with 8-channel heads, saved the way train.py saves it."""
    return save_random_checkpoint(path, kind, seed, name, backbone="resnet18", head_channels=8)


def cli(*args, timeout=600, **kw):
    """Run a script of the repository as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def tiny_synthetic(tmp_path_factory, n_voc_train=2, n_sbd=2, n_val=3, max_side=96):
    """A small synthetic VOC + SBD dataset in a fresh temp folder; returns its root as a str."""
    from common.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("data") / "synthetic"
    ensure_synthetic(root, n_voc_train=n_voc_train, n_sbd=n_sbd, n_val=n_val, max_side=max_side, quiet=True)
    return str(root)


# train.py at a size that trains in seconds: ResNet-18 with 8-channel heads, 48 px crops, batches of 4.
TINY_TRAIN = ["--data", "synthetic", "--backbone", "resnet18", "--head-channels", "8", "--crop-size", "48",
              "--batch-size", "4", "--workers", "0", "--lr", "0.01", "--print-freq", "2"]


def run_tiny_train(data, out, *extra):
    """train.main in-process on the tiny synthetic set ``data``, writing to ``out``; later flags win."""
    import train
    args = train.get_args_parser().parse_args(TINY_TRAIN + ["--synthetic-root", data, "--out", str(out), *extra])
    return train.main(args)

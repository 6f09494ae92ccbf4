"""Self-describing checkpoints: one dict that rebuilds its model from the file alone.

    save_checkpoint(path, dict(model=..., optimizer=..., ...))   # atomic: temp file + rename
    model, ckpt = load_model("runs/scribe/checkpoint.pt")              # weights_only=True, never unpickles code

Layout: ``model`` (state dict), ``model_config`` (kwargs of ``build_model`` minus the weights source),
``name``, ``epoch``, ``args`` (the training command's arguments), ``optimizer``, ``scheduler``,
``scaler``, ``rng``, ``best_miou``, ``val`` (last validation metrics), ``git_commit``, ``versions``.
"""
import hashlib
import os
import pickle
import re
import subprocess

import numpy as np
import torch

from .errors import UsageError


def atomic_write(path: str, write, durable: bool = True) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a kill never leaves a half-written file.

    ``durable`` fsyncs the data before the rename, so a power cut cannot leave an empty file under the
    final name either. Bulk writers that re-check their files on resume (dump_voc_c.py's PNGs) pass
    False and make the whole batch durable at once with ``os.sync()`` before recording it as done.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """Atomically write a text file (the handle is closed, so flushed, before the rename)."""
    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)
    atomic_write(path, write)


def write_npz(path: str, **arrays) -> None:
    """Atomically write an uncompressed NPZ (no pickles: plain numeric and string arrays only)."""
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    atomic_write(path, write)


def prepare_output_folder(path: str, flag: str = "--out") -> None:
    """Create ``path`` if needed, or raise one clear UsageError when it is a file or cannot be written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot create it ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable")


def save_checkpoint(path: str, ckpt: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def read_checkpoint(path: str) -> dict:
    """Load a checkpoint safely (``weights_only=True``) and check it is one of ours."""
    if not os.path.isfile(path):
        what = "not a regular file" if os.path.exists(path) else "no such file"
        raise UsageError(f"checkpoint {path}: {what}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses anything that would run code on load (pickled callables, classes).
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = found.group(1) if found else "a non-tensor object"
        raise UsageError(f"checkpoint {path}: refused, it holds {what}, which would run code when unpickled "
                         f"(loaded with weights_only=True); use a checkpoint written by train.py, or re-save "
                         f"this one as plain tensors if you trust its source") from None
    except Exception as e:
        raise UsageError(f"checkpoint {path}: unreadable ({type(e).__name__}: {str(e)[:160]}); "
                         f"is it truncated or not a torch checkpoint?") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise UsageError(f"checkpoint {path}: not a checkpoint written by train.py (no model_config; a bare "
                         f"state dict cannot say which model it belongs to)")
    return ckpt


def load_model(path: str, device="cpu"):
    """Rebuild the model a checkpoint describes, load its weights, and return ``(model.eval(), ckpt)``."""
    from .models import build_model

    ckpt = read_checkpoint(path)
    cfg = dict(ckpt["model_config"])
    cfg.pop("num_outputs", None)
    # Checkpoints written before ibe_placement existed applied IBE after upsampling.
    cfg["ibe_placement"] = cfg.get("ibe_placement") or "output"
    # Built on the meta device (no memory, no random init: 0.03 s instead of 0.23 s for R50), then the
    # checkpoint's tensors are assigned in place of the empty ones.
    with torch.device("meta"):
        model = build_model(**cfg)
    try:
        model.load_state_dict(ckpt["model"], assign=True)
    except RuntimeError as e:
        raise UsageError(f"checkpoint {path}: weights do not fit its model_config ({str(e)[:160]})") from None
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:   # a tensor the state dict does not carry (none today); never run a model with empty ones
        raise UsageError(f"checkpoint {path}: no values for {left[:3]}; it was not written by this train.py")
    return model.to(device).eval(), ckpt


def save_random_checkpoint(path, kind: str, seed: int = 0, name=None, **model_kw) -> str:
    """A random-weight model (``build_model(kind, **model_kw)``) saved the way train.py saves one, for tests and
    benchmarks. BatchNorm gets non-trivial running statistics, so that eval-mode outputs vary across classes
    (all-one-class predictions would also make per-class work unrealistically cheap)."""
    from .models import build_model

    torch.manual_seed(seed)
    model = build_model(kind, **model_kw)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    save_checkpoint(str(path), {"model": model.state_dict(), "model_config": model.config, "name": name or kind,
                                "epoch": 0, "args": {}})
    return str(path)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_commit() -> str:
    """The repository's commit (with "+dirty" for local changes), or "unknown" outside git."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


class OutputLock:
    """One writer per output folder: an exclusive POSIX record lock (``lockf``) on ``<folder>/.lock``.

    The kernel drops the lock when its process dies, even by SIGKILL, so a lock left by a killed run is
    simply taken over; a live second writer is refused with a message naming its pid. POSIX locks, unlike
    ``flock``, are not inherited by forked workers, which may outlive a killed parent by a few seconds.
    """

    def __init__(self, folder: str, what: str):
        self.path = os.path.join(folder, ".lock")
        self.what = what
        self.fh = None

    def __enter__(self):
        import fcntl

        self.fh = open(self.path, "a+")
        try:
            fcntl.lockf(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            owner = self.fh.read().strip() or "another process"
            self.fh.close()
            raise UsageError(f"{os.path.dirname(self.path)} is being written by {owner}; wait for it to finish "
                             f"or use another --out (two writers would interleave their files)") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{self.what} (pid {os.getpid()})\n")
        self.fh.flush()
        # We are the only writer now, so any temporary file in here was left by a killed run.
        for folder, _, files in os.walk(os.path.dirname(self.path)):
            for name in files:
                if ".tmp-" in name:
                    os.remove(os.path.join(folder, name))
        return self

    def __exit__(self, *exc):
        self.fh.close()  # closing releases the lock; the file itself stays
        return False

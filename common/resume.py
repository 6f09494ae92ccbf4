"""What train.py --resume relies on beyond the checkpoint itself: each epoch's seed and the RNG state saved with
it (a resumed run repeats the epochs a straight run would), the checkpoint file's identity (to see another
process replace it), and the log cut back to the epochs the checkpoint holds."""
import json
import os
import random

import numpy as np
import torch

from common.folders import write_text


def epoch_seed(args, epoch: int) -> int:
    """All randomness of an epoch is a function of (seed, epoch, rank), so a resumed run repeats it."""
    return (args.seed * 1_000_003 + epoch * 7919 + args.rank) % 2**63


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"]))
    random.setstate(state["python"])


def file_state(path):
    """(inode, size, mtime) of a file, or None when there is none: enough to see that another process replaced it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def truncate_log(path: str, start_epoch: int) -> None:
    """Keep only the log lines of epochs the checkpoint already holds (a kill may leave one more)."""
    if not os.path.exists(path):
        return
    keep, lines = [], 0
    with open(path) as fh:
        for line in fh:
            lines += 1
            try:
                if json.loads(line)["epoch"] <= start_epoch:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, KeyError):
                break  # a torn last line from a crash
    if len(keep) != lines:   # atomically: a full disk must not leave the log empty
        write_text(path, "".join(keep))

"""Output folders from creation to replacement: atomic writes, the one-writer lock, --overwrite's replacement.

Every script's output (checkpoints, VOC-C dumps, result folders, figures) goes through here; what the files of a
results folder hold is common/results.py's.

    atomic_write(path, lambda tmp: np.save(tmp, a))   # temp file + fsync + rename: a kill never leaves half a file
    write_text(path, text); write_npz(path, **arrays)
    check_output_folder(args.out)                     # before any work: one UsageError if it is a file
    prepare_output_folder(args.out)                   # created, or one UsageError: a file, not writable
    with OutputLock(args.out, "train.py"): ...        # a second live writer is refused; a dead one's lock is taken
    lock_folder(out, held, command)                   # the last two on an ExitStack, and dead replacements removed
    fresh = replace_folder(out, held, command)        # --overwrite: build beside out, swap in at the first result
    file_sha256(path); git_commit()                   # what every run records about its inputs and code
"""
import errno
import hashlib
import os
import shutil
import subprocess
import time

import numpy as np

from .cli import UsageError, interrupt_behind, write_problem


def atomic_write(path: str, write, durable: bool = True) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a kill never leaves a half-written file.

    ``durable`` fsyncs the data before the rename, so a power cut cannot leave an empty file under the
    final name either. Bulk writers that re-check their files on resume (dump_voc_c.py's PNGs) pass
    False and make the whole batch durable at once with ``os.sync()`` before recording it as done.
    A write the disk refuses (full, read-only, no permission) is one UsageError naming ``path``; the file
    that was there before stays as it was.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write(tmp)
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        interrupt = interrupt_behind(e)
        if interrupt is not None:   # Ctrl-C mid-write: torch.save's writer then fails in its __exit__ too
            if os.path.lexists(tmp):
                os.remove(tmp)
            raise interrupt from None
        # torch.save reports a full disk as RuntimeError("... unexpected pos ..."), without an errno: ask the disk.
        full = not isinstance(e, (OSError, KeyboardInterrupt, UsageError)) and disk_is_full(path)
        if os.path.lexists(tmp):
            os.remove(tmp)
        line = write_problem(OSError(errno.ENOSPC, "full") if full else e, path)
        if line is not None:
            raise UsageError(line) from None
        raise


def disk_is_full(path: str, slack: int = 1 << 20) -> bool:
    """True when the file system that holds ``path`` has less than ``slack`` bytes left for us."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < slack


def write_text(path: str, text: str) -> None:
    """Atomically write a text file (the handle is closed, so flushed, before the rename)."""
    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)
    atomic_write(path, write)


def write_npz(path: str, compressed: bool = False, **arrays) -> None:
    """Atomically write an NPZ, deflated with ``compressed`` (no pickles: plain numeric and string arrays only)."""
    def write(tmp):
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    atomic_write(path, write)


def check_output_folder(path: str, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that is a file (it is created later, once there is output)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a file, not a folder")


def prepare_output_folder(path: str, flag: str = "--out") -> None:
    """Create ``path`` if needed, or raise one clear UsageError when it is a file or cannot be written."""
    check_output_folder(path, flag)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot create it ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: not writable")


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

        try:
            self.fh = open(self.path, "a+")
        except OSError as e:
            line = write_problem(e, self.path)
            if line is None:
                raise
            raise UsageError(line) from None
        try:
            fcntl.lockf(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            owner = self.fh.read().strip() or "another process"
            self.fh.close()
            raise UsageError(f"{os.path.dirname(self.path)} is being written by {owner}; wait for it to finish "
                             f"or use another --out (two writers would interleave their files)") from None
        try:   # the owner's name, for the message a second writer gets
            self.fh.seek(0)
            self.fh.truncate()
            self.fh.write(f"{self.what} (pid {os.getpid()})\n")
            self.fh.flush()
        except OSError as e:
            try:
                self.fh.close()   # flushes the unwritten name again, and fails the same way
            except OSError:
                pass
            line = write_problem(e, self.path)
            if line is None:
                raise
            raise UsageError(line) from None
        # We are the only writer now, so any temporary file in here was left by a killed run.
        for folder, _, files in os.walk(os.path.dirname(self.path)):
            for name in files:
                if ".tmp-" in name:
                    os.remove(os.path.join(folder, name))
        return self

    def __exit__(self, *exc):
        self.fh.close()  # closing releases the lock; the file itself stays
        return False


# ------------------------------------------------------------------ one run per folder, replaced only when done

def has_contents(folder) -> bool:
    """Anything in ``folder`` beyond the writer lock (an empty folder needs no replacing)."""
    return os.path.isdir(folder) and any(name != ".lock" for name in os.listdir(folder))


class Replacement:
    """``--overwrite``: start ``out`` afresh, never touching it before the new run has its first result.

    The new run writes to a hidden sibling, ``.<name>.afresh-<pid>`` (same parent, so renames are atomic);
    ``commit()``, called once the first result there is complete, moves the old folder aside to
    ``<out>.replaced-<date>-<time>`` (printed: the user's files are never dropped silently) and renames the new
    one into place. A kill or an error before that leaves ``out`` byte for byte as it was; the sibling is removed
    on the way out, or by the next run that takes the folder's lock (``clear_dead_replacements``). ``path`` is
    where to write.
    """

    def __init__(self, out):
        self.out = os.path.abspath(out)
        self.folder = replacement_prefix(self.out) + str(os.getpid())
        self.committed = False
        self.aside = None

    @property
    def path(self):
        return self.out if self.committed else self.folder

    def __enter__(self):
        clear_dead_replacements(self.out)
        try:
            os.makedirs(self.folder)
        except OSError as e:
            raise UsageError(f"--overwrite: cannot create {self.folder} beside {self.out} to build the new run in "
                             f"({e.strerror}); use another --out") from None
        return self

    def commit(self):
        if self.committed:
            return
        stamp, n = time.strftime("%Y%m%d-%H%M%S"), 0
        self.aside = f"{self.out}.replaced-{stamp}"
        while os.path.exists(self.aside):
            n += 1
            self.aside = f"{self.out}.replaced-{stamp}-{n}"
        print(f"--overwrite: the earlier contents of {self.out} are moved to {self.aside} "
              f"(delete that folder when you no longer need it)", flush=True)
        os.rename(self.out, self.aside)
        os.rename(self.folder, self.out)
        self.committed = True

    def __exit__(self, *exc):
        if not self.committed:
            shutil.rmtree(self.folder, ignore_errors=True)
        return False


def lock_folder(out, held, command, flag="--out") -> None:
    """Take ``out`` for this run: create it, hold its writer lock (on ``held``, an ExitStack, until the run ends)
    and remove what ``--overwrite`` runs killed before their first result left beside it."""
    prepare_output_folder(out, flag)
    held.enter_context(OutputLock(out, command))
    clear_dead_replacements(out)


def replace_folder(out, held, command):
    """``--overwrite``: a ``Replacement`` of ``out``, entered on ``held`` with the new folder's own lock; None when
    ``out`` holds nothing to replace (the run then writes there directly)."""
    if not has_contents(out):
        return None
    fresh = held.enter_context(Replacement(out))
    held.enter_context(OutputLock(fresh.folder, f"{command} --overwrite"))
    return fresh


def replacement_prefix(out) -> str:
    parent, name = os.path.split(os.path.abspath(out))
    return os.path.join(parent, f".{name}.afresh-")


def clear_dead_replacements(out) -> None:
    """Remove the hidden new-run folders of ``--overwrite`` runs on ``out`` that were killed before their first
    result. Call it holding ``out``'s lock: any such folder then belongs to a run that no longer holds it."""
    prefix = replacement_prefix(out)
    parent = os.path.dirname(prefix)
    for name in os.listdir(parent) if os.path.isdir(parent) else []:
        path = os.path.join(parent, name)
        if path.startswith(prefix) and name[len(os.path.basename(prefix)):].isdigit():
            shutil.rmtree(path, ignore_errors=True)

"""One sweep over several processes (torchrun) or several jobs (a SLURM array): who does what, and one outcome.

    torchrun --nproc_per_node=8 evaluate_corruptions.py --checkpoints ... --out results      # one 8-GPU box
    sbatch --array=0-7 job.sh      # job.sh: evaluate_corruptions.py ... --shard auto --out results-$SLURM_ARRAY_TASK_ID

    with World.from_env(args.device) as world:   # WORLD_SIZE > 1: this process's rank; else one process
        mine = world.split(n_images, batch)       # this rank's images: those of batches r, r + W, ...
        world.sync()                              # every rank's checks passed, or every rank raises one error
        plan = world.share(plan)                  # rank 0's decision (what is left to do), to every rank
        parts = world.gather(part)                # every rank's part to rank 0 (a list there, None elsewhere)

Under torchrun (WORLD_SIZE > 1 in the environment) the process group is initialised with gloo for CPU tensors
and, when the device is CUDA, NCCL for CUDA tensors (``cpu:gloo,cuda:nccl``; NCCL connects lazily, at its first
collective). What the sweep sends are a few MB of host arrays per condition (confusions, per-image counts,
logit moments, calibration rows), which already end on the host to be written, so they travel as pickled
objects over gloo, also between machines; every rank runs on its own LOCAL_RANK GPU (common/device.py).

Errors. A refusal (UsageError) on any rank must reach every rank, or the others wait in a collective for a rank
that has gone. Every exchange therefore starts with the same small all-gather of "my error, or None"
(``sync``); a rank that raises joins the next exchange with its message instead of its data (``World``'s
``__exit__`` does that), and then every rank raises the first error, the same line. Rank 0 prints it as ``run_cli``
does (``error: ...`` on stderr), and every rank exits with status 2 once it has; torchrun then reports that its
workers failed (its ChildFailedError summary, exit status 1). Ranks other than 0 print nothing on stdout and draw
no progress bar.

``--shard auto`` reads the SLURM array's task id and count (``slurm_shard``).
"""
import contextlib
import os
import sys

import torch

from .cli import UsageError, one_line


class World:
    """The processes of one run: ``rank`` of ``size`` (0 of 1 outside torchrun). A context manager: entered, it
    joins torchrun's process group; left with a UsageError, it shares the error with the other ranks; left any
    way, it destroys the group."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0, backend: str = None):
        self.rank, self.size, self.local_rank, self.backend = rank, size, local_rank, backend
        self.exchanges = 0          # collectives so far (each sync counts one)
        self._finished = False      # after the last sync: no rank will exchange again
        self._quiet = contextlib.ExitStack()

    @classmethod
    def from_env(cls, requested_device=None) -> "World":
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK; a single process when WORLD_SIZE is absent or 1.

        The backend follows ``--device`` as requested (None: cuda when available), before it is resolved, so
        that an unusable device is a refusal shared like any other instead of a rank that dies alone."""
        env = os.environ
        try:
            size = int(env.get("WORLD_SIZE", "1"))
            rank, local = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
        except ValueError:
            raise UsageError(f"WORLD_SIZE={env.get('WORLD_SIZE')!r} RANK={env.get('RANK')!r} LOCAL_RANK="
                             f"{env.get('LOCAL_RANK')!r}: expected integers (torchrun sets them; unset them to run "
                             f"one process)") from None
        if size <= 1:
            return cls()
        wants_cuda = (requested_device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        backend = "cpu:gloo,cuda:nccl" if wants_cuda and torch.cuda.is_available() else "gloo"
        return cls(rank, size, local, backend)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # --------------------------------------------------------------------------------- lifetime

    def __enter__(self):
        if self.size > 1:
            import torch.distributed as dist
            # torch's default timeout (30 min) bounds the wait at one exchange: rank 0 checking a results folder
            # while the others wait for its plan, or the slowest rank finishing its share of a condition.
            dist.init_process_group(self.backend)
            if not self.is_root:   # one voice: rank 0's lines only
                self._quiet.enter_context(contextlib.redirect_stdout(self._quiet.enter_context(open(os.devnull, "w"))))
        return self

    def __exit__(self, kind, error, tb):
        try:
            if self.size > 1 and isinstance(error, UsageError) and not self._finished:
                shared = error
                if not getattr(error, "shared", False):
                    try:
                        self.sync(error=str(error))    # the other ranks learn it at their next exchange
                    except UsageError as first:        # ... and every rank raises the first rank's error
                        shared = first
                # Rank 0 prints the line as run_cli would, and no rank leaves before it has: torchrun stops the
                # other workers as soon as one exits, which could cut rank 0 short of its line.
                if self.is_root:
                    print(f"error: {one_line(str(shared))}", file=sys.stderr, flush=True)
                self._barrier()
                raise SystemExit(2)
        finally:
            self._quiet.close()
            if self.size > 1:
                import torch.distributed as dist
                if dist.is_initialized():
                    dist.destroy_process_group()
        return False

    def _barrier(self) -> None:
        import torch.distributed as dist
        dist.all_gather_object([None] * self.size, None)   # over gloo, whatever the device

    def finish(self) -> None:
        """The last exchange: every rank got here (rank 0's last writes included), or all raise one error."""
        self.sync()
        self._finished = True

    # ------------------------------------------------------------------------------- exchanges

    def sync(self, error: str = None) -> None:
        """All ranks meet; if any brings an error, every rank raises the first one (rank order)."""
        if self.size == 1:
            if error is not None:
                raise UsageError(error)
            return
        import torch.distributed as dist
        errors = [None] * self.size
        dist.all_gather_object(errors, None if error is None else str(error))
        self.exchanges += 1
        for rank, message in enumerate(errors):
            if message is not None:
                shared = UsageError(message if rank == 0 or message.startswith("rank ") else f"rank {rank}: {message}")
                shared.shared = True
                raise shared

    def share(self, value=None):
        """Rank 0's ``value`` on every rank (after a sync, so a refusal on rank 0 reaches the others)."""
        self.sync()
        if self.size == 1:
            return value
        import torch.distributed as dist
        box = [value if self.is_root else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value):
        """[value of rank 0, of rank 1, ...] on rank 0, None on the others (after a sync)."""
        self.sync()
        if self.size == 1:
            return [value]
        import torch.distributed as dist
        out = [None] * self.size if self.is_root else None
        dist.gather_object(value, out, dst=0)
        return out

    # ------------------------------------------------------------------------------------ work

    def split(self, n: int, batch: int = 1) -> list:
        """This rank's positions among ``n`` images taken in batches of ``batch``: the images of batches rank,
        rank + size, ... So every image goes through the same batch, same neighbours and same size, as in one
        process, and gets the same logits to the last bit (CPU kernels depend on the batch size), whatever the
        number of ranks. Every rank needs at least one batch."""
        batches = -(-n // batch)
        if self.size > batches:
            what = f"{n} image(s)" if batch == 1 else f"{batches} batch(es) of --batch-size {batch} ({n} images)"
            raise UsageError(f"torchrun: {self.size} processes (WORLD_SIZE) for {what}; every process needs at least "
                             f"one: launch at most {batches} (--nproc_per_node x --nnodes)"
                             + (" or lower --batch-size" if batch > 1 else ""))
        return [p for b in range(self.rank, batches, self.size) for p in range(b * batch, min(n, (b + 1) * batch))]


SINGLE = World()


def slurm_shard(environ=None):
    """(K, N) for ``--shard auto`` inside a SLURM job array: K = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) /
    SLURM_ARRAY_TASK_STEP (MIN 0 and STEP 1 when unset), N = SLURM_ARRAY_TASK_COUNT."""
    env = os.environ if environ is None else environ
    missing = [k for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT") if k not in env]
    if missing:
        raise UsageError(f"--shard auto: {' and '.join(missing)} not set, so this is not a task of a SLURM job array; "
                         f"submit it with sbatch --array=0-(N-1), or give --shard K/N")
    try:
        task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        low, step = int(env.get("SLURM_ARRAY_TASK_MIN", "0")), int(env.get("SLURM_ARRAY_TASK_STEP", "1"))
    except ValueError:
        raise UsageError("--shard auto: SLURM_ARRAY_TASK_ID / _COUNT / _MIN / _STEP are not integers "
                         f"({env.get('SLURM_ARRAY_TASK_ID')!r}, {env.get('SLURM_ARRAY_TASK_COUNT')!r}, "
                         f"{env.get('SLURM_ARRAY_TASK_MIN')!r}, {env.get('SLURM_ARRAY_TASK_STEP')!r})") from None
    k, rest = divmod(task - low, max(step, 1))
    if rest or not 0 <= k < count:
        raise UsageError(f"--shard auto: array task {task} of {count} (min {low}, step {step}) is not one of "
                         f"{low}, {low + step}, ..., {low + (count - 1) * step}; use a plain range, "
                         f"sbatch --array=0-{count - 1}, or give --shard K/N")
    return k, count

"""LogitTracker: per-predicted-class moments of the 21 logits, for the paper's logit-structure analysis.

docs/protocol.md, "Logit structure". Over all output pixels (label-255 pixels included, as the companion
code did), grouped by the predicted class n = argmax over the 21 channels (first maximum on ties,
as torch.argmax and np.argmax), we accumulate

    N_n  count of pixels predicted n                 -> ``count``  (21,)
    S_n  sum of their logit vectors                   -> ``sum``    (21, 21), row n = S_n
    Q_n  sum of their outer products x x^T            -> ``sq``     (21, 21, 21), [n] = Q_n

in float64 (float32 sums over ~10^8 pixels lose digits). Everything else (means, covariances,
correlations, distance matrix, the "Distance" margin) is derived from these three arrays, which simply
add across batches, processes and shards (``merge``, ``+``, ``all_reduce``); ``state_dict`` holds all
of it, losslessly, for np.savez.

Two statistics come in two versions, the companion notebook's (which produced the paper's numbers and
figures) and a corrected one, so that both can be reported side by side:

    "Distance"    ``distance_notebook``  mean over all 20 foreground classes, never-predicted ones counting 0
                  ``distance_margin``    mean over the foreground classes predicted at least once
    correlation   ``correlation_notebook``  (Q_n - mu_n mu_n^T) / N_n scaled by its diagonal (not a covariance)
                  ``correlation``           the covariance Q_n / N_n - mu_n mu_n^T scaled by its diagonal

How ``update`` is computed (chosen by benchmark): per chunk of ~65k pixels, the logits are copied
once into a pixels x 22 float64 matrix whose last column is 1 (transpose and conversion in one pass),
pixels are stably sorted by predicted class, and each class's contiguous block B_n gives Q_n, S_n and
N_n in one matmul B_n^T B_n: one pass of P x 22 x 22 multiply-adds in all, instead of 21 masked passes
over the batch. The prediction itself comes from ``channel_argmax`` (amax, then the first channel equal
to it), which on the CPU is faster than argmax along dim 1 of NCHW.

Why this and not the notebook's per-class mask loop, OpenBLAS, whole-batch matrices, index_add_, padded tiles or
kept work matrices, with the figures: BENCHMARKS.md, Decisions (bench.py's logits group keeps measuring it).
"""
import numpy as np
import torch

from common.constants import NUM_CLASSES

# Pixels per chunk in ``update`` on the CPU: the two (pixels x 22) float64 work matrices stay a few MB, and this
# size was the fastest measured (BENCHMARKS.md, Decisions). A chunk holds whole images when they are smaller.
_CHUNK_PIXELS = 2 ** 16
# On a GPU, small chunks only add kernel launches and host syncs (counts.tolist()); memory is ample.
_CHUNK_PIXELS_GPU = 2 ** 22


class LogitTracker:
    """Accumulates count, sum and second moment of the logits per predicted class (float64, numpy)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        self.num_classes = k = int(num_classes)
        self.count = np.zeros(k, dtype=np.float64)          # N_n (float64 so it adds like the rest)
        self.sum = np.zeros((k, k), dtype=np.float64)       # row n = S_n
        self.sq = np.zeros((k, k, k), dtype=np.float64)     # [n] = Q_n

    # ------------------------------------------------------------------------- accumulation

    @torch.no_grad()
    def update(self, logits, pred=None) -> "LogitTracker":
        """Add a batch: logits (B, K, H, W) or (K, H, W), torch tensor (any device) or numpy array.

        ``pred`` (B, H, W) / (H, W) integer predictions may be passed when already computed; they must
        be the argmax of ``logits`` for the statistics to mean what docs/protocol.md says, but are not
        checked (only their range is). Computed on the logits' device in float64 (MPS, which has no
        float64, falls back to the CPU). Returns self.
        """
        x = _as_tensor(logits)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] != self.num_classes:
            raise ValueError(f"expected logits (B, {self.num_classes}, H, W), got {tuple(x.shape)}")
        if not (x.is_floating_point()):
            raise ValueError(f"logits must be floating point, got {x.dtype}")
        if x.device.type == "mps":
            x = x.cpu()
        p = None
        if pred is not None:
            p = _as_tensor(pred).to(device=x.device)
            if p.ndim == 2:
                p = p.unsqueeze(0)
            if tuple(p.shape) != (x.shape[0],) + tuple(x.shape[2:]):
                raise ValueError(f"pred {tuple(p.shape)} does not match logits {tuple(x.shape)}")
            if p.is_floating_point() or p.dtype == torch.bool:
                raise ValueError(f"pred must be an integer tensor, got {p.dtype}")
            p = p.long()
            if p.numel() and (int(p.min()) < 0 or int(p.max()) >= self.num_classes):
                raise ValueError(f"pred values must lie in 0..{self.num_classes - 1}")

        c, s, q = _class_moments(x, p)
        self.count += c
        self.sum += s
        self.sq += q
        return self

    def merge(self, other: "LogitTracker") -> "LogitTracker":
        """Add another tracker's counts and moments into this one (in place); returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.count += other.count
        self.sum += other.sum
        self.sq += other.sq
        return self

    def __add__(self, other: "LogitTracker") -> "LogitTracker":
        return self.copy().merge(other)

    def __iadd__(self, other: "LogitTracker") -> "LogitTracker":
        return self.merge(other)

    def copy(self) -> "LogitTracker":
        return LogitTracker.from_state_dict(self.state_dict())

    def all_reduce(self) -> "LogitTracker":
        """Sum over the ranks of torch.distributed, if initialised (else nothing); returns self.

        The three arrays travel as one float64 tensor, on the current CUDA device for NCCL.
        """
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        k = self.num_classes
        flat = torch.from_numpy(np.concatenate([self.count, self.sum.ravel(), self.sq.ravel()]))
        flat = flat.to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.cpu().numpy()
        self.count = flat[:k].copy()
        self.sum = flat[k:k + k * k].reshape(k, k).copy()
        self.sq = flat[k + k * k:].reshape(k, k, k).copy()
        return self

    # ------------------------------------------------------------------------- persistence

    def state_dict(self) -> dict:
        """{"count", "sum", "sq"} as float64 numpy copies; ready for ``np.savez(path, **d)``."""
        return {"count": self.count.copy(), "sum": self.sum.copy(), "sq": self.sq.copy()}

    @classmethod
    def from_state_dict(cls, d) -> "LogitTracker":
        """Inverse of ``state_dict``; ``d`` may be the mapping ``np.load`` returns for an .npz file."""
        count = np.asarray(d["count"], dtype=np.float64)
        k = count.shape[0]
        t = cls(k)
        t.count = count.copy()
        t.sum = np.asarray(d["sum"], dtype=np.float64).copy()
        t.sq = np.asarray(d["sq"], dtype=np.float64).copy()
        if count.shape != (k,) or t.sum.shape != (k, k) or t.sq.shape != (k, k, k):
            raise ValueError(f"inconsistent logit state shapes {count.shape}, {t.sum.shape}, "
                             f"{t.sq.shape}")
        return t

    # ------------------------------------------------------------------------- derived statistics

    @property
    def num_pixels(self) -> float:
        return float(self.count.sum())

    def mean(self) -> np.ndarray:
        """(K, K) class-mean logits: row n = mu_n = S_n / N_n; NaN rows for classes never predicted."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = self.sum / self.count[:, None]
        mu[self.count == 0] = np.nan
        return mu

    def covariance(self) -> np.ndarray:
        """(K, K, K): [n] = Q_n / N_n - mu_n mu_n^T (population covariance); NaN for empty classes.

        This is the one-pass formula of docs/protocol.md; it cancels digits when |mean| >> std, which float64
        absorbs for logits (relative error ~1e-16 * (mean/std)^2).
        """
        mu = self.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = self.sq / self.count[:, None, None] - mu[:, :, None] * mu[:, None, :]
        cov[self.count == 0] = np.nan
        return cov

    def correlation(self, rtol: float = 1e-9) -> np.ndarray:
        """(K, K, K) correlation matrices: cov_ij / sqrt(cov_ii cov_jj), diagonal exactly 1.

        NaN in row and column i of class n where class n is empty or logit i has (numerically) zero
        variance within it: var <= rtol * (Q_n)_ii / N_n, i.e. below the cancellation noise of the
        one-pass formula (a logit that is constant over one pixel, or over many, lands there).
        """
        return self._scaled_by_diagonal(self.covariance(), rtol)

    def correlation_notebook(self, rtol: float = 1e-9) -> np.ndarray:
        """(K, K, K): the companion notebook's "correlation", C_n = (Q_n - mu_n mu_n^T) / N_n scaled to
        D^-1/2 C_n D^-1/2 with D = diag(C_n); kept to compare with the paper's figure (colour range 0.8-1).

        It is not a correlation: mu_n mu_n^T is subtracted once instead of N_n times, so
        C_n = Q_n / N_n - mu_n mu_n^T / N_n = cov_n + mu_n mu_n^T (1 - 1/N_n), and the class mean dominates.
        For independent logits of mean -8 and SD 2 it gives 64 / (4 + 64) = 0.94 off the diagonal, where
        the true correlation (``correlation``) is 0. NaN for empty classes and, as in ``correlation``, in
        row and column i where C_ii <= rtol * (Q_n)_ii / N_n (a class predicted at exactly one pixel has
        C_n = 0, so all of it is NaN).
        """
        mu = self.mean()                                               # NaN rows for empty classes
        with np.errstate(invalid="ignore", divide="ignore"):
            c = (self.sq - mu[:, :, None] * mu[:, None, :]) / self.count[:, None, None]
        c[self.count == 0] = np.nan
        return self._scaled_by_diagonal(c, rtol)

    def _scaled_by_diagonal(self, mat: np.ndarray, rtol: float) -> np.ndarray:
        """mat_n,ij / sqrt(mat_n,ii mat_n,jj) per class n, diagonal exactly 1; NaN in row and column i
        where mat_n,ii <= rtol * (Q_n)_ii / N_n (zero up to the rounding of Q_n) or the class is empty."""
        diag = np.diagonal(mat, axis1=1, axis2=2)                      # (K, K): [n, i]
        with np.errstate(invalid="ignore", divide="ignore"):
            second = np.diagonal(self.sq, axis1=1, axis2=2) / self.count[:, None]
            ok = diag > rtol * second                                  # False for NaN too
            sd = np.where(ok, np.sqrt(np.where(ok, diag, 1.0)), np.nan)
            out = mat / sd[:, :, None] / sd[:, None, :]
        idx = np.arange(self.num_classes)
        out[:, idx, idx] = np.where(ok, 1.0, np.nan)
        return out

    def distance_matrix(self) -> np.ndarray:
        """(K, K) D_ij = ||mu_i - mu_j||_2 between class-mean logit vectors; NaN rows/cols for empty."""
        mu = self.mean()
        # Explicit differences, not the |a|^2 + |b|^2 - 2ab expansion, which cancels for close means.
        return np.sqrt(((mu[:, None, :] - mu[None, :, :]) ** 2).sum(-1))

    def distance_margin(self) -> float:
        """"Distance" over the predicted classes (reported as ``distance_predicted``): the mean over the
        foreground classes n with N_n > 0 of mu_n[n] - mu_n[0], the margin of the predicted class's own
        logit over the background logit (class 0) at the pixels predicted n.

        NaN if no foreground class was ever predicted. ``distance_notebook`` is the paper's version.
        """
        mu = self.mean()
        fg = np.arange(1, self.num_classes)
        fg = fg[self.count[fg] > 0]
        if fg.size == 0:
            return float("nan")
        return float(np.mean(mu[fg, fg] - mu[fg, 0]))

    def distance_notebook(self) -> float:
        """The companion notebook's "Distance" (the paper's; reported as ``distance``): the mean over all
        K - 1 = 20 foreground classes n of mu_n[n] - mu_n[0], with the means of never-predicted classes set
        to 0, so each of them adds 0 to the sum and still counts in the division by 20.

        It is ``distance_margin`` times (foreground classes predicted) / 20: lower when a model predicts
        fewer classes, whatever its margins. NaN only when the tracker holds no pixel at all.
        """
        if self.num_pixels == 0:
            return float("nan")
        mu = np.nan_to_num(self.mean(), nan=0.0)
        fg = np.arange(1, self.num_classes)
        return float(np.mean(mu[fg, fg] - mu[fg, 0]))

    def __repr__(self):
        present = int((self.count > 0).sum())
        return (f"LogitTracker(num_classes={self.num_classes}, pixels={self.num_pixels:.0f}, "
                f"classes_predicted={present})")


# ----------------------------------------------------------------------------- helpers

def _as_tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach()
    a = np.asarray(a)
    if not a.flags.writeable:          # torch.from_numpy warns on read-only arrays (np.load mmap)
        a = a.copy()
    return torch.from_numpy(a)


def _chunks(batch: int, pixels: int, chunk: int):
    """(b0, b1, p0, p1) ranges covering batch x pixels: groups of whole images, or parts of one image."""
    if pixels >= chunk:
        for b in range(batch):
            for p0 in range(0, pixels, chunk):
                yield b, b + 1, p0, min(p0 + chunk, pixels)
    else:
        step = max(1, chunk // max(pixels, 1))
        for b0 in range(0, batch, step):
            yield b0, min(b0 + step, batch), 0, pixels


_GRAM_TILE = 2048   # rows per tile in ``_gram`` (1024-4096 measured alike)


def _gram(block: torch.Tensor, tile: int = _GRAM_TILE) -> torch.Tensor:
    """block^T block for a tall (N, C) float64 block, as a sum of (C, tile) @ (tile, C) products.

    One batched matmul over row tiles plus a sum, because it beat one (C, N) @ (N, C) matmul for these tall
    blocks on the CPU (BENCHMARKS.md, Decisions); the rows left over go through one matmul.
    """
    n = block.shape[0]
    full = n - n % tile
    out = block[full:].T @ block[full:]
    if full:
        tiles = block[:full].view(-1, tile, block.shape[1])
        out += torch.bmm(tiles.transpose(1, 2), tiles).sum(0)
    return out


def channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(1)`` for (B, K, ...) logits, (B, K, H, W) in this project: first maximum on ties, NaN counted
    as the maximum.

    On the CPU, argmax and max(1).indices reduce NCHW along a strided axis slowly; amax is vectorised there.
    So: top = amax over channels; each channel c equal to it gets the weight K - c (uint8), and K minus the
    largest weight is the first such channel. It keeps bench.py's logits_vs_forward under its target, where
    argmax does not (BENCHMARKS.md, Decisions). On a GPU argmax is already fast.
    """
    if x.dim() < 2 or x.device.type != "cpu" or x.shape[1] > 255 or not x.is_floating_point():
        return x.argmax(1)
    k = x.shape[1]
    top = x.amax(1, keepdim=True)
    if torch.isnan(top).any():   # NaN equals nothing: leave those batches to argmax's own rule
        return x.argmax(1)
    weight = torch.arange(k, 0, -1, dtype=torch.uint8).view(1, k, *[1] * (x.dim() - 2))
    return torch.mul(x == top, weight).amax(1).to(torch.int64).neg_().add_(k)


def _class_moments(x: torch.Tensor, pred, chunk=None):
    """count (K,), S (K, K), Q (K, K, K) as float64 numpy for logits x (B, K, H, W) on any device.

    Per chunk: one pass copies the logits into a pixels x (K+1) float64 matrix whose last column is 1,
    a stable sort by predicted class makes each class one contiguous block B_n, and one gemm
    B_n^T B_n gives Q_n, S_n (the ones row) and N_n together.
    """
    b, k, h, w = x.shape
    device = x.device
    if pred is None:
        pred = channel_argmax(x)
    if chunk is None:
        chunk = _CHUNK_PIXELS if device.type == "cpu" else _CHUNK_PIXELS_GPU
    xv = x.permute(0, 2, 3, 1).reshape(b, h * w, k)       # a view for NCHW and channels-last alike
    pv = pred.reshape(b, h * w)
    m = torch.zeros((k, k + 1, k + 1), dtype=torch.float64, device=device)
    for b0, b1, p0, p1 in _chunks(b, h * w, chunk):
        xp = torch.empty(((b1 - b0) * (p1 - p0), k + 1), dtype=torch.float64, device=device)
        # Transpose and widen in one pass (float64 holds float32 exactly); the last column is 1.
        xp.view(b1 - b0, p1 - p0, k + 1)[..., :k].copy_(xv[b0:b1, p0:p1])
        xp[:, k] = 1.0
        p = pv[b0:b1, p0:p1].reshape(-1)
        counts = torch.bincount(p, minlength=k)
        # Stable: each block keeps its pixels' original order, so sums do not depend on the sort.
        blocks = xp[torch.argsort(p, stable=True)]
        for n, blk in enumerate(torch.split(blocks, counts.tolist())):
            if blk.shape[0]:
                m[n] += _gram(blk)
    m = (m + m.transpose(1, 2)) * 0.5     # gemm need not return a bit-symmetric B^T B
    m = m.cpu().numpy()
    return m[:, k, k].copy(), m[:, k, :k].copy(), m[:, :k, :k].copy()

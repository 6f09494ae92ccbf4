"""Calibration of the 21-way softmax: reliability bins, ECE, NLL and Brier score, additive over images.

    cal = Calibration(n_rows=len(images))          # one row per image (the bootstrap resamples rows)
    cal.update(logits, labels, rows=positions)     # (B, 21, H, W) logits, (B, H, W) labels with 255
    cal.ece(), cal.nll(), cal.brier()              # over every non-255 pixel seen
    cal.state_dict()                               # -> numpy arrays for np.savez (totals and per row)
    Calibration.from_state_dict(npz) + other       # conditions add up; Calibration.concat(shards, order)

What is measured, over the pixels whose label is not 255, from the model's 21 output channels as built
(for IBE and SCrIBE that is channel 0 = -logsumexp of the 20 foreground logits, as the models output
them), with p = softmax over those 21 channels:

    confidence   c = max_k p_k, the top-1 probability; the prediction is the argmax of the logits (first
                 maximum on ties), the one every other metric scores
    bins         15 equal-width bins on [0, 1]: bin i holds i/15 <= c < (i+1)/15, and c = 1 goes to the
                 last bin (i = 14). The index is floor(15 c) for the float32 (or float64) c, computed in
                 float64, where 15 c is exact, so the rule holds at the edges to the last bit.
    per bin      n_b (pixels, int64), conf_b = sum of c (float64), acc_b = pixels predicted correctly
                 (int64: a sum of 0/1 accuracies is a count, so it adds up exactly)
    ECE          sum_b (n_b / N) |acc_b / n_b - conf_b / n_b| = sum_b |acc_b - conf_b| / N (empty bins add 0)
    NLL          sum of -log p_y over the pixels / N, y the label, from the log-softmax
                 log p_y = (z_y - max z) - log sum_k exp(z_k - max z), never from log(softmax), which is
                 -inf wherever p_y underflows in float32
    Brier        sum over pixels of sum_k (p_k - [k = y])^2, / N; per pixel sum_k p_k^2 - 2 p_y + 1

Everything is kept per row (an image, in the sweep), as int64 counts and float64 sums, and the condition's
totals are the sums over rows in row order. An image's row is a sum in pixel order whatever else its batch
holds, so on the CPU a condition split over processes or shards and put back together in image order gives
the same rows and totals bit for bit (for the same logits), and two halves of the images add up to the whole;
on a GPU the float64 sums are atomic adds in no fixed order (counts stay exact). ``update`` is torch-only and
never waits for the device: one exp pass over the logits, then on a GPU ``index_add_`` into fixed-size tables
on the logits' device (``bincount`` would read its largest index back to the host), on the CPU ``bincount``
(faster there, and serial). Nothing leaves the device until ``state_dict`` or a metric is asked for.
"""
import numpy as np
import torch
import torch.distributed as dist

from .constants import IGNORE_INDEX
from .logits import channel_argmax

BINS = 15
PREFIX = "calib_"   # key prefix of the arrays in a confusion NPZ (evaluate_corruptions.py)
# The per-row tables as stored (``state_dict`` adds the prefix; the totals are count, conf_sum, acc_sum,
# nll_sum, brier_sum and pixels).
ROW_KEYS = ("image_count", "image_conf_sum", "image_acc_sum", "image_nll_sum", "image_brier_sum")


def bin_index(conf: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """The bin of each confidence in [0, 1]: floor(bins * c), with c = 1 in the last bin (int64).

    In float64, where bins * c is exact for a float32 c (24 + 4 bits), so a confidence exactly on an edge
    i / bins lands in bin i, and one a bit below it in bin i - 1, as the half-open bins say.
    """
    return (conf.double() * bins).floor_().clamp_(0, bins - 1).long()   # a copy: conf is not changed


def metrics_from_bins(count, conf_sum, acc_sum, nll_sum, brier_sum):
    """(ece, nll, brier) from bin totals (numpy; any leading dimensions, bins last); NaN where N = 0."""
    count, conf_sum, acc_sum = (np.asarray(a) for a in (count, conf_sum, acc_sum))
    n = count.sum(-1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ece = np.abs(acc_sum - conf_sum).sum(-1) / n
        nll = np.asarray(nll_sum, dtype=np.float64) / n
        brier = np.asarray(brier_sum, dtype=np.float64) / n
    return ece, nll, brier


def _channel_sum(e: torch.Tensor) -> torch.Tensor:
    """e.sum(1) for (B, K, ...). On the CPU a sum along the strided channel axis of NCHW is slow; a
    (1, K) @ (K, pixels) product per image does the same sum (in another order: float32 rounding) 2-3x
    faster. One product per image, not one matmul broadcast over the batch: that one folds the batch into
    a single gemv whose rounding of an image depends on the images beside it (2 + 2 images gave other
    bits than 4), and an image's row must not."""
    if e.device.type != "cpu" or not e.is_contiguous():
        return e.sum(1)
    b, k = e.shape[:2]
    ones = torch.ones((1, k), dtype=e.dtype)
    flat = e.view(b, k, -1)
    return torch.cat([ones @ flat[i] for i in range(b)]).view(b, *e.shape[2:])


def _add_at(table: torch.Tensor, index: torch.Tensor, values) -> None:
    """table[index[i]] += values[i] (1 where values is None), in the table's dtype. CPU: one bincount,
    serial in pixel order (3-8x faster than index_add_ there); elsewhere index_add_, which never reads
    anything back to the host (bincount sizes its output from the largest index)."""
    if values is not None:
        values = values.to(table.dtype)
    if table.device.type == "cpu":
        if values is None:
            table += torch.bincount(index, minlength=table.numel())
        elif table.dtype == torch.int64:       # counts of True: an unweighted bincount of the selected slots
            table += torch.bincount(index[values.bool()], minlength=table.numel())
        else:
            table += torch.bincount(index, weights=values, minlength=table.numel())
    else:
        table.index_add_(0, index, torch.ones_like(index) if values is None else values)


class Calibration:
    """Reliability bins, NLL and Brier sums of ``n_rows`` rows (images), on the device of the logits."""

    def __init__(self, n_rows: int = 1, bins: int = BINS):
        self.n_rows, self.bins = int(n_rows), int(bins)
        self._tables = None            # allocated at the first update, on the logits' device
        self._from = None              # or numpy tables, when built from saved arrays

    # ------------------------------------------------------------------------------ accumulating

    @torch.inference_mode(False)   # normal tensors: updated in and out of inference mode alike
    def _allocate(self, device):
        n, b = self.n_rows, self.bins
        # One spare slot at the end of each bin table takes the ignored pixels (no boolean selection,
        # which would need the count on the host).
        self._tables = {"count": torch.zeros(n * b + 1, dtype=torch.int64, device=device),
                        "conf": torch.zeros(n * b + 1, dtype=torch.float64, device=device),
                        "acc": torch.zeros(n * b + 1, dtype=torch.int64, device=device),
                        "nll": torch.zeros(n + 1, dtype=torch.float64, device=device),
                        "brier": torch.zeros(n + 1, dtype=torch.float64, device=device)}
        if self._from is not None:     # continue from saved numbers
            for key, value in self._from.items():
                self._tables[key][:value.size] += torch.from_numpy(value.reshape(-1)).to(device)
            self._from = None

    def update(self, logits: torch.Tensor, labels: torch.Tensor, rows=None, pred: torch.Tensor = None,
               top: torch.Tensor = None) -> None:
        """Add one batch: ``logits`` (B, K, ...) as the model outputs them, ``labels`` (B, ...) with 255 =
        ignore, ``rows`` (B,) the row of each image (None: row 0 for all). ``pred`` (the argmax over the K
        channels, first maximum on ties) and ``top`` (the maximum logit, (B, ...)) if the caller has them;
        else computed here."""
        x = logits.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()              # bf16 / fp16 under autocast: the softmax in float32
        b, k = x.shape[:2]
        if self._tables is None or self._tables["count"].device != x.device:
            if self._tables is not None:
                self._from = {key: v.cpu().numpy() for key, v in self._tables.items()}
            self._allocate(x.device)
        t = self._tables
        if pred is None:
            pred = channel_argmax(x)
        labels = labels.to(x.device).long()
        valid = labels != IGNORE_INDEX
        y = torch.where(valid, labels, 0).unsqueeze(1)
        top = (x.gather(1, pred.unsqueeze(1)) if top is None else top.to(x.dtype).unsqueeze(1))  # max_k z_k
        # A fresh tensor: one kept per thread saved ~9 ms of 24 at 8x21x224x224 (33.7 MB, above the 32 MB
        # that glibc's malloc serves from its heap: 8,000 page faults) and nothing at 16x21x96x96.
        e = torch.sub(x, top).exp_()                               # exp(z - max z): 1 at the top, in (0, 1]
        s = _channel_sum(e)                                        # >= 1, so c = 1 / s <= 1 exactly
        conf = s.reciprocal()
        z_y = x.gather(1, y).squeeze(1).sub_(top.squeeze(1))       # z_y - max z <= 0
        nll = s.log().sub_(z_y)                                    # -log_softmax(z)_y
        p_y = z_y.exp_().mul_(conf)                                # exp(z_y - max z) / s
        # sum_k p_k^2 - 2 p_y + 1 with sum_k p_k^2 = sum_k e_k^2 / s^2
        brier = _channel_sum(e.square_()).mul_(conf.square()).sub_(p_y, alpha=2).add_(1)
        if rows is None:
            rows = torch.zeros(b, dtype=torch.int64, device=x.device)
        else:
            rows = torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows,
                                   dtype=torch.int64).to(x.device, non_blocking=True)
        row = rows.view(b, *[1] * (conf.dim() - 1))
        conf = conf.double()
        slot = torch.where(valid, bin_index(conf, self.bins).add_(row * self.bins), self.n_rows * self.bins)
        pix = torch.where(valid, row, self.n_rows)
        correct = pred == labels
        for key, where, value in (("count", slot, None), ("conf", slot, conf), ("acc", slot, correct),
                                  ("nll", pix, nll), ("brier", pix, brier)):
            _add_at(t[key], where.reshape(-1), None if value is None else value.reshape(-1))

    def all_reduce(self) -> None:
        """Sum the tables over torch.distributed ranks (each rank's own rows, zeros elsewhere); no-op in
        one process. Counts are int64 and add exactly; float64 sums to the rounding of the reduction order."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._tables is None:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            self._allocate(device)
        for value in self._tables.values():
            dist.all_reduce(value)

    # ---------------------------------------------------------------------------------- reading

    def rows(self) -> dict:
        """Per-row numpy tables: image_count (n, bins) int64, image_conf_sum (n, bins) float64,
        image_acc_sum (n, bins) int64, image_nll_sum (n,) and image_brier_sum (n,) float64."""
        n, b = self.n_rows, self.bins
        if self._tables is not None:
            raw = {k: v.cpu().numpy() for k, v in self._tables.items()}
        elif self._from is not None:
            raw = self._from
        else:
            raw = {"count": np.zeros(n * b, np.int64), "conf": np.zeros(n * b), "acc": np.zeros(n * b, np.int64),
                   "nll": np.zeros(n), "brier": np.zeros(n)}
        return {"image_count": raw["count"][:n * b].reshape(n, b).copy(),
                "image_conf_sum": raw["conf"][:n * b].reshape(n, b).copy(),
                "image_acc_sum": raw["acc"][:n * b].reshape(n, b).copy(),
                "image_nll_sum": raw["nll"][:n].copy(), "image_brier_sum": raw["brier"][:n].copy()}

    def totals(self) -> dict:
        """The condition's totals: sums over the rows, in row order (numpy)."""
        r = self.rows()
        count = r["image_count"].sum(0)
        return {"count": count, "conf_sum": r["image_conf_sum"].sum(0), "acc_sum": r["image_acc_sum"].sum(0),
                "nll_sum": np.float64(r["image_nll_sum"].sum()), "brier_sum": np.float64(r["image_brier_sum"].sum()),
                "pixels": np.int64(count.sum())}

    def metrics(self) -> dict:
        """{"ece", "nll", "brier"} as floats; NaN when no pixel was scored."""
        t = self.totals()
        ece, nll, brier = metrics_from_bins(t["count"], t["conf_sum"], t["acc_sum"], t["nll_sum"], t["brier_sum"])
        return {"ece": float(ece), "nll": float(nll), "brier": float(brier)}

    def ece(self) -> float:
        return self.metrics()["ece"]

    def nll(self) -> float:
        return self.metrics()["nll"]

    def brier(self) -> float:
        return self.metrics()["brier"]

    # ---------------------------------------------------------------------------- saving, adding

    def state_dict(self, prefix: str = PREFIX) -> dict:
        """Totals (count, conf_sum, acc_sum: (bins,); nll_sum, brier_sum, pixels: scalars) and the per-row
        tables, as numpy arrays named ``prefix + key`` for np.savez."""
        out = {prefix + k: v for k, v in self.totals().items()}
        out.update({prefix + k: v for k, v in self.rows().items()})
        return out

    @classmethod
    def from_rows(cls, rows: dict) -> "Calibration":
        """From per-row numpy tables as ``rows()`` returns them."""
        count = np.asarray(rows["image_count"], dtype=np.int64)
        new = cls(count.shape[0], count.shape[1])
        new._from = {"count": count.reshape(-1),
                     "conf": np.asarray(rows["image_conf_sum"], dtype=np.float64).reshape(-1),
                     "acc": np.asarray(rows["image_acc_sum"], dtype=np.int64).reshape(-1),
                     "nll": np.asarray(rows["image_nll_sum"], dtype=np.float64).reshape(-1),
                     "brier": np.asarray(rows["image_brier_sum"], dtype=np.float64).reshape(-1)}
        return new

    @classmethod
    def from_state_dict(cls, state, prefix: str = PREFIX):
        """From ``state_dict()``'s arrays (a loaded NPZ will do); None when they are absent (files written
        before calibration was measured)."""
        keys = getattr(state, "files", None) or list(state.keys())
        if any(prefix + k not in keys for k in ROW_KEYS):
            return None
        return cls.from_rows({k: np.asarray(state[prefix + k]) for k in ROW_KEYS})

    def __add__(self, other: "Calibration") -> "Calibration":
        """Row-wise sum (the same rows seen in two parts, or conditions summed into one)."""
        a, b = self.rows(), other.rows()
        if a["image_count"].shape != b["image_count"].shape:
            raise ValueError(f"cannot add calibration tables of {a['image_count'].shape} and "
                             f"{b['image_count'].shape} rows x bins")
        return Calibration.from_rows({k: a[k] + b[k] for k in ROW_KEYS})

    def merge(self, other: "Calibration") -> "Calibration":
        """In place: self += other (row-wise); returns self."""
        summed = self + other
        self._tables, self._from = None, summed._from
        return self

    @classmethod
    def concat(cls, parts, order=None) -> "Calibration":
        """The rows of several parts (shards of one condition, each over its own images) stacked, then put
        in ``order`` (indices into the stacked rows, e.g. sorting by image id); None keeps them as stacked."""
        tables = [p.rows() for p in parts]
        out = {k: np.concatenate([t[k] for t in tables]) for k in ROW_KEYS}
        if order is not None:
            out = {k: v[np.asarray(order)] for k, v in out.items()}
        return cls.from_rows(out)

    def __repr__(self):
        t = self.totals()
        return f"Calibration(rows={self.n_rows}, bins={self.bins}, pixels={int(t['pixels'])})"

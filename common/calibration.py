"""Calibration and failure detection of a model's outputs, read two ways, additive over images.

    cal = Calibration(n_rows=len(images))          # one row per image (the bootstrap resamples rows)
    cal.update(logits, labels, rows=positions)     # (B, K, H, W) logits (K = 21 on VOC), (B, H, W) labels, 255
    cal.metrics()                                  # ece, ece_adaptive, nll, brier, aurc, auroc, ... over the pixels
    cal.state_dict()                               # -> numpy arrays for np.savez (totals and per row)
    Calibration.from_state_dict(npz) + other       # conditions add up; Calibration.concat(shards, order)
    Calibration(n, reading="sigmoid", temperature=t, classwise=True)   # another reading (below)

Written below for VOC's 21 classes; every formula holds for any number of classes K (``num_classes``, the
class-wise table's rows: the dataset's classes).

The formulas, with their approximations and sizes, are in docs/calibration.md; in short. Over the pixels whose
label is not 255, from the model's 21 output channels z as built (for IBE and SCrIBE channel 0 is
-logsumexp of the 20 foreground logits), divided by the temperature T (1 unless fitted, ``fit_temperature``);
the prediction is always the argmax of z (first maximum on ties), the one every other metric scores:

    reading "softmax" (what the baseline and IBE were trained to produce): p = softmax(z / T) over the 21
        channels; confidence c = max_k p_k; NLL = -log p_y; Brier = sum_k (p_k - [k = y])^2
    reading "sigmoid" (SCrIBE's own, trained with per-class BCE): q_k = sigmoid(z_k / T) per class, one vs rest;
        confidence c = q_pred (the top-label sigmoid); NLL = sum_k -[k = y] log q_k - [k != y] log(1 - q_k)
        = sum_k softplus(z_k / T) - z_y / T (the BCE summed over the 21 classes); Brier = sum_k (q_k - [k = y])^2

    bins         15 equal-width bins on [0, 1]: bin i holds i/15 <= c < (i+1)/15, and c = 1 goes to the
                 last bin (i = 14). The index is floor(15 c) for the float32 (or float64) c, computed in
                 float64, where 15 c is exact, so the rule holds at the edges to the last bit.
    per bin      n_b (pixels, int64), conf_b = sum of c (float64), acc_b = pixels predicted correctly (int64)
    ECE          sum_b (n_b / N) |acc_b / n_b - conf_b / n_b| = sum_b |acc_b - conf_b| / N (empty bins add 0)
    fine bins    FINE_BINS bins of width FINE_WIDTH on the log-odds u = log(c / (1 - c)) from FINE_LOW (the
                 first and last bins also take everything below and above): per bin pixels, correct pixels
                 and the sum of c. From them, additively: adaptive ECE (15 equal-mass bins made of whole fine
                 bins), AURC and failure-detection AUROC (exact up to the order of pixels within one fine bin;
                 the largest error either can have is kept beside it: ``aurc_tie``, ``auroc_tie``)
    classwise    (optional, totals only) the 21 one-vs-rest probabilities of every pixel in 15 equal-width
                 bins per class, with the number of pixels of that class: class-wise ECE = mean over the 21
                 classes of sum_b |pos_kb - conf_kb| / N

The softmax log-probabilities come from the log-sum-exp form, never from log(softmax), which is -inf wherever
p_y underflows in float32; the sigmoid's from softplus (log1p(exp(-|z|)) + max(z, 0)).

Everything but the class-wise table is kept per row (an image, in the sweep), as int64 counts and float64 sums,
and the condition's totals are the sums over rows in row order. An image's row is a sum in pixel order whatever
else its batch holds, so on the CPU a condition split over processes or shards and put back together in image
order gives the same rows and totals bit for bit (for the same logits), and two halves of the images add up to
the whole; on a GPU the float64 sums are atomic adds in no fixed order (counts stay exact). ``update`` is
torch-only and never waits for the device: on a GPU ``index_add_`` into fixed-size tables on the logits' device
(``bincount`` would read its largest index back to the host), on the CPU ``bincount`` (faster there, and
serial). Nothing leaves the device until ``state_dict`` or a metric is asked for. The metrics from the binned
tables (numpy) are in common/calibration_metrics.py.
"""
import math

import numpy as np
import torch
import torch.distributed as dist

from .calibration_metrics import BINS, classwise_ece, metrics_from_bins, rank_metrics_from_fine
from .constants import IGNORE_INDEX, NUM_CLASSES
from .logits import channel_argmax

READINGS = ("softmax", "sigmoid")
# Log-odds bins for the rank metrics: 0.25 wide from -6 (c = 0.0025) to 10 (c = 0.99995); a pixel's
# confidence moves by at most a factor e^0.25 in odds within one bin.
FINE_BINS, FINE_LOW, FINE_WIDTH = 64, -6.0, 0.25
PREFIX = "calib_"   # key prefix of the softmax reading's arrays in a confusion NPZ (evaluate_corruptions.py)
# The per-row tables as stored (``state_dict`` adds the prefix; the totals are count, conf_sum, acc_sum,
# nll_sum, brier_sum and pixels).
ROW_KEYS = ("image_count", "image_conf_sum", "image_acc_sum", "image_nll_sum", "image_brier_sum")
# The fine log-odds histograms per row (absent from files written before them).
FINE_KEYS = ("image_fine_count", "image_fine_correct", "image_fine_conf_sum")
# The class-wise table (totals only): per class and bin the pixels, the sum of q_k, the pixels of class k.
CLASSWISE_KEYS = ("classwise_count", "classwise_conf_sum", "classwise_pos")


def prefix_of(reading: str, temperature_scaled: bool = False) -> str:
    """The NPZ key prefix of a reading: calib_ (softmax, as before), calib_sigmoid_, calib_softmax_ts_,
    calib_sigmoid_ts_ (temperature-scaled)."""
    if reading == "softmax" and not temperature_scaled:
        return PREFIX
    return f"{PREFIX}{reading}_{'ts_' if temperature_scaled else ''}"


def bin_index(conf: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """The bin of each confidence in [0, 1]: floor(bins * c), with c = 1 in the last bin (int64).

    In float64, where bins * c is exact for a float32 c (24 + 4 bits), so a confidence exactly on an edge
    i / bins lands in bin i, and one a bit below it in bin i - 1, as the half-open bins say.
    """
    return (conf.double() * bins).floor_().clamp_(0, bins - 1).long()   # a copy: conf is not changed


def fine_index(logodds: torch.Tensor) -> torch.Tensor:
    """The fine bin of each log-odds u: floor((u - FINE_LOW) / FINE_WIDTH), clamped to [0, FINE_BINS - 1]
    (+inf, c = 1, in the last; NaN cannot occur: u comes from finite logits)."""
    return logodds.double().sub(FINE_LOW).div_(FINE_WIDTH).floor_().clamp_(0, FINE_BINS - 1).long()


def reading_stats(x: torch.Tensor, y: torch.Tensor, top: torch.Tensor, reading: str, temperature: float = 1.0):
    """Per pixel (conf, log-odds of conf, nll, brier), float32 (B, ...), of logits x (B, K, ...) (float32 or
    float64) with labels y (B, 1, ...) (ignored pixels any class) and top = max_k x_k (B, 1, ...).
    Also returns the tensor of the 21 per-class probabilities when reading is sigmoid (for class-wise bins)."""
    inv = 1.0 / float(temperature)
    if reading == "softmax":
        # A fresh tensor: keeping one per thread was faster only at sweep-sized batches, and calibration stays
        # within its share of the forward without it (BENCHMARKS.md, Decisions).
        e = torch.sub(x, top)
        if inv != 1.0:
            e.mul_(inv)
        e.exp_()                                                   # exp((z - max z) / T): 1 at the top
        s = _channel_sum(e)                                        # >= 1, so c = 1 / s <= 1 exactly
        conf = s.reciprocal()
        z_y = x.gather(1, y).squeeze(1).sub_(top.squeeze(1))       # z_y - max z <= 0
        if inv != 1.0:
            z_y.mul_(inv)
        nll = s.log().sub_(z_y)                                    # -log_softmax(z / T)_y
        p_y = z_y.exp_().mul_(conf)
        # sum_k p_k^2 - 2 p_y + 1 with sum_k p_k^2 = sum_k e_k^2 / s^2
        brier = _channel_sum(e.square_()).mul_(conf.square()).sub_(p_y, alpha=2).add_(1)
        logodds = (s - 1).log_().neg_()                            # log(c / (1 - c)) = -log(s - 1)
        return conf, logodds, nll, brier, None
    if reading == "sigmoid":
        z = x * inv if inv != 1.0 else x
        # softplus(z) = log(1 + e^z) and sigmoid(z), each one fused kernel that neither overflows nor loses
        # the small values (softplus returns z itself above 20, where log1p(e^-z) < 2e-9 is below float32's
        # resolution of z).
        nll = _channel_sum(torch.nn.functional.softplus(z)).sub_(z.gather(1, y).squeeze(1))   # sum_k BCE(z_k, [k=y])
        q = torch.sigmoid(z)
        q_y = q.gather(1, y).squeeze(1)
        brier = _channel_sum(q.square()).sub_(q_y, alpha=2).add_(1)
        t = top.squeeze(1) * inv                                   # the top-label log-odds, exactly
        conf = torch.sigmoid(t)
        return conf, t, nll, brier, q
    raise ValueError(f"unknown reading {reading!r} (one of {', '.join(READINGS)})")


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, reading: str = "softmax", low: float = 0.05,
                    high: float = 20.0, tol: float = 1e-6) -> dict:
    """The scalar T > 0 minimising the mean NLL of ``reading`` on (P, K) logits and (P,) labels (no 255s):
    golden-section search on log T over [low, high] to ``tol`` in log T. The NLL is convex in 1 / T for both
    readings (a log-sum-exp, or a sum of softplus, of linear functions of 1/T, minus a linear one), so it has
    one minimum on the line and the search finds it. Returns {"temperature", "nll" (at T), "nll_at_1",
    "pixels"}; a T on either end of the range means the minimum lies at or beyond it (recorded as such)."""
    z = logits.double()
    y = labels.long().view(-1, 1)
    top = z.amax(1, keepdim=True)

    def nll(log_t):
        return float(reading_stats(z, y, top, reading, math.exp(log_t))[2].mean())

    a, b = math.log(low), math.log(high)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    log_t = (a + b) / 2
    return {"temperature": math.exp(log_t), "nll": nll(log_t), "nll_at_1": nll(0.0), "pixels": int(z.shape[0]),
            "at_bound": bool(log_t - math.log(low) < 2 * tol or math.log(high) - log_t < 2 * tol)}


def _channel_sum(e: torch.Tensor) -> torch.Tensor:
    """e.sum(1) for (B, K, ...). On the CPU a sum along the strided channel axis of NCHW is slow; a
    (1, K) @ (K, pixels) product per image does the same sum (in another order: float32 rounding) 2-3x
    faster. One product per image, not one matmul broadcast over the batch: that one folds the batch into
    a single gemv whose rounding of an image depends on the images beside it (2 + 2 images gave other
    bits than 4), and an image's row must not."""
    if e.device.type != "cpu" or not e.is_contiguous() or e.dim() < 3:
        return e.sum(1)
    b, k = e.shape[:2]
    ones = torch.ones((1, k), dtype=e.dtype)
    flat = e.view(b, k, -1)
    return torch.cat([ones @ flat[i] for i in range(b)]).view(b, *e.shape[2:])


def _add_at(table: torch.Tensor, index: torch.Tensor, values) -> None:
    """table[index[i]] += values[i] (1 where values is None), in the table's dtype. CPU: one bincount,
    serial in pixel order (faster than index_add_ there: BENCHMARKS.md, Decisions); elsewhere index_add_, which
    never reads anything back to the host (bincount sizes its output from the largest index)."""
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
        index = index.long()   # the class-wise slots are int32 (cheaper to build on the CPU)
        table.index_add_(0, index, torch.ones_like(index, dtype=table.dtype) if values is None else values)


class Calibration:
    """Reliability bins, fine log-odds bins, NLL and Brier sums of ``n_rows`` rows (images) in one reading
    (``READINGS``) at one temperature, on the device of the logits; ``fine=False`` leaves out the fine bins
    (adaptive ECE, AURC, AUROC), ``classwise=True`` adds the class-wise table (totals only). ``stride=s``
    scores only the pixels (s i, s j) of each image, its subgrid of every s-th row and column: 1 / s^2 of the
    work, an unbiased systematic sample of the pixels (docs/calibration.md, "Pixel subgrid")."""

    def __init__(self, n_rows: int = 1, bins: int = BINS, reading: str = "softmax", temperature: float = 1.0,
                 fine: bool = True, classwise: bool = False, stride: int = 1, num_classes: int = NUM_CLASSES):
        if reading not in READINGS:
            raise ValueError(f"unknown reading {reading!r} (one of {', '.join(READINGS)})")
        if int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = int(stride)
        self.n_rows, self.bins = int(n_rows), int(bins)
        self.reading, self.temperature = reading, float(temperature)
        self.fine, self.classwise = bool(fine), bool(classwise)
        self.num_classes = int(num_classes)   # the class-wise table's rows (the dataset's classes)
        self._tables = None            # allocated at the first update, on the logits' device
        self._from = None              # or numpy tables, when built from saved arrays

    def _sizes(self):
        n, b, f, k = self.n_rows, self.bins, FINE_BINS, self.num_classes
        # One spare slot at the end of each table takes the ignored pixels (no boolean selection, which
        # would need the count on the host).
        sizes = {"count": (n * b + 1, torch.int64), "conf": (n * b + 1, torch.float64),
                 "acc": (n * b + 1, torch.int64), "nll": (n + 1, torch.float64), "brier": (n + 1, torch.float64)}
        if self.fine:
            sizes.update(fine_count=(n * f + 1, torch.int64), fine_correct=(n * f + 1, torch.int64),
                         fine_conf=(n * f + 1, torch.float64))
        if self.classwise:
            sizes.update(cw_count=(k * b + 1, torch.int64), cw_conf=(k * b + 1, torch.float64),
                         cw_pos=(k * b + 1, torch.int64))
        return sizes

    # ------------------------------------------------------------------------------ accumulating

    @torch.inference_mode(False)   # normal tensors: updated in and out of inference mode alike
    def _allocate(self, device):
        self._tables = {key: torch.zeros(size, dtype=dtype, device=device)
                        for key, (size, dtype) in self._sizes().items()}
        if self._from is not None:     # continue from saved numbers
            for key, value in self._from.items():
                if key in self._tables:
                    self._tables[key][:value.size] += torch.from_numpy(value.reshape(-1)).to(device)
            self._from = None

    def update(self, logits: torch.Tensor, labels: torch.Tensor, rows=None, pred: torch.Tensor = None,
               top: torch.Tensor = None) -> None:
        """Add one batch: ``logits`` (B, K, ...) as the model outputs them, ``labels`` (B, ...) with 255 =
        ignore, ``rows`` (B,) the row of each image (None: row 0 for all). ``pred`` (the argmax over the K
        channels, first maximum on ties) and ``top`` (the maximum logit, (B, ...)) if the caller has them;
        else computed here."""
        x = logits.detach()
        if self.stride > 1:            # the subgrid (s i, s j): a contiguous copy of 1 / s^2 of the pixels
            sub = (slice(None), slice(None)) + (slice(None, None, self.stride),) * (x.dim() - 2)
            x, labels = x[sub].contiguous(), labels[sub[1:]]
            pred = None if pred is None else pred[sub[1:]]
            top = None if top is None else top[sub[1:]]
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
        conf, logodds, nll, brier, q = reading_stats(x, y, top, self.reading, self.temperature)
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
        adds = [("count", slot, None), ("conf", slot, conf), ("acc", slot, correct), ("nll", pix, nll),
                ("brier", pix, brier)]
        if self.fine:
            fslot = torch.where(valid, fine_index(logodds).add_(row * FINE_BINS), self.n_rows * FINE_BINS)
            adds += [("fine_count", fslot, None), ("fine_correct", fslot, correct), ("fine_conf", fslot, conf)]
        for key, where, value in adds:
            _add_at(t[key], where.reshape(-1), None if value is None else value.reshape(-1))
        if self.classwise:
            self._add_classwise(x, q, valid, y)

    def _add_classwise(self, x, q, valid, y) -> None:
        """The class-wise table: every pixel's K one-vs-rest probabilities q (None: the softmax's) in their bins."""
        t, k = self._tables, x.shape[1]
        if q is None:              # the softmax's 21 probabilities (rarely wanted; not on the sweep's path)
            q = torch.softmax(x / self.temperature, 1)
        shape = (1, k) + (1,) * (x.dim() - 2)
        # Slot k * bins + floor(bins q_k) computed in float32 as one fused multiply-add and a truncation
        # (the costliest step of the readings: 21 values a pixel). The float32 sum can put a q_k within
        # ~3e-5 of an inner edge into the neighbouring bin; q is clamped below 1 so that no value reaches
        # the next class's bins (bin 14 is [14/15, 1] either way).
        nb = k * self.bins
        offset = torch.arange(0, nb, self.bins, device=x.device, dtype=q.dtype).view(shape)
        cslot = torch.addcmul(offset, q.clamp(max=1 - 1e-4), torch.tensor(float(self.bins), dtype=q.dtype,
                                                                            device=x.device)).to(torch.int32)
        cslot = torch.where(valid.unsqueeze(1), cslot, nb)
        # Every pixel is a positive of exactly one class, its label: its slot there counts one positive.
        _add_at(t["cw_pos"], cslot.gather(1, y).reshape(-1).long(), None)
        _add_at(t["cw_count"], cslot.reshape(-1), None)
        # The probabilities summed in float32 within the batch (a float64 copy of 21 values a pixel cost
        # more than the sum; relative error ~1e-5 of a bin's sum per batch), then added in float64.
        if x.device.type == "cpu":
            t["cw_conf"] += torch.bincount(cslot.reshape(-1), weights=q.reshape(-1), minlength=nb + 1)
        else:
            _add_at(t["cw_conf"], cslot.reshape(-1), q.reshape(-1))

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

    def _raw(self) -> dict:
        if self._tables is not None:
            return {k: v.cpu().numpy() for k, v in self._tables.items()}
        raw = {key: np.zeros(size, np.int64 if dtype == torch.int64 else np.float64)
               for key, (size, dtype) in self._sizes().items()}
        for key, value in (self._from or {}).items():
            if key in raw:
                raw[key][:value.size] += value.reshape(-1)
        return raw

    def rows(self) -> dict:
        """Per-row numpy tables: image_count (n, bins) int64, image_conf_sum (n, bins) float64,
        image_acc_sum (n, bins) int64, image_nll_sum (n,) and image_brier_sum (n,) float64; with the fine
        bins image_fine_count, image_fine_correct (n, F) int64 and image_fine_conf_sum (n, F) float64; with
        the class-wise table classwise_count, classwise_conf_sum, classwise_pos (K, bins), not per row."""
        n, b, f, k = self.n_rows, self.bins, FINE_BINS, self.num_classes
        raw = self._raw()
        out = {"image_count": raw["count"][:n * b].reshape(n, b).copy(),
               "image_conf_sum": raw["conf"][:n * b].reshape(n, b).copy(),
               "image_acc_sum": raw["acc"][:n * b].reshape(n, b).copy(),
               "image_nll_sum": raw["nll"][:n].copy(), "image_brier_sum": raw["brier"][:n].copy()}
        if self.fine:
            out.update(image_fine_count=raw["fine_count"][:n * f].reshape(n, f).copy(),
                       image_fine_correct=raw["fine_correct"][:n * f].reshape(n, f).copy(),
                       image_fine_conf_sum=raw["fine_conf"][:n * f].reshape(n, f).copy())
        if self.classwise:
            out.update(classwise_count=raw["cw_count"][:k * b].reshape(k, b).copy(),
                       classwise_conf_sum=raw["cw_conf"][:k * b].reshape(k, b).copy(),
                       classwise_pos=raw["cw_pos"][:k * b].reshape(k, b).copy())
        return out

    def totals(self) -> dict:
        """The condition's totals: sums over the rows, in row order (numpy); fine_* and classwise_* where kept."""
        r = self.rows()
        count = r["image_count"].sum(0)
        out = {"count": count, "conf_sum": r["image_conf_sum"].sum(0), "acc_sum": r["image_acc_sum"].sum(0),
               "nll_sum": np.float64(r["image_nll_sum"].sum()), "brier_sum": np.float64(r["image_brier_sum"].sum()),
               "pixels": np.int64(count.sum())}
        if self.fine:
            out.update(fine_count=r["image_fine_count"].sum(0), fine_correct=r["image_fine_correct"].sum(0),
                       fine_conf_sum=r["image_fine_conf_sum"].sum(0))
        if self.classwise:
            out.update({key: r[key] for key in CLASSWISE_KEYS})
        return out

    def metrics(self) -> dict:
        """{"ece", "nll", "brier"} as floats, and with the fine bins "ece_adaptive", "aurc", "auroc" and
        their binning error bounds ("*_tie"), with the class-wise table "ece_classwise"; NaN when no pixel
        was scored."""
        t = self.totals()
        ece, nll, brier = metrics_from_bins(t["count"], t["conf_sum"], t["acc_sum"], t["nll_sum"], t["brier_sum"])
        out = {"ece": float(ece), "nll": float(nll), "brier": float(brier)}
        if self.fine:
            out.update({k: float(v) for k, v in
                        rank_metrics_from_fine(t["fine_count"], t["fine_correct"], t["fine_conf_sum"],
                                               self.bins).items()})
        if self.classwise:
            out["ece_classwise"] = classwise_ece(t["classwise_count"], t["classwise_conf_sum"], t["classwise_pos"])
        return out

    def ece(self) -> float:
        return self.metrics()["ece"]

    def nll(self) -> float:
        return self.metrics()["nll"]

    def brier(self) -> float:
        return self.metrics()["brier"]

    # ---------------------------------------------------------------------------- saving, adding

    def state_dict(self, prefix: str = PREFIX) -> dict:
        """Totals (count, conf_sum, acc_sum: (bins,); nll_sum, brier_sum, pixels: scalars; fine_count,
        fine_correct, fine_conf_sum: (F,); classwise_*: (K, bins)) and the per-row tables, as numpy arrays
        named ``prefix + key`` for np.savez, and ``prefix + "temperature"`` (a scalar)."""
        out = {prefix + k: v for k, v in self.totals().items()}
        out.update({prefix + k: v for k, v in self.rows().items() if k.startswith("image_")})
        out[prefix + "temperature"] = np.float64(self.temperature)
        out[prefix + "stride"] = np.int64(self.stride)
        return out

    @classmethod
    def from_rows(cls, rows: dict, reading: str = "softmax", temperature: float = 1.0,
                  stride: int = 1) -> "Calibration":
        """From per-row numpy tables as ``rows()`` returns them (the fine and class-wise ones where present)."""
        count = np.asarray(rows["image_count"], dtype=np.int64)
        classwise = all(k in rows for k in CLASSWISE_KEYS)
        n_classes = np.asarray(rows["classwise_count"]).shape[0] if classwise else NUM_CLASSES
        new = cls(count.shape[0], count.shape[1], reading=reading, temperature=temperature, stride=stride,
                  fine=all(k in rows for k in FINE_KEYS), classwise=classwise, num_classes=n_classes)
        names = {"image_count": "count", "image_conf_sum": "conf", "image_acc_sum": "acc", "image_nll_sum": "nll",
                 "image_brier_sum": "brier", "image_fine_count": "fine_count", "image_fine_correct": "fine_correct",
                 "image_fine_conf_sum": "fine_conf", "classwise_count": "cw_count",
                 "classwise_conf_sum": "cw_conf", "classwise_pos": "cw_pos"}
        new._from = {}
        for key, name in names.items():
            if key in rows:
                kind = np.float64 if ("conf" in key or key in ("image_nll_sum", "image_brier_sum")) else np.int64
                new._from[name] = np.asarray(rows[key], dtype=kind).reshape(-1)
        return new

    @classmethod
    def from_state_dict(cls, state, prefix: str = PREFIX, reading: str = "softmax"):
        """From ``state_dict()``'s arrays (a loaded NPZ will do); None when they are absent (files written
        before calibration was measured). Fine and class-wise tables are read where present."""
        keys = getattr(state, "files", None) or list(state.keys())
        if any(prefix + k not in keys for k in ROW_KEYS):
            return None
        wanted = ROW_KEYS + FINE_KEYS
        rows = {k: np.asarray(state[prefix + k]) for k in wanted if prefix + k in keys}
        rows.update({k: np.asarray(state[prefix + k]) for k in CLASSWISE_KEYS if prefix + k in keys})
        t = float(np.asarray(state[prefix + "temperature"])) if prefix + "temperature" in keys else 1.0
        stride = int(np.asarray(state[prefix + "stride"])) if prefix + "stride" in keys else 1
        return cls.from_rows(rows, reading=reading, temperature=t, stride=stride)

    def __add__(self, other: "Calibration") -> "Calibration":
        """Row-wise sum (the same rows seen in two parts, or conditions summed into one); the fine and
        class-wise tables where both have them."""
        a, b = self.rows(), other.rows()
        if a["image_count"].shape != b["image_count"].shape:
            raise ValueError(f"cannot add calibration tables of {a['image_count'].shape} and "
                             f"{b['image_count'].shape} rows x bins")
        return Calibration.from_rows({k: a[k] + b[k] for k in a if k in b}, self.reading, self.temperature,
                                     self.stride)

    def merge(self, other: "Calibration") -> "Calibration":
        """In place: self += other (row-wise); returns self."""
        summed = self + other
        self._tables, self._from = None, summed._from
        self.fine, self.classwise = summed.fine, summed.classwise
        return self

    @classmethod
    def concat(cls, parts, order=None) -> "Calibration":
        """The rows of several parts (shards of one condition, each over its own images) stacked, then put
        in ``order`` (indices into the stacked rows, e.g. sorting by image id); None keeps them as stacked.
        Class-wise tables (not per row) are summed."""
        tables = [p.rows() for p in parts]
        keys = [k for k in tables[0] if all(k in t for t in tables)]
        out = {}
        for k in keys:
            if k.startswith("image_"):
                out[k] = np.concatenate([t[k] for t in tables])
                if order is not None:
                    out[k] = out[k][np.asarray(order)]
            else:
                out[k] = sum(t[k] for t in tables)
        return cls.from_rows(out, parts[0].reading, parts[0].temperature, parts[0].stride)

    def __repr__(self):
        t = self.totals()
        return (f"Calibration({self.reading}, T={self.temperature:g}, rows={self.n_rows}, bins={self.bins}, "
                f"pixels={int(t['pixels'])})")


# The readings the sweep measures, by name: (reading, temperature-scaled?). Their NPZ prefixes: ``prefix_of``.
VARIANTS = {"softmax": ("softmax", False), "sigmoid": ("sigmoid", False), "softmax_ts": ("softmax", True),
            "sigmoid_ts": ("sigmoid", True)}

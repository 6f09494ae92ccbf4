"""What one model accumulates over one condition of the sweep (``ConditionStats``), how parts over disjoint
images add up to the whole (the shards of --merge, the ranks of a torchrun sweep), and what it becomes: a
metrics.jsonl row and the condition's two NPZ files (docs/outputs.md)."""
import numpy as np
import torch

from common import results
from common.calibration import VARIANTS, Calibration, prefix_of
from common.constants import IGNORE_INDEX, NUM_CLASSES
from common.corruptions import corruption_number
from common.logits import LogitTracker, channel_argmax
from common.metrics import miou_from_confusion
from common.results import CLEAN, finite_or_none


class ConditionStats:
    """Everything one model accumulates over one condition: confusion, per-image counts, logits, END,
    calibration (per image, on the logits' device).

    ``calibrations`` holds every reading (common/calibration.py ``VARIANTS``): "softmax" (also
    ``calibration``), "sigmoid" (with the class-wise table), and with ``temperatures`` ({"softmax": T,
    "sigmoid": T}, fitted before the sweep) "softmax_ts" and "sigmoid_ts" at those temperatures.

    ``num_classes``: the dataset's K (21 on VOC); ``has_background``: class 0 is a background class. Without one,
    END (defined by the background channel) is not accumulated and its row field is null."""

    def __init__(self, n_images, temperatures=None, stride=1, num_classes=NUM_CLASSES, has_background=True):
        k = self.num_classes = int(num_classes)
        self.has_background = bool(has_background)
        self.confusion = np.zeros((k, k), dtype=np.int64)
        self.per_image = np.zeros((n_images, k, k), dtype=np.int64)
        self.tracker = LogitTracker(k)
        self.end_sum = 0.0
        self.pixels = 0
        # Every reading on the same pixels: the subgrid of every stride-th row and column (--calibration-stride).
        self.calibrations = {"softmax": Calibration(n_images, stride=stride, num_classes=k),
                             "sigmoid": Calibration(n_images, reading="sigmoid", classwise=True, stride=stride,
                                                    num_classes=k)}
        for reading, t in (temperatures or {}).items():
            # After temperature scaling only the bins, NLL and Brier: the failure-detection numbers of the
            # sigmoid reading do not change with T (a monotone map of each pixel's confidence).
            self.calibrations[f"{reading}_ts"] = Calibration(n_images, reading=reading, temperature=t, fine=False,
                                                             stride=stride, num_classes=k)

    @property
    def calibration(self):
        """The softmax reading (the one metrics.jsonl's ece / nll / brier give)."""
        return self.calibrations["softmax"]

    @torch.inference_mode()
    def update(self, logits, labels, positions):
        """Add one batch; returns the predictions (argmax over the K channels, first maximum on ties)."""
        logits = logits.float()
        pred = channel_argmax(logits)
        nk = self.num_classes
        b, k2 = labels.shape[0], nk ** 2
        # One bincount gives every image's KxK confusion: image j's cells are offset by K^2 j, and
        # ignored pixels all go to one extra bin at the end (cheaper than selecting the kept ones).
        slot = torch.arange(b, device=labels.device).view(b, 1, 1) * k2
        idx = labels.long() * nk + pred + slot
        idx = torch.where(labels == IGNORE_INDEX, b * k2, idx)
        per = torch.bincount(idx.view(-1), minlength=b * k2 + 1)[:-1].view(b, nk, nk)
        per = per.cpu().numpy()
        self.per_image[positions] += per
        self.confusion += per.sum(0)
        self.tracker.update(logits, pred)
        # END (docs/protocol.md): bg = softmax over all 21 at channel 0; id = normalised max softmax over the
        # 20 foreground logits; averaged over every output pixel, like the logit statistics. With one exp
        # pass, s = sum_fg exp(z - max z_fg) in [1, 20]: max softmax_fg = 1 / s and
        # bg = 1 / (1 + s exp(max z_fg - z0)), which tends to 0 or 1 without NaN when the exp overflows.
        if self.has_background:
            k = nk - 1
            fg, z0 = logits[:, 1:], logits[:, 0]
            fg_max = fg.amax(1)
            s = (fg - fg_max.unsqueeze(1)).exp_().sum(1)
            bg = torch.exp(fg_max - z0).mul_(s).add_(1).reciprocal_()
            ident = s.reciprocal_().sub_(1 / k).mul_(1 / (1 - 1 / k))
            self.end_sum += float(torch.dot(bg.view(-1).double(), ident.view(-1).double()))
            top = torch.maximum(fg_max, z0)   # the top logit is END's max(fg, z0)
        else:
            top = logits.amax(1)
        # ECE / NLL / Brier of the K-way softmax over the non-255 pixels, one row per image (the bootstrap
        # resamples images), on the device until the condition is written.
        for cal in self.calibrations.values():
            cal.update(logits, labels, positions, pred=pred, top=top)
        self.pixels += pred.numel()
        return pred

    def state(self) -> dict:
        """Everything as host numpy arrays and numbers, to send to another process (``from_state``)."""
        return {"confusion": self.confusion, "per_image": self.per_image, "tracker": self.tracker.state_dict(),
                "end_sum": self.end_sum, "has_background": self.has_background, "pixels": self.pixels,
                "calibrations": {k: (c.rows(), c.reading, c.temperature, c.stride)
                                 for k, c in self.calibrations.items()}}

    @classmethod
    def from_state(cls, state) -> "ConditionStats":
        new = cls(0, num_classes=state["confusion"].shape[0], has_background=state["has_background"])
        new.confusion, new.per_image = state["confusion"], state["per_image"]
        new.tracker = LogitTracker.from_state_dict(state["tracker"])
        new.end_sum, new.pixels = state["end_sum"], state["pixels"]
        new.calibrations = {k: Calibration.from_rows(rows, reading, t, stride)
                            for k, (rows, reading, t, stride) in state["calibrations"].items()}
        return new

    @classmethod
    def from_files(cls, logits: dict, confusion: dict, has_background=True) -> "ConditionStats":
        """A condition read back from its two NPZ files (``write_condition``); ``per_image`` is left empty."""
        new = cls(0, num_classes=confusion["confusion"].shape[0], has_background=has_background)
        new.confusion, new.tracker = confusion["confusion"], LogitTracker.from_state_dict(logits)
        new.end_sum, new.pixels = float(logits["end_sum"]), int(logits["pixels"])
        new.calibrations = {k: Calibration.from_state_dict(confusion, prefix_of(*VARIANTS[k]), VARIANTS[k][0])
                            for k in VARIANTS}
        return new


def metrics_row(stats: ConditionStats, model_info, corruption, severity, args, n_images, seconds):
    m = {k: finite_or_none(v) for k, v in miou_from_confusion(stats.confusion).items()}
    end = stats.end_sum / stats.pixels if stats.pixels and stats.has_background else None
    cal = stats.calibration.metrics()
    return {"model": model_info["name"], "checkpoint": model_info["path"], "checkpoint_sha256": model_info["sha256"],
            "kind": model_info["kind"], "corruption": corruption,
            "corruption_number": None if corruption == CLEAN else corruption_number(corruption),
            "severity": severity, "corruption_code": args.corruption_code, "protocol": args.protocol,
            "size": protocol_size(args), "miou": m["miou"], "pixel_acc": m["pixel_acc"], "iou": m["iou"],
            # The notebook's Distance (all 20 foreground classes, never-predicted ones counting 0), and the
            # same mean over the classes the model predicted (docs/protocol.md, "Logit structure").
            # Both are margins over the background logit: null on a dataset without background.
            "distance": finite_or_none(stats.tracker.distance_notebook()) if stats.has_background else None,
            "distance_predicted": finite_or_none(stats.tracker.distance_margin()) if stats.has_background else None,
            "end": finite_or_none(end),
            # Calibration of the softmax over the K channels, non-255 pixels (common/calibration.py); null
            # when no pixel was scored.
            "ece": finite_or_none(cal.get("ece")), "nll": finite_or_none(cal.get("nll")),
            "brier": finite_or_none(cal.get("brier")),
            # Every reading (docs/calibration.md): {softmax, sigmoid, softmax_ts, sigmoid_ts: {temperature, ece,
            # ece_adaptive, nll, brier, aurc, auroc, ...}}, those measured.
            "calibration": calibration_fields(stats),
            "images": n_images, "seconds": seconds, "shard": args.shard}


def calibration_fields(stats: ConditionStats) -> dict:
    """metrics.jsonl's "calibration": each reading's metrics (common/calibration.py) and its temperature."""
    out = {}
    for key, cal in stats.calibrations.items():
        if cal is not None:
            out[key] = {"reading": cal.reading, "temperature": cal.temperature,
                        **{k: finite_or_none(v) for k, v in cal.metrics().items()}}
    return out


def protocol_size(args):
    """The --size the protocol resizes to (the side under "paper", the short side under "shortside")."""
    return None if args.protocol == "native" else args.size


def per_image_counts(per_image):
    """Each image's per-class TP, FP and FN from its KxK confusion (rows: label, columns: prediction)."""
    tp = np.einsum("nkk->nk", per_image)
    return tp, per_image.sum(1) - tp, per_image.sum(2) - tp


def group_metrics(tp, fp, fn, groups) -> dict:
    """{group: {"miou", "images"}} over the images of each group (ACDC's fog / night / rain / snow: its real shifts
    reported one by one, as corruptions are), from the per-image TP / FP / FN; ``groups``: each image's group.
    mIoU as ``miou_from_confusion``: IoU_k = TP_k / (TP_k + FP_k + FN_k), mean over the classes seen."""
    groups = np.asarray(groups)
    out = {}
    for g in dict.fromkeys(groups.tolist()):
        pick = groups == g
        t, p_, n = (a[pick].sum(0).astype(np.float64) for a in (tp, fp, fn))
        union = t + p_ + n
        present = union > 0
        out[g] = {"miou": finite_or_none(float(np.mean(t[present] / union[present])) if present.any() else None),
                  "images": int(pick.sum())}
    return out


def shard_calibration(parts, order):
    """One condition's calibration from its shards' per-image rows, stacked and put in ``order`` as tp/fp/fn
    are: the rows and totals of a single run over the same logits, bit for bit. None for a temperature-scaled
    reading the shards did not measure (no temperature fit)."""
    return None if any(p is None for p in parts) else Calibration.concat(parts, order)


def combine(parts, order):
    """One condition's stats from parts over disjoint sets of images (the shard folders of --merge, the ranks of
    a torchrun sweep): [(ConditionStats, per-image arrays)], the arrays with one row per image of that part.

    Confusions and pixel counts add exactly; logit moments and END sums add in part order (float64, so they
    differ from one process's batch-by-batch sums in the last digits only); the per-image arrays and calibration
    rows are stacked and put in ``order`` (indices into the stacked rows), which gives the single run's rows
    exactly. Returns (stats, [each per-image array, stacked and ordered]); ``stats.per_image`` is left empty."""
    total = ConditionStats(0, num_classes=parts[0][0].num_classes, has_background=parts[0][0].has_background)
    for st, _ in parts:
        total.confusion = total.confusion + st.confusion
        total.tracker = total.tracker + st.tracker
        total.end_sum += st.end_sum
        total.pixels += st.pixels
    total.calibrations = {k: shard_calibration([st.calibrations.get(k) for st, _ in parts], order)
                          for k in parts[0][0].calibrations}
    arrays = [np.concatenate([a[i] for _, a in parts])[order] for i in range(len(parts[0][1]))]
    return total, arrays


def gather_ranks(world, stats, mine, predictions):
    """Under torchrun, at the end of a condition: every rank's stats (one per model; ``mine``, the positions of
    its images) and its predictions ([(path, PNG bytes)]) to rank 0, which gets back the stats over all images in
    the single-process image order, and every prediction to write. (None, None) on the other ranks."""
    parts = world.gather(([st.state() for st in stats], mine, predictions))
    if parts is None:
        return None, None
    order = np.argsort(np.concatenate([p[1] for p in parts]), kind="stable")
    merged = []
    for m in range(len(stats)):
        st, (per_image,) = combine([(ConditionStats.from_state(p[0][m]), [p[0][m]["per_image"]]) for p in parts],
                                   order)
        st.per_image = per_image
        merged.append(st)
    return merged, [w for p in parts for w in p[2]]


def write_condition(out, model_name, corruption, severity, stats: ConditionStats, image_ids, tp, fp, fn,
                    groups=None):
    """The condition's two NPZ files: logit state + END sums, and confusion + per-image TP/FP/FN + the
    calibration bins (``calib_*``: the condition's totals and one row per image, in image_ids order); with
    ``groups`` (ACDC: each image's real condition) also ``image_groups``, from which --merge recomputes
    ``group_metrics``."""
    calib = {} if groups is None else {"image_groups": np.array(groups)}
    for key, cal in stats.calibrations.items():
        if cal is not None:
            calib.update(cal.state_dict(prefix_of(*VARIANTS[key])))
    results.write_condition(out, model_name, corruption, severity,
                            logits=dict(**stats.tracker.state_dict(), end_sum=np.float64(stats.end_sum),
                                        pixels=np.int64(stats.pixels)),
                            confusion=dict(confusion=stats.confusion, image_ids=np.array(image_ids), tp=tp, fp=fp,
                                           fn=fn, **calib))

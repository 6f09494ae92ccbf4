"""Running confusion matrix and the segmentation metrics of docs/protocol.md ("Metrics").

    cm = ConfusionMatrix()
    cm.update(target, pred)          # any shapes, any device; 255 pixels are skipped
    cm.all_reduce()                  # under DDP, once, before reading
    cm.compute() -> {"miou", "pixel_acc", "iou": [21 floats, NaN for absent classes]}
"""
import math

import numpy as np
import torch
import torch.distributed as dist

from .constants import IGNORE_INDEX, NUM_CLASSES


def miou_from_confusion(mat: np.ndarray) -> dict:
    """IoU_k = C_kk / (row_k + col_k - C_kk); mIoU over classes with row_k + col_k > 0.

    Classes absent from both target and prediction get IoU NaN and are left out of the mean, as
    docs/protocol.md defines it. Rows are targets, columns predictions.
    """
    mat = np.asarray(mat, dtype=np.float64)
    tp = np.diag(mat)
    union = mat.sum(1) + mat.sum(0) - tp
    present = (mat.sum(1) + mat.sum(0)) > 0
    iou = np.full(len(tp), np.nan)
    iou[present] = tp[present] / union[present]
    total = mat.sum()
    return {
        "miou": float(np.mean(iou[present])) if present.any() else math.nan,
        "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
        "iou": iou.tolist(),
    }


class ConfusionMatrix:
    """21x21 int64 counts accumulated with one bincount per update, on the inputs' device."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        self.num_classes = num_classes
        self.mat = None

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Add one batch. Never waits for the GPU: ignored pixels go to one spare bin at the end instead of
        being selected out (boolean indexing needs the count on the host), and the counts are added into a
        fixed-size vector with ``index_add_`` (``bincount`` reads the largest index back to size its output)."""
        n = self.num_classes
        target = target.reshape(-1).to(torch.int64)
        idx = target * n + pred.reshape(-1).to(torch.int64)
        idx = torch.where(target == IGNORE_INDEX, n * n, idx)
        counts = torch.zeros(n * n + 1, dtype=torch.int64, device=idx.device)
        counts.index_add_(0, idx, torch.ones_like(idx))
        counts = counts[:-1].reshape(n, n)
        self.mat = counts if self.mat is None else self.mat + counts.to(self.mat.device)

    def reset(self) -> None:
        self.mat = None

    def all_reduce(self) -> None:
        """Sum the matrix over DDP ranks (no-op in a single process)."""
        if dist.is_available() and dist.is_initialized():
            if self.mat is None:
                self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
            dist.all_reduce(self.mat)

    def numpy(self) -> np.ndarray:
        if self.mat is None:
            return np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        return self.mat.cpu().numpy()

    def compute(self) -> dict:
        return miou_from_confusion(self.numpy())

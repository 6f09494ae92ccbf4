"""ConfusionMatrix and mIoU against a plain numpy computation (docs/protocol.md, "Metrics")."""
import math

import numpy as np
import torch

from common.metrics import ConfusionMatrix


def numpy_oracle(target, pred):
    t, p = target.ravel(), pred.ravel()
    keep = t != 255
    t, p = t[keep], p[keep]
    ious = []
    per = []
    for k in range(21):
        tp = np.sum((t == k) & (p == k))
        fp = np.sum((t != k) & (p == k))
        fn = np.sum((t == k) & (p != k))
        if tp + fp + fn == 0:
            per.append(math.nan)
            continue
        per.append(tp / (tp + fp + fn))
        ious.append(per[-1])
    return np.mean(ious), np.mean(t == p), per


def test_confusion_matrix_matches_numpy_with_255_and_absent_classes():
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix()
    targets, preds = [], []
    for _ in range(3):  # several updates accumulate
        t = rng.choice([0, 1, 2, 5, 9, 255], size=(2, 17, 13)).astype(np.int64)
        p = rng.choice([0, 1, 2, 3, 9], size=(2, 17, 13)).astype(np.int64)
        targets.append(t), preds.append(p)
        cm.update(torch.from_numpy(t), torch.from_numpy(p))
    miou, acc, per = numpy_oracle(np.concatenate(targets), np.concatenate(preds))
    got = cm.compute()
    assert got["miou"] == np.float64(miou).item() or abs(got["miou"] - miou) < 1e-12
    assert abs(got["pixel_acc"] - acc) < 1e-12
    for a, b in zip(got["iou"], per):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12
    # Class 3 is only ever predicted (IoU 0, counted); class 4 is absent from both (skipped).
    assert got["iou"][3] == 0.0 and math.isnan(got["iou"][4])
    # 255 pixels are not counted at all.
    assert cm.numpy().sum() == sum(int((t != 255).sum()) for t in targets)


def test_empty_matrix_gives_nan():
    assert math.isnan(ConfusionMatrix().compute()["miou"])


def test_rows_are_targets_and_columns_predictions():
    # An asymmetric case: 6 pixels of class 1 predicted as 2, none of class 2 predicted as 1. IoU alone is
    # the same for the matrix and its transpose, so the cells are checked one by one.
    from common.metrics import miou_from_confusion
    target = torch.tensor([[1, 1, 1, 1, 1, 1, 2, 2, 0, 255]])
    pred = torch.tensor([[2, 2, 2, 2, 2, 2, 2, 2, 0, 1]])
    cm = ConfusionMatrix()
    cm.update(target, pred)
    mat = cm.numpy()
    assert mat[1, 2] == 6 and mat[2, 1] == 0 and mat[2, 2] == 2 and mat[0, 0] == 1 and mat.sum() == 9
    # Class 1: 6 target pixels, 0 predicted -> IoU 0; class 2: tp 2, fp 6, fn 0 -> 2 / 8; class 0: 1.
    got = miou_from_confusion(mat)
    assert got["iou"][:3] == [1.0, 0.0, 0.25]
    assert got["pixel_acc"] == 3 / 9
    # The per-class counts the bootstrap reads are read off that orientation (rows = target):
    tp = np.diag(mat)
    assert (mat.sum(0) - tp)[2] == 6 and (mat.sum(1) - tp)[1] == 6     # class 2's FP, class 1's FN

"""PASCAL VOC 2012 (the paper's dataset): common.data's checked ``VOCSegmentation``, unchanged.

    <root>/VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}

The items are exactly what the scripts read today (torchvision's loader with common.data's checks); this
adapter only adds ``ids`` (the file stems) and the spec: 21 classes, background first, the VOC palette.
"""
import os

from ..constants import CLASSES, NUM_CLASSES, voc_palette
from .base import DatasetSpec

LAYOUT = "VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}"


def eval_dataset(root, split: str = "val"):
    from ..data import VOCSegmentation   # common.data imports the corruption registry; load it when used
    ds = VOCSegmentation(root, split)
    ds.ids = [os.path.splitext(os.path.basename(p))[0] for p in ds.images]
    return ds


SPEC = DatasetSpec(name="voc", classes=CLASSES, palette=voc_palette()[:NUM_CLASSES].copy(), has_background=True,
                   loader=eval_dataset, splits=("train", "val", "trainval"), layout=LAYOUT)

"""ACDC (Sakaridis et al., ICCV 2021): real fog, night, rain and snow, annotated with Cityscapes' labels.

    <root>/rgb_anon/<condition>/<split>/<sequence>/<sequence>_frame_NNNNNN_rgb_anon.png
    <root>/gt/<condition>/<split>/<sequence>/<sequence>_frame_NNNNNN_gt_labelIds.png

condition in fog, night, rain, snow; split train or val (the test split has no public labels). The gt folders
also hold ``_gt_labelTrainIds``, ``_gt_labelColor``, ``_gt_invGray`` and ``_gt_invIds`` files (the invalid-region
masks are not applied), and rgb_anon holds reference images under ``<split>_ref``; only the two file kinds above
are read. labelIds are Cityscapes' (0..33), mapped to the 19 train ids as for Cityscapes. ``conditions``
selects some conditions (default: all four, in that order); each item's condition is in ``dataset.conditions``,
so that a sweep reports one mIoU per condition as it does per corruption. Image id: the stem without
``_rgb_anon``, e.g. ``GOPR0475_frame_000041``.
"""
import os

from ..cli import UsageError
from .base import DatasetSpec, LabelMappedDataset, check_root, check_unique_ids
from .cityscapes import CLASSES, LABEL_TO_TRAIN, PALETTE, VALID_IDS

CONDITIONS = ("fog", "night", "rain", "snow")
IMAGE_SUFFIX = "_rgb_anon.png"
LABEL_SUFFIX = "_gt_labelIds.png"
LAYOUT = ("rgb_anon/<condition>/<split>/<sequence>/*_rgb_anon.png and "
          "gt/<condition>/<split>/<sequence>/*_gt_labelIds.png")
HINT = "; python -m common.synthetic_layouts --layout acdc --root R writes a small synthetic one"


def parse_conditions(conditions) -> tuple:
    """None -> all four; a name, or a list / comma-separated names -> those, in ACDC's order, checked."""
    if conditions is None:
        return CONDITIONS
    if isinstance(conditions, str):
        conditions = conditions.split(",")
    chosen = {c.strip().lower() for c in conditions if c.strip()}
    unknown = sorted(chosen - set(CONDITIONS))
    if unknown or not chosen:
        raise UsageError(f"ACDC condition {', '.join(unknown) or '(none)'}: expected one or more of "
                         f"{', '.join(CONDITIONS)}")
    return tuple(c for c in CONDITIONS if c in chosen)


class ACDC(LabelMappedDataset):
    name = "ACDC"

    def __init__(self, root, split: str = "val", conditions=None, transforms=None):
        conds = parse_conditions(conditions)
        dirs = [(c, os.path.join(root or "", "rgb_anon", c, split), os.path.join(root or "", "gt", c, split))
                for c in conds]
        check_root(root, "--acdc-root", [d for _, a, b in dirs for d in (a, b)], LAYOUT, HINT)
        self.images, self.targets, self.ids, self.conditions = [], [], [], []
        for cond, image_dir, label_dir in dirs:
            found = []
            for seq in sorted(os.listdir(image_dir)):
                seq_dir = os.path.join(image_dir, seq)
                if not os.path.isdir(seq_dir):
                    continue
                found += [(seq, n) for n in sorted(os.listdir(seq_dir)) if n.endswith(IMAGE_SUFFIX)]
            if not found:
                raise UsageError(f"--acdc-root {root}: no *{IMAGE_SUFFIX} in {image_dir}/<sequence>/{HINT}")
            for seq, name in found:
                stem = name[: -len(IMAGE_SUFFIX)]
                self.images.append(os.path.join(image_dir, seq, name))
                self.targets.append(os.path.join(label_dir, seq, stem + LABEL_SUFFIX))
                self.ids.append(stem)
                self.conditions.append(cond)
        check_unique_ids(self.ids, f"ACDC {split} ({', '.join(conds)})")
        missing = [t for t in self.targets if not os.path.isfile(t)]
        if missing:
            raise UsageError(f"{len(missing)} ACDC image(s) have no {LABEL_SUFFIX} file, first {missing[0]}")
        self.lut, self.valid, self.transforms = LABEL_TO_TRAIN, VALID_IDS, transforms

    def indices(self, condition: str) -> list:
        """The indices of one condition's images (for per-condition metrics)."""
        return [i for i, c in enumerate(self.conditions) if c == condition]


def eval_dataset(root, split: str = "val", conditions=None):
    return ACDC(root, split, conditions)


SPEC = DatasetSpec(name="acdc", classes=CLASSES, palette=PALETTE, has_background=False, loader=eval_dataset,
                   splits=("train", "val"), layout=LAYOUT)

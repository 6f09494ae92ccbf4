"""Cityscapes (fine annotations) through torchvision's ``Cityscapes`` loader, labelIds mapped to the 19 train ids.

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

(val: 500 images at 2048 x 1024.) The labelIds PNG holds the ids 0..33 of the table below; the 19 classes with a
train id are evaluated, everything else becomes 255 (ignore), exactly as cityscapesScripts'
``createTrainIdLabelImgs`` writes ``*_labelTrainIds.png``. The image id is the file stem without
``_leftImg8bit``: ``frankfurt_000000_000294``.
"""
import os

import numpy as np
import torchvision
from PIL import Image

from ..cli import UsageError
from .base import DatasetSpec, check_root, check_unique_ids, load_mapped, lookup_table

# The Cityscapes label definition: (name, id, trainId, colour) for every label, in the order of
# cityscapesScripts' cityscapesscripts/helpers/labels.py (github.com/mcordts/cityscapesScripts; categories,
# hasInstances and ignoreInEval left out). trainId 255 = not evaluated; 'license plate' has no id (-1): its
# pixels are part of the car in the ground-truth images.
LABELS = (
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
    ("license plate", -1, -1, (0, 0, 142)),
)

# The 19 evaluated classes, in train-id order, and their colours (the first label defined with each train id,
# as cityscapesScripts' trainId2label resolves it).
_TRAIN = sorted((t, name, colour) for name, i, t, colour in LABELS if 0 <= t < 255)
CLASSES = tuple(name for _, name, _ in _TRAIN)
PALETTE = np.array([colour for _, _, colour in _TRAIN], np.uint8)
LABEL_TO_TRAIN = lookup_table((i, t) for _, i, t, _ in LABELS)     # 256 entries, 255 where not evaluated
VALID_IDS = np.zeros(256, bool)
VALID_IDS[[i for _, i, _, _ in LABELS if i >= 0]] = True           # a labelIds PNG holds 0..33 only

LAYOUT = "leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png"
HINT = "; python -m common.synthetic_layouts --layout cityscapes --root R writes a small synthetic one"


def label_to_train_id(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds (uint8 array) -> train ids 0..18, 255 elsewhere."""
    return LABEL_TO_TRAIN[np.asarray(label_ids, dtype=np.uint8)]


class CityscapesSemantic(torchvision.datasets.Cityscapes):
    """torchvision's loader (fine, semantic), its file list sorted and checked, its labels mapped to train ids.

    torchvision lists the city folders in ``os.listdir`` order (arbitrary) and takes every file in them; here
    the list keeps the ``*_leftImg8bit.png`` images only, sorted, each with its labelIds file, which must exist.
    """
    name = "Cityscapes"

    def __init__(self, root, split: str = "val", transforms=None):
        images_dir = os.path.join(root or "", "leftImg8bit", split)
        targets_dir = os.path.join(root or "", "gtFine", split)
        check_root(root, "--cityscapes-root", (images_dir, targets_dir), LAYOUT, HINT)
        for city in sorted(os.listdir(images_dir)):
            if not os.path.isdir(os.path.join(images_dir, city)):
                raise UsageError(f"{os.path.join(images_dir, city)}: expected only city folders in {images_dir}/; "
                                 f"move that file out of it")
        super().__init__(root, split=split, mode="fine", target_type="semantic", transforms=transforms)
        pairs = sorted((img, tgt[0]) for img, tgt in zip(self.images, self.targets)
                       if img.endswith("_leftImg8bit.png"))
        if not pairs:
            raise UsageError(f"--cityscapes-root {root}: no *_leftImg8bit.png under {images_dir}/<city>/{HINT}")
        self.images = [img for img, _ in pairs]
        self.targets = [[tgt] for _, tgt in pairs]
        self.ids = [os.path.basename(img)[: -len("_leftImg8bit.png")] for img in self.images]
        missing = [t for _, t in pairs if not os.path.isfile(t)]
        if missing:
            raise UsageError(f"{len(missing)} image(s) under {images_dir} have no labelIds file, first {missing[0]}")
        check_unique_ids(self.ids, images_dir)

    def __getitem__(self, index: int):
        # The pair is decoded as torchvision's __getitem__ does (Image.open), but each file on its own so that a
        # damaged one is named; transforms come after the mapping.
        img, target = load_mapped(lambda: Image.open(self.images[index]), lambda: Image.open(self.targets[index][0]),
                                  self.images[index], self.targets[index][0], LABEL_TO_TRAIN, VALID_IDS, self.name)
        return self.transforms(img, target) if self.transforms is not None else (img, target)


def eval_dataset(root, split: str = "val"):
    return CityscapesSemantic(root, split)


SPEC = DatasetSpec(name="cityscapes", classes=CLASSES, palette=PALETTE, has_background=False,
                   loader=eval_dataset, splits=("train", "val"), layout=LAYOUT)

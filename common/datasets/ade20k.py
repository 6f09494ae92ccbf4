"""ADE20K as the SceneParsing benchmark ships it (``ADEChallengeData2016``): 150 classes, 0 = "other" = ignore.

    <root>/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_NNNNNNNN.jpg
    <root>/ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_NNNNNNNN.png

(``<root>`` may also be the ``ADEChallengeData2016`` folder itself.) Val: 2,000 images of varying size. The
annotation PNG holds 0..150: 0 is every pixel outside the 150 classes and is ignored, class k (1..150) becomes
train id k - 1 (the shift every toolkit applies: mmsegmentation's ``reduce_zero_label``, transformers'
``do_reduce_labels``). There is no background class. Image id: the file stem, ``ADE_val_00000001``.
"""
import os

import numpy as np

from ..cli import UsageError
from .base import DatasetSpec, LabelMappedDataset, check_root, check_unique_ids, generated_palette, lookup_table

# The 150 classes of the SceneParsing benchmark in index order 1..150 (train ids 0..149): the first name of
# each entry of objectInfo150 (sceneparsing.csail.mit.edu; github.com/CSAILVision/sceneparsing,
# objectInfo150.csv, column "Name", whose synonyms are separated by ';'), as mmsegmentation and transformers'
# ADE20K configs list them.
CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door",
    "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
NUM_RAW = len(CLASSES) + 1                           # values 0..150 in an annotation PNG
RAW_TO_TRAIN = lookup_table((k, k - 1) for k in range(1, NUM_RAW))   # 0 (and anything else) -> 255
VALID_RAW = np.zeros(256, bool)
VALID_RAW[:NUM_RAW] = True
# ADE20K's annotations are class indices and carry no colours; figures draw them with a generated palette.
PALETTE = generated_palette(len(CLASSES))

FOLDER = "ADEChallengeData2016"
SPLIT_DIRS = {"train": "training", "val": "validation"}
LAYOUT = f"{FOLDER}/images/{{training,validation}}/*.jpg and {FOLDER}/annotations/{{training,validation}}/*.png"
HINT = "; python -m common.synthetic_layouts --layout ade20k --root R writes a small synthetic one"
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def raw_to_train_id(raw: np.ndarray) -> np.ndarray:
    """ADE20K annotation values 0..150 -> train ids 0..149 (k -> k-1), 0 -> 255."""
    return RAW_TO_TRAIN[np.asarray(raw, dtype=np.uint8)]


def dataset_folder(root) -> str:
    """``root`` itself when it is the ADEChallengeData2016 folder, else ``root/ADEChallengeData2016``."""
    if root and os.path.isdir(os.path.join(root, "images")) and os.path.isdir(os.path.join(root, "annotations")):
        return root
    return os.path.join(root or "", FOLDER)


class ADE20K(LabelMappedDataset):
    name = "ADE20K"

    def __init__(self, root, split: str = "val", transforms=None):
        base = dataset_folder(root)
        image_dir = os.path.join(base, "images", SPLIT_DIRS[split])
        label_dir = os.path.join(base, "annotations", SPLIT_DIRS[split])
        check_root(root, "--ade20k-root", (image_dir, label_dir), LAYOUT, HINT)
        names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(IMAGE_EXTS) and not n.startswith("."))
        if not names:
            raise UsageError(f"--ade20k-root {root}: no images (*.jpg) in {image_dir}/{HINT}")
        self.images = [os.path.join(image_dir, n) for n in names]
        self.ids = [os.path.splitext(n)[0] for n in names]
        self.targets = [os.path.join(label_dir, i + ".png") for i in self.ids]
        check_unique_ids(self.ids, image_dir)
        missing = [t for t in self.targets if not os.path.isfile(t)]
        if missing:
            raise UsageError(f"{len(missing)} image(s) in {image_dir} have no annotation, first {missing[0]}")
        self.lut, self.valid, self.transforms = RAW_TO_TRAIN, VALID_RAW, transforms


def eval_dataset(root, split: str = "val"):
    return ADE20K(root, split)


SPEC = DatasetSpec(name="ade20k", classes=CLASSES, palette=PALETTE, has_background=False, loader=eval_dataset,
                   splits=tuple(SPLIT_DIRS), layout=LAYOUT)

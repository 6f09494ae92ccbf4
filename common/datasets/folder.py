"""Any other dataset, as a folder of images, label PNGs and a class-names file.

    <root>/classes.txt          one class name per line; line k (from 0) names train id k
    <root>/images/<id>.{jpg,jpeg,png}
    <root>/labels/<id>.png      single-channel, values 0..N-1 (train ids) and 255 = ignore
    <root>/palette.txt          optional: one "R G B" line (0..255) per class; else a generated palette
    <root>/<split>.txt          optional: the ids of that split, one per line; without it every image is used

Class 0 counts as a background class (IBE / SCrIBE allowed) when it is named "background".
"""
import os

import numpy as np

from ..cli import UsageError
from .base import DatasetSpec, LabelMappedDataset, check_root, check_unique_ids, generated_palette, lookup_table

LAYOUT = "classes.txt, images/<id>.jpg|png and labels/<id>.png"
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
HINT = "; python -m common.synthetic_layouts --layout folder --root R writes a small synthetic one"


def _read_lines(path: str, what: str) -> list:
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8-sig")
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {path}: not UTF-8 text (byte {e.start})") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def read_classes(root) -> tuple:
    """The class names of ``root/classes.txt``, checked: 1..255 distinct non-empty names, none blank inside."""
    path = os.path.join(root, "classes.txt")
    if not os.path.isfile(path):
        raise UsageError(f"--folder-root {root}: missing {path} (one class name per line; line k names train id k)"
                         f"{HINT}")
    names = _read_lines(path, "class-names file")
    for number, name in enumerate(names, 1):
        if not name:
            raise UsageError(f"class-names file {path}, line {number} is blank: each line names one class, in "
                             f"train-id order (a blank line would shift every later id)")
    if not 1 <= len(names) <= 255:
        raise UsageError(f"class-names file {path} names {len(names)} classes; expected 1..255 (255 = ignore)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"class-names file {path} names {repeated[0]!r} twice; class names must be distinct")
    return tuple(names)


def read_palette(root, n: int) -> np.ndarray:
    """``root/palette.txt`` as (n, 3) uint8, or the generated palette when there is no such file."""
    path = os.path.join(root, "palette.txt")
    if not os.path.isfile(path):
        return generated_palette(n)
    rows = [line for line in _read_lines(path, "palette file") if line]
    try:
        pal = np.array([[int(v) for v in line.replace(",", " ").split()] for line in rows])
    except ValueError:
        pal = np.zeros((0,))
    if pal.shape != (n, 3) or pal.min() < 0 or pal.max() > 255:
        raise UsageError(f"palette file {path}: expected {n} lines of three integers 0..255 (R G B), one per class "
                         f"of classes.txt")
    return pal.astype(np.uint8)


class SegmentationFolder(LabelMappedDataset):
    name = "folder"

    def __init__(self, root, split: str = "val", num_classes: int = None, transforms=None):
        image_dir, label_dir = os.path.join(root or "", "images"), os.path.join(root or "", "labels")
        check_root(root, "--folder-root", (image_dir, label_dir), LAYOUT, HINT)
        n = num_classes or len(read_classes(root))
        by_id = {}
        for name in sorted(os.listdir(image_dir)):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTS and not name.startswith("."):
                if stem in by_id:
                    raise UsageError(f"{image_dir}: {os.path.basename(by_id[stem])} and {name} share the id {stem!r}; "
                                     f"keep one")
                by_id[stem] = os.path.join(image_dir, name)
        split_file = os.path.join(root, f"{split}.txt")
        if os.path.isfile(split_file):
            from ..data import read_split   # the checked split-file reader VOC uses
            ids = read_split(split_file)
            absent = [i for i in ids if i not in by_id]
            if absent:
                raise UsageError(f"{split_file} names {len(absent)} id(s) with no image in {image_dir}/, first "
                                 f"{absent[0]}")
        else:
            ids = list(by_id)
        if not ids:
            raise UsageError(f"--folder-root {root}: no images (*.jpg, *.png) in {image_dir}/")
        check_unique_ids(ids, image_dir)
        self.ids = ids
        self.images = [by_id[i] for i in ids]
        self.targets = [os.path.join(label_dir, i + ".png") for i in ids]
        missing = [t for t in self.targets if not os.path.isfile(t)]
        if missing:
            raise UsageError(f"{len(missing)} image(s) in {image_dir} have no label, first {missing[0]}")
        self.lut = lookup_table((k, k) for k in range(n))
        self.valid = np.zeros(256, bool)
        self.valid[:n] = True
        self.valid[255] = True
        self.transforms = transforms


def spec(root) -> DatasetSpec:
    """The folder dataset at ``root``: its classes (and palette) come from the folder."""
    if not root:
        raise UsageError(f"--folder-root is required with --data folder (the folder that contains {LAYOUT}){HINT}")
    if not os.path.isdir(root):
        raise UsageError(f"--folder-root {root}: not a folder (expected {LAYOUT}){HINT}")
    classes = read_classes(root)

    def loader(r, split="val"):
        return SegmentationFolder(r, split, num_classes=len(classes))

    return DatasetSpec(name="folder", classes=classes, palette=read_palette(root, len(classes)),
                       has_background=classes[0].lower() == "background", loader=loader,
                       splits=("train", "val", "test"), layout=LAYOUT)

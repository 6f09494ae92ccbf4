"""The one interface every dataset adapter fills in, and the label-mapping loader they share.

A ``DatasetSpec`` says what a dataset *is* (class names, palette, whether index 0 is a background class) and
how to open one of its splits; ``eval_dataset(root, split)`` returns a torch Dataset whose items are what
torchvision's ``VOCSegmentation`` gives today: ``(PIL RGB image, PIL label)``, the label holding train ids
0..N-1 and 255 = ignore. Every such dataset also has ``images`` (the image paths, as VOCSegmentation has) and
``ids`` (file stems without the dataset's suffix, unique within the split: the ids the corruption seed rule
and the dumps use).
"""
import dataclasses
import os

import numpy as np
import torch
from PIL import Image

from ..cli import UsageError
from ..constants import IGNORE_INDEX, voc_palette

# Anything that decoding a damaged or truncated file raises in Pillow (as common.data._load_checked catches).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, KeyError, IndexError)


@dataclasses.dataclass(frozen=True, eq=False)   # eq=False: the palette is an array
class DatasetSpec:
    """What the rest of the code needs to know about a dataset, and how to open its splits.

    ``loader(root, split, **options)`` returns the evaluation dataset; ``options`` are adapter-specific
    (ACDC's ``conditions``). ``has_background``: class 0 is a "background" class, which the IBE and SCrIBE
    structures make implicit (``check_structure`` refuses them elsewhere).
    """
    name: str
    classes: tuple
    palette: np.ndarray            # (num_classes, 3) uint8, row k = colour of train id k
    has_background: bool
    loader: object
    splits: tuple = ("train", "val")
    ignore_index: int = IGNORE_INDEX
    layout: str = ""               # one line: what root must contain (for messages and docs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def eval_dataset(self, root, split: str = "val", **options):
        if split not in self.splits:
            raise UsageError(f"{self.name}: unknown split {split!r}; expected one of {', '.join(self.splits)}")
        return self.loader(root, split, **options)

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """HxW train ids -> HxWx3 uint8 colours; 255 (and anything past the classes) is white, as VOC's."""
        pal = np.full((256, 3), 255, np.uint8)
        pal[: self.num_classes] = self.palette
        return pal[np.asarray(label, dtype=np.uint8)]


    def label_png(self, label: np.ndarray) -> bytes:
        """A label map (train ids, 255 ignore) as a palette PNG with this dataset's colours: the values stay the
        class ids, the file shows the colours (evaluate_corruptions.py --save-predictions)."""
        import io
        label = np.ascontiguousarray(label, dtype=np.uint8)
        im = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
        pal = np.full((256, 3), 255, np.uint8)
        pal[: self.num_classes] = self.palette
        im.putpalette(pal.ravel().tolist())
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=3)
        return buf.getvalue()


def generated_palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours for a dataset that ships none: the VOC bit-interleaved colormap of indices 1..n,
    so that no class is black (index 0's colour) and neighbouring indices differ in hue."""
    return voc_palette()[1: n + 1].copy()


def lookup_table(pairs) -> np.ndarray:
    """A 256-entry uint8 table raw value -> train id from ``(raw, train_id)`` pairs; every other value 255."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for raw, train in pairs:
        if 0 <= raw < 256:
            lut[raw] = train if 0 <= train < 256 else IGNORE_INDEX
    return lut


def check_root(root, flag: str, need, layout: str, hint: str = "") -> None:
    """Raise one UsageError naming the first folder of ``need`` missing under ``root``."""
    if not root:
        raise UsageError(f"{flag} is required (the folder that contains {layout}){hint}")
    for path in need:
        if not os.path.isdir(path):
            raise UsageError(f"{flag} {root}: missing {path}/ (expected {layout}){hint}")


def check_unique_ids(ids, where: str) -> None:
    """Two images with one id would share a corruption seed and overwrite each other's dumps: refuse."""
    seen = set()
    for i in ids:
        if i in seen:
            raise UsageError(f"{where}: two images have the id {i!r}; ids (file stems) must be unique within a split")
        seen.add(i)


class LabelMappedDataset(torch.utils.data.Dataset):
    """Image / raw-label pairs from files, the raw label values mapped to train ids through a table.

    Subclasses (or the adapter building one) set ``images``, ``targets``, ``ids``, ``lut`` (256 entries,
    raw value -> train id or 255) and ``valid`` (256 booleans: the raw values the dataset's definition
    allows; anything else means a wrong file, e.g. a colour or already-mapped label, and is refused naming the
    file rather than silently scored as ignore). ``transforms(img, target)`` is applied last, as torchvision's.
    """
    name = "dataset"
    transforms = None

    def __len__(self):
        return len(self.images)

    def raw_label(self, index: int):
        return Image.open(self.targets[index])

    def __getitem__(self, index: int):
        img, target = load_mapped(lambda: Image.open(self.images[index]), lambda: self.raw_label(index),
                                  self.images[index], self.targets[index], self.lut, self.valid, self.name)
        return self.transforms(img, target) if self.transforms is not None else (img, target)


def load_mapped(load_image, load_label, image_path, label_path, lut, valid, name):
    """Decode an image and its raw label, check them, map the label: ``(RGB image, "L" train-id label)``.

    A damaged file, a label that is not one channel, a size mismatch or a raw value the dataset does not
    define is one UsageError naming the file.
    """
    out = []
    for what, path, load in (("image", image_path, load_image), ("label", label_path, load_label)):
        try:
            obj = load()
            obj.load()  # Pillow decodes lazily: force it so that truncation shows up here
        except DECODE_ERRORS as e:
            raise UsageError(f"cannot read {what} {path} ({e}): the file is damaged or truncated; re-extract it "
                             f"or remove it") from None
        out.append(obj)
    img, target = out[0].convert("RGB"), out[1]
    if target.mode not in ("L", "P", "I", "I;16"):
        raise UsageError(f"label {label_path}: a {target.mode} image; {name} labels are single-channel PNGs of "
                         f"class ids (is it the colour visualisation instead?)")
    raw = np.asarray(target)
    if (img.size[1], img.size[0]) != raw.shape:
        raise UsageError(f"label {label_path} is {raw.shape[1]}x{raw.shape[0]} but its image {image_path} is "
                         f"{img.size[0]}x{img.size[1]}; they must match")
    if raw.dtype != np.uint8:
        if raw.min() < 0 or raw.max() > 255:
            bad = np.unique(raw[(raw < 0) | (raw > 255)])[:5].tolist()
            raise UsageError(f"label {label_path} holds values {bad} that are not {name} class ids")
        raw = raw.astype(np.uint8)
    present = np.unique(raw)
    wrong = present[~valid[present]]
    if wrong.size:
        raise UsageError(f"label {label_path} holds values {wrong[:5].tolist()} that are not {name} class ids "
                         f"({describe_valid(valid)}); is it another encoding of the label?")
    return img, Image.fromarray(lut[raw])   # uint8 HxW: mode "L"


def describe_valid(valid) -> str:
    """'0..33' or '0..150', for messages."""
    idx = np.flatnonzero(valid)
    if idx.size and idx[-1] - idx[0] + 1 == idx.size:
        return f"expected {idx[0]}..{idx[-1]}"
    return f"expected one of {idx.tolist()[:10]}{'...' if idx.size > 10 else ''}"

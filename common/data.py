"""Datasets and joint transforms (docs/protocol.md, "Data" and "Transforms").

The real loaders are torchvision's ``VOCSegmentation`` and ``SBDataset``; the synthetic dataset is
written to disk in the same layouts and read by the same loaders, so there is one code path.

    build_datasets("voc", voc_root=R, sbd_root=S, crop_size=224)  -> (train, val)
    build_datasets("synthetic", synthetic_root="data/synthetic", crop_size=96)

Every sample is ``(image, label)``: a float32 CHW tensor normalised with the ImageNet statistics and
an int64 HW tensor of class indices with 255 = ignore.
"""
import multiprocessing
import os
import re
import sys

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image

from .cli import UsageError, check_plain_name
from .constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from .corruptions import MIN_SIDE


def adjust_brightness(rgb: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's ``adjust_brightness`` on uint8 (blend with black, clamp, truncate), as a 256-entry table."""
    table = np.clip(np.arange(256, dtype=np.float32) * np.float32(factor), 0, 255).astype(np.uint8)
    return cv2.LUT(rgb, table)


def adjust_contrast(rgb: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's ``adjust_contrast``: blend with the mean grey level, as a 256-entry table."""
    mean = np.float32(cv2.mean(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))[0])
    table = np.arange(256, dtype=np.float32) * np.float32(factor) + mean * np.float32(1 - factor)
    return cv2.LUT(rgb, np.clip(table, 0, 255).astype(np.uint8))


def adjust_saturation(rgb: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's ``adjust_saturation``: blend each pixel with its grey level (rounded, not truncated)."""
    grey = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(rgb, factor, grey, 1 - factor, 0)


def adjust_hue(rgb: np.ndarray, shift: float) -> np.ndarray:
    """torchvision's ``adjust_hue`` (shift in turns, [-0.5, 0.5]) through OpenCV's float32 HSV.

    Float HSV keeps the hue in degrees and V in grey levels, so the round trip is exact up to the final
    rounding (uint8 HSV would quantise the hue to 1.4 degrees, up to 3 grey levels), and it is much faster
    than torchvision's (BENCHMARKS.md, Decisions). OpenCV wraps hues of 360 and above, not negative ones, hence
    the shift taken modulo 360.
    """
    hsv = cv2.cvtColor(rgb.astype(np.float32), cv2.COLOR_RGB2HSV)
    hue = hsv[..., 0]
    hue += np.float32((shift * 360) % 360)
    return cv2.convertScaleAbs(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))   # round and saturate to uint8


class TrainTransform:
    """The paper's training augmentation (docs/protocol.md, "Transforms"), cropped before it is resized.

    Random short side in [crop/2, 2*crop] (0.5x-2x of the base), pad right/bottom to crop (image 0,
    label 255), random crop x crop window, colour jitter (brightness, contrast, saturation 0.3, hue 0.1,
    in a random order as torchvision's ``ColorJitter``) on the image only, ImageNet normalisation. No
    horizontal flip: the companion code used none.

    Only the source region under the crop window is resampled: Pillow's ``resize(box=...)`` computes
    the same output pixels as resizing the whole image and cropping (tests/test_data.py checks it to 1
    grey level), at a fraction of the cost when the image is scaled up. Labels use nearest neighbour
    with the same pixel-centre mapping. Random draws come from torch's generator, so DataLoader
    worker seeding makes them reproducible.
    """

    def __init__(self, crop_size: int = 224, brightness: float = 0.3, contrast: float = 0.3,
                 saturation: float = 0.3, hue: float = 0.1):
        self.crop_size = crop_size
        self.jitter = (brightness, contrast, saturation, hue)

    def get_params(self, width: int, height: int) -> dict:
        """One random draw: resized size, crop offsets, jitter order and factors."""
        c = self.crop_size
        short = int(torch.randint(c // 2, 2 * c + 1, ()))
        # The notebook's RandomScaleCrop: the long side is truncated, not rounded.
        if height > width:
            new_w, new_h = short, int(height * short / width)
        else:
            new_w, new_h = int(width * short / height), short
        top = int(torch.randint(0, max(new_h, c) - c + 1, ()))
        left = int(torch.randint(0, max(new_w, c) - c + 1, ()))
        b, k, s, h = self.jitter
        factors = [float(torch.empty(1).uniform_(1 - b, 1 + b)), float(torch.empty(1).uniform_(1 - k, 1 + k)),
                   float(torch.empty(1).uniform_(1 - s, 1 + s)), float(torch.empty(1).uniform_(-h, h))]
        return dict(size=(new_w, new_h), top=top, left=left, order=torch.randperm(4).tolist(), factors=factors)

    def crop(self, img, target, p):
        """uint8 crop x crop x 3 image and crop x crop label: resize to p["size"], pad, crop, in one step."""
        c, (new_w, new_h), top, left = self.crop_size, p["size"], p["top"], p["left"]
        w, h = img.size
        sx, sy = w / new_w, h / new_h
        vw, vh = min(c, new_w - left), min(c, new_h - top)   # the part of the window inside the image
        box = (left * sx, top * sy, min(w, (left + vw) * sx), min(h, (top + vh) * sy))
        if img.mode != "RGB":
            img = img.convert("RGB")
        region = np.asarray(img.resize((vw, vh), Image.BILINEAR, box=box))
        labels = np.asarray(target.resize((vw, vh), Image.NEAREST, box=box), dtype=np.uint8)
        if vw == c and vh == c:
            return region, labels
        image = np.zeros((c, c, 3), np.uint8)
        label = np.full((c, c), IGNORE_INDEX, np.uint8)
        image[:vh, :vw] = region
        label[:vh, :vw] = labels
        return image, label

    def colour(self, rgb: np.ndarray, p) -> np.ndarray:
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        for k in p["order"]:
            rgb = ops[k](rgb, p["factors"][k])
        return rgb

    @staticmethod
    def to_tensors(rgb: np.ndarray, label: np.ndarray):
        """uint8 HxWx3 -> float32 3xHxW, ImageNet-normalised (``normalise_uint8``); label -> int64."""
        return normalise_uint8(torch.from_numpy(rgb)[None])[0], torch.from_numpy(label.astype(np.int64))

    def __call__(self, img, target):
        p = self.get_params(*img.size)
        image, label = self.crop(img, target, p)
        return self.to_tensors(self.colour(image, p), label)


def single_thread_opencv():
    """One OpenCV thread in this process and in the DataLoader workers it forks afterwards (torch already
    gives each worker one thread), so that N workers keep N cores busy instead of oversubscribing them.

    Call it in the parent, before the loaders start: ``cv2.setNumThreads`` called inside a forked worker
    deadlocks once the parent has used OpenCV's thread pool (seen in the full test suite).
    """
    cv2.setNumThreads(1)


def train_transform(crop_size: int = 224):
    """The training transform (see ``TrainTransform``)."""
    return TrainTransform(crop_size)


class ShortSideTransform:
    """Validation during training: the notebook's FixScaleResize (``shortside_resize``), then normalised."""

    def __init__(self, size: int = 224):
        self.size = size

    def __call__(self, img, target):
        image, label = shortside_resize(img, target, self.size)
        return normalise_uint8(torch.from_numpy(image)[None])[0], torch.from_numpy(label.astype(np.int64))


def val_transform(size: int = 224):
    """Validation during training: short side resized to ``size`` with Pillow, aspect kept, no crop."""
    return ShortSideTransform(size)


def _pil_resize(img, target, width: int, height: int):
    """Pillow BILINEAR image, NEAREST label, on the decoded PIL images, as the notebook did; uint8 arrays.

    Pillow's BILINEAR widens its kernel when it shrinks (it antialiases); its NEAREST samples the source
    pixel under each output pixel's centre. torch's tensor resize differs from both (a grey level on many
    pixels, and half a pixel for labels), which is why evaluation goes through Pillow.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    image = np.array(img.resize((width, height), Image.BILINEAR))
    label = np.array(target.resize((width, height), Image.NEAREST), dtype=np.uint8)
    return image, label


def paper_resize(img, target, size: int = 224):
    """The "paper" evaluation protocol's geometry: exactly size x size, Pillow bilinear image, nearest label.

    Returns uint8 HxWx3 and uint8 HxW numpy arrays, i.e. what gets corrupted and what gets scored.
    """
    return _pil_resize(img, target, size, size)


def shortside_size(width: int, height: int, size: int = 224):
    """The notebook's FixScaleResize: short side ``size``, long side ``int(long * size / short)``."""
    if width > height:
        return int(width * size / height), size
    return size, int(height * size / width)


def shortside_resize(img, target, size: int = 224):
    """The "shortside" protocol (and validation while training): aspect kept, Pillow bilinear / nearest."""
    return _pil_resize(img, target, *shortside_size(*img.size, size))


# ImageNet normalisation (x / 255 - mean) / std as one multiply-subtract: x * scale - shift, in float32.
_NORM_SCALE = [float(np.float32(1 / (255 * s))) for s in IMAGENET_STD]
_NORM_SHIFT = [float(np.float32(m / s)) for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]


def normalise_uint8(images: torch.Tensor) -> torch.Tensor:
    """Batch of uint8 BxHxWx3 (numpy layout) -> contiguous float32 Bx3xHxW, ImageNet-normalised, on the
    batch's device. One multiply-subtract per channel, written straight into the NCHW output, which halves the
    cost of permute, divide, subtract, divide (BENCHMARKS.md, Decisions)."""
    b, h, w, _ = images.shape
    out = torch.empty((b, 3, h, w), dtype=torch.float32, device=images.device)
    for ch in range(3):
        torch.mul(images[..., ch], _NORM_SCALE[ch], out=out[:, ch])
        out[:, ch].sub_(_NORM_SHIFT[ch])
    return out


def pad_collate(batch):
    """Stack samples of different sizes by padding to the largest (image 0, label 255).

    Validation keeps each image's aspect, so sizes differ inside a batch; padded pixels are ignored by
    the metrics (the same choice torchvision's segmentation reference makes).
    """
    images, labels = zip(*batch)
    h = max(i.shape[-2] for i in images)
    w = max(i.shape[-1] for i in images)
    out_i = images[0].new_zeros((len(images), 3, h, w))
    out_l = labels[0].new_full((len(labels), h, w), IGNORE_INDEX)
    for k, (img, lab) in enumerate(zip(images, labels)):
        out_i[k, :, : img.shape[-2], : img.shape[-1]] = img
        out_l[k, : lab.shape[-2], : lab.shape[-1]] = lab
    return out_i, out_l


# --------------------------------------------------------------------------------------------------
# Layout checks: a wrong root is the most common first error, so say exactly what was expected.

SYNTHETIC_HINT = "or run with --data synthetic to use the generated VOC-format dataset"
VOC_BASE_DIR = torchvision.datasets.voc.DATASET_YEAR_DICT["2012"]["base_dir"]   # VOCdevkit/VOC2012


def check_voc_root(voc_root, image_set: str) -> str:
    """Return the split file path, or raise UsageError naming what is missing under ``voc_root``."""
    if not voc_root:
        raise UsageError(f"--voc-root is required with --data voc (the folder that contains VOCdevkit/), "
                         f"{SYNTHETIC_HINT}")
    base = os.path.join(voc_root, "VOCdevkit", "VOC2012")
    if not os.path.isdir(base):
        name = os.path.basename(os.path.normpath(voc_root))
        hint = ""
        if name in ("VOC2012", "VOCdevkit"):
            hint = f" (it points at {name}/; pass the folder above VOCdevkit/)"
        raise UsageError(f"--voc-root {voc_root}: expected {base}/ with JPEGImages/, SegmentationClass/ and "
                         f"ImageSets/Segmentation/{hint}; {SYNTHETIC_HINT}")
    split = os.path.join(base, "ImageSets", "Segmentation", f"{image_set}.txt")
    for need in (os.path.join(base, "JPEGImages"), os.path.join(base, "SegmentationClass"), split):
        if not os.path.exists(need):
            raise UsageError(f"--voc-root {voc_root}: missing {need}; {SYNTHETIC_HINT}")
    return split


def check_sbd_root(sbd_root) -> str:
    """Return the train_noval split path, or raise UsageError naming what is missing."""
    if not sbd_root:
        raise UsageError(f"--sbd-root is required with --data voc (the folder that contains img/, cls/ and "
                         f"train_noval.txt; the paper trains on VOC train + SBD train_noval), {SYNTHETIC_HINT}")
    split = os.path.join(sbd_root, "train_noval.txt")
    for need in (os.path.join(sbd_root, "img"), os.path.join(sbd_root, "cls"), split):
        if not os.path.exists(need):
            raise UsageError(f"--sbd-root {sbd_root}: missing {need} (expected img/*.jpg, cls/*.mat and "
                             f"train_noval.txt); {SYNTHETIC_HINT}")
    return split


def resolve_roots(data: str, voc_root=None, sbd_root=None, synthetic_root="data/synthetic",
                  need_sbd: bool = True, quiet: bool = False):
    """Turn ``--data`` into ``(voc_root, sbd_root)``, generating the synthetic dataset on first use."""
    if data == "synthetic":
        # Sizes are not passed: a dataset already generated there (e.g. with other sizes by
        # ``python -m common.synthetic``) is used as it is, otherwise the defaults are generated.
        from .synthetic import ensure_synthetic
        return ensure_synthetic(synthetic_root, quiet=quiet)
    if data != "voc":
        raise UsageError(f"--data {data!r}: expected 'voc' or 'synthetic'")
    check_voc_root(voc_root, "val")
    if need_sbd:
        check_sbd_root(sbd_root)
    return voc_root, sbd_root


def check_sample(img, target, image_path, label_path):
    """A hand-unpacked dataset can hold anything: refuse labels that would silently corrupt the metrics."""
    label = np.asarray(target)
    if label.ndim != 2:
        raise UsageError(f"label {label_path}: expected a single-channel (palette) class map, got shape "
                         f"{label.shape}")
    if (img.size[1], img.size[0]) != label.shape:
        raise UsageError(f"label {label_path} is {label.shape[1]}x{label.shape[0]} but its image {image_path} is "
                         f"{img.size[0]}x{img.size[1]}; they must match")
    bad = (label > 20) & (label != IGNORE_INDEX)
    if bad.any():
        raise UsageError(f"label {label_path} holds class values {sorted(set(np.unique(label[bad]).tolist()))[:5]} "
                         f"outside 0..20 and 255; is it an RGB-coloured label instead of a palette PNG?")


def _load_checked(load_image, load_label, image_path, label_path):
    """Decode an image and its label; a damaged file becomes one UsageError that names it."""
    for what, path, load in (("image", image_path, load_image), ("label", label_path, load_label)):
        try:
            obj = load()
            if hasattr(obj, "load"):
                obj.load()  # PIL decodes lazily: force it here so truncation shows up now
        except (OSError, ValueError, SyntaxError, KeyError, IndexError) as e:
            raise UsageError(f"cannot read {what} {path} ({e}): the file is damaged or truncated; "
                             f"re-extract it or remove its id from the split file") from None
        if what == "image":
            img = obj.convert("RGB")
        else:
            target = obj
    check_sample(img, target, image_path, label_path)
    return img, target


def read_split(path: str) -> list:
    """The image ids of a split file (``ImageSets/Segmentation/val.txt``, SBD's ``train_noval.txt``), checked.

    Accepts what editors and other tools write: Windows (CRLF) or old Mac (CR) line endings, a UTF-8 byte
    order mark, spaces or tabs around an id, blank lines. A duplicated id is kept once (first occurrence,
    order kept) with one warning on stderr: counted twice it would weigh twice in every metric. Refused with
    a UsageError naming the file: an empty split, a file that is not UTF-8 text, and an id that is not one
    plain file name (``../x`` would make dump_voc_c.py and --save-predictions write outside their folder).
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise UsageError(f"split file {path}: cannot read it ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"split file {path}: not UTF-8 text (byte {e.start}); it must list one image id (a "
                         f"file stem such as 2007_000033) per line") from None
    ids, seen, repeated = [], set(), []
    # Python's universal newlines (\n, \r\n, \r), so that line numbers are the ones an editor shows.
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text), 1):
        name = line.strip()
        if not name:
            continue
        check_plain_name(name, f"split file {path}, line {number}")
        if name in seen:
            repeated.append(name)
            continue
        seen.add(name)
        ids.append(name)
    if not ids:
        raise UsageError(f"split file {path} lists no image ids (it is empty or blank); it must list one image id "
                         f"(a file stem such as 2007_000033) per line")
    if repeated and _is_main_process():
        unique = list(dict.fromkeys(repeated))
        shown = ", ".join(unique[:10]) + (f" and {len(unique) - 10} more" if len(unique) > 10 else "")
        print(f"warning: split file {path} lists {len(repeated)} duplicate id(s), each used once (first occurrence "
              f"kept): {shown}", file=sys.stderr)
    return ids


def _is_main_process() -> bool:
    """Not a loader or pool worker (they rebuild the dataset and would repeat its warnings), not a torchrun
    rank other than 0."""
    return multiprocessing.parent_process() is None and os.environ.get("RANK", "0") == "0"


def _check_files_exist(paths, split_file):
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UsageError(f"{split_file} names {len(missing)} file(s) that do not exist, first {missing[0]}")


class VOCSegmentation(torchvision.datasets.VOCSegmentation):
    """torchvision's loader, plus checks that turn a damaged file into one clear error naming it.

    torchvision takes every stripped line of the split file as an id (a blank line becomes ``.jpg``, a
    byte-order mark sticks to the first id, a repeated id counts twice), so its file lists are rebuilt, in
    its own layout, from the ids ``read_split`` accepted; loading stays torchvision's.
    """

    def __init__(self, root, image_set, transforms=None):
        split = check_voc_root(root, image_set)
        ids = read_split(split)
        super().__init__(root, year="2012", image_set=image_set, transforms=transforms)
        base = os.path.join(self.root, VOC_BASE_DIR)
        self.images = [os.path.join(base, "JPEGImages", f"{i}.jpg") for i in ids]
        self.targets = [os.path.join(base, self._TARGET_DIR, f"{i}{self._TARGET_FILE_EXT}") for i in ids]
        self.split_file = split
        _check_files_exist(self.images + self.targets, split)

    def __getitem__(self, index):
        img, target = _load_checked(lambda: Image.open(self.images[index]), lambda: Image.open(self.targets[index]),
                                    self.images[index], self.targets[index])
        return self.transforms(img, target) if self.transforms is not None else (img, target)


class SBDataset(torchvision.datasets.SBDataset):
    """torchvision's SBD loader (segmentation mode, train_noval), with the same checks."""

    def __init__(self, root, transforms=None):
        split = check_sbd_root(root)
        ids = read_split(split)
        super().__init__(root, image_set="train_noval", mode="segmentation", transforms=transforms)
        self.images = [os.path.join(self.root, "img", f"{i}.jpg") for i in ids]
        self.masks = [os.path.join(self.root, "cls", f"{i}.mat") for i in ids]
        self.split_file = split
        _check_files_exist(self.images + self.masks, split)

    def __getitem__(self, index):
        img, target = _load_checked(lambda: Image.open(self.images[index]),
                                    lambda: self._get_target(self.masks[index]), self.images[index], self.masks[index])
        return self.transforms(img, target) if self.transforms is not None else (img, target)


def voc_dataset(voc_root, image_set: str, transforms=None):
    return VOCSegmentation(voc_root, image_set, transforms)


def sbd_dataset(sbd_root, transforms=None):
    return SBDataset(sbd_root, transforms)


def require_a_batch(loader, per_process: bool = False) -> None:
    """Refuse a training loader (drop_last) that yields no batch: the dataset is smaller than one batch."""
    if len(loader) == 0:
        where = " per process" if per_process else ""
        raise UsageError(f"the training set has {len(loader.dataset)} images, fewer than one batch of "
                         f"{loader.batch_size}{where}; lower --batch-size")


def image_id(dataset, index: int) -> str:
    """The id of sample ``index`` (the id the corruption seed rule uses): the VOC file stem, or ``dataset.ids``
    for the datasets of common/datasets, whose stems carry a suffix (``*_leftImg8bit``) that their ids drop."""
    ids = getattr(dataset, "ids", None)
    if ids is not None:
        return ids[index]
    return os.path.splitext(os.path.basename(dataset.images[index]))[0]


# --------------------------------------------------------------------------------------------------
# Corruption evaluation: what gets corrupted and what gets scored (docs/protocol.md, "Transforms").

PROTOCOLS = ("paper", "shortside", "native", "keep_ratio")


def keep_ratio_size(width: int, height: int, size: int):
    """The "keep_ratio" protocol's size: mmsegmentation's test ``Resize(scale=(4 size, size), keep_ratio=True)``
    (mmcv's rescale): the largest factor at which the long side fits 4 x size and the short side fits size,
    each side rounded half up. ADE20K's test pipeline is size 512, i.e. scale (2048, 512)."""
    factor = min(4 * size / max(width, height), size / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def eval_sample(dataset, index: int, protocol: str = "paper", size: int = 224):
    """``(image_id, uint8 HxWx3 image, uint8 HxW label)`` of VOC val image ``index`` under a protocol.

    "paper": exactly size x size (Pillow bilinear image, nearest label), as the paper's sweep evaluated;
    "shortside": short side ``size``, aspect kept (the notebook's FixScaleResize, its clean PCA pass);
    "native": the original resolution (our extension; Cityscapes' presets); images under MIN_SIDE (32) a side are
    refused (``check_native_size``), the other protocols take any size (docs/reliability.md, "Input data");
    "keep_ratio": aspect kept, fitted into 4 size x size (``keep_ratio_size``; the ADE20K preset).
    """
    img, target = dataset[index]
    if protocol == "native":
        check_native_size(dataset, index, *img.size)
    if protocol == "paper":
        image, label = paper_resize(img, target, size)
    elif protocol == "shortside":
        image, label = shortside_resize(img, target, size)
    elif protocol == "native":
        image, label = np.asarray(img.convert("RGB")), np.array(target, dtype=np.uint8)
    elif protocol == "keep_ratio":
        image, label = _pil_resize(img, target, *keep_ratio_size(*img.size, size))
    else:
        raise UsageError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    return image_id(dataset, index), image, label


def check_native_size(dataset, index: int, width: int, height: int) -> None:
    """Refuse an image too small for --protocol native: imagecorruptions needs MIN_SIDE pixels a side.

    Refused for the clean condition too, so that every condition of a run scores the same images. "paper"
    and "shortside" resize first (to --size, itself at least MIN_SIDE), so they take any size.
    """
    if width < MIN_SIDE or height < MIN_SIDE:
        split = getattr(dataset, "split_file", "the split file")
        raise UsageError(f"image {dataset.images[index]} is {width}x{height}: --protocol native corrupts images at "
                         f"their own size and imagecorruptions needs at least {MIN_SIDE}x{MIN_SIDE}; use --protocol "
                         f"paper or shortside (they resize first), or remove {image_id(dataset, index)} from {split}")


def check_protocol_sizes(dataset, indices, protocol: str) -> None:
    """Before any work: ``check_native_size`` on every image a run will use, from the file headers only (cheap:
    BENCHMARKS.md, Decisions), so that a small image stops the run before it writes anything. A file that
    cannot be opened is left to the loader, which names the damage."""
    if protocol != "native":
        return
    for index in indices:
        try:
            with Image.open(dataset.images[index]) as im:
                size = im.size
        except (OSError, ValueError, SyntaxError):
            continue
        check_native_size(dataset, index, *size)

"""Small synthetic datasets in the on-disk layouts of Cityscapes, ADE20K, ACDC and the generic folder.

    python -m common.synthetic_layouts --layout cityscapes --root data/synthetic-cityscapes
    python -m common.synthetic_layouts --layout ade20k --root data/synthetic-ade20k
    python -m common.synthetic_layouts --layout acdc --root data/synthetic-acdc
    python -m common.synthetic_layouts --layout folder --root data/synthetic-folder

Each writes, once (a second call with the same arguments returns at once), the real layout that
common/datasets reads (docs/datasets.md), with labels in the dataset's RAW encoding, so that every adapter is
tested end to end through the loader the real data goes through:

- cityscapes: ``leftImg8bit/<split>/<city>/<city>_NNNNNN_NNNNNN_leftImg8bit.png`` and
  ``gtFine/.../*_gtFine_labelIds.png``, street-like scenes (sky, buildings, road, sidewalk, cars, people,
  poles) at ``width x height`` (default 64 x 32), with labelIds that map to 255 among them (unlabeled, ego
  vehicle, static, parking, guard rail). Cities: aachen, bochum (train); frankfurt, lindau, munster (val).
- ade20k: ``ADEChallengeData2016/images/{training,validation}/ADE_*.jpg`` and ``annotations/.../*.png``
  holding 0..150 (0 = other), at sizes that vary per image (32..``max_side`` a side).
- acdc: ``rgb_anon/<condition>/<split>/<sequence>/*_rgb_anon.png`` and ``gt/.../*_gt_labelIds.png`` for fog,
  night, rain and snow, each condition visibly applied to the image; the decoys the real ACDC holds beside them
  (``*_gt_labelTrainIds.png``, ``*_gt_labelColor.png``, an ``rgb_anon/<condition>/<split>_ref/`` folder) are
  written too, so that a loader reading the wrong file shows.
- folder: ``classes.txt`` (background + 5 classes), ``palette.txt``, ``images/*.png``, ``labels/*.png``,
  ``train.txt`` and ``val.txt``.

In every layout a class is a colour (plus noise), so a small model can learn it. Same arguments ->
byte-identical files: every image draws from its own numpy Generator seeded by (seed, layout, split, index).
"""
import argparse
import json
import os
import time

import numpy as np
from PIL import Image

from .cli import UsageError
from .datasets import ade20k, cityscapes
from .synthetic import STAMP, _read_stamp, install_generated

GENERATOR_VERSION = "synthetic-layouts-2"
LAYOUTS = ("cityscapes", "ade20k", "acdc", "folder")
DEFAULTS = dict(n_train=2, n_val=3, width=64, height=32, max_side=72, seed=0)
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau", "munster")}
ACDC_SEQUENCES = {"fog": "GOPR0475", "night": "GOPR0351", "rain": "GOPR0400", "snow": "GOPR0122"}
FOLDER_CLASSES = ("background", "disc", "square", "bar", "ring", "cross")
_LAYOUT_CODE = {name: k for k, name in enumerate(LAYOUTS)}
_SPLIT_CODE = {"train": 0, "val": 1}

# Cityscapes labelIds (cityscapes.LABELS) the street scene draws; their colours are the table's, except the
# void ids whose table colour is black (a model could not tell them apart): those get their own grey.
SKY, BUILDING, VEGETATION, ROAD, SIDEWALK = 23, 11, 21, 7, 8
OBJECTS = (26, 24, 17, 20, 19, 27, 33)          # car, person, pole, traffic sign, traffic light, truck, bicycle
VOID = (0, 1, 4, 9, 14)                          # unlabeled, ego vehicle, static, parking, guard rail -> 255
_COLOURS = {i: colour for _, i, _, colour in cityscapes.LABELS if i >= 0}
_COLOURS.update({0: (30, 30, 30), 1: (60, 40, 20), 4: (110, 110, 90)})


def _rng(seed, layout, split, index, extra=0):
    return np.random.default_rng([seed, _LAYOUT_CODE[layout], _SPLIT_CODE[split], index, extra])


def _paint(label, colours, rng, noise=4.0):
    """Image of a label map: each value's colour, a gentle brightness ramp, fine noise; uint8 HxWx3."""
    h, w = label.shape
    lut = np.zeros((256, 3), np.float32)
    for value, colour in colours.items():
        lut[value] = colour
    img = lut[label] * rng.uniform(0.9, 1.1)
    img *= np.linspace(rng.uniform(0.9, 1.0), rng.uniform(1.0, 1.1), w, dtype=np.float32)[None, :, None]
    img += rng.normal(0, noise, (h, w, 1))
    return np.clip(img, 0, 255).round().astype(np.uint8)


def street_label(rng, h, w) -> np.ndarray:
    """A Cityscapes-like labelIds map: sky, a skyline of buildings and trees, sidewalk and road, objects on them,
    and void regions (ids without a train id)."""
    lab = np.full((h, w), SKY, np.uint8)
    horizon = int(h * rng.uniform(0.35, 0.5))
    x = 0
    while x < w:   # skyline: blocks of building or vegetation of random width and height
        bw = int(rng.integers(max(2, w // 8), max(3, w // 3)))
        top = int(rng.uniform(0.05, 0.3) * h)
        lab[top:horizon, x:x + bw] = BUILDING if rng.random() < 0.7 else VEGETATION
        x += bw
    walk = horizon + max(1, int(h * rng.uniform(0.08, 0.15)))
    lab[horizon:walk] = SIDEWALK
    lab[walk:] = ROAD
    for _ in range(int(rng.integers(2, 5))):   # objects standing on the ground
        k = int(rng.choice(OBJECTS))
        ow, oh = int(rng.integers(2, max(3, w // 5))), int(rng.integers(3, max(4, h // 3)))
        x0, bottom = int(rng.integers(0, w - ow)), int(rng.integers(horizon, h))
        lab[max(0, bottom - oh):bottom, x0:x0 + ow] = k
    for _ in range(int(rng.integers(1, 3))):   # void: patches that the train ids ignore
        k = int(rng.choice(VOID))
        vw, vh = int(rng.integers(2, max(3, w // 6))), int(rng.integers(2, max(3, h // 5)))
        x0, y0 = int(rng.integers(0, w - vw)), int(rng.integers(0, h - vh))
        lab[y0:y0 + vh, x0:x0 + vw] = k
    if rng.random() < 0.5:
        lab[h - max(1, h // 10):] = 1   # the ego vehicle's bonnet along the bottom
    return lab


def _save_png(array, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _cityscapes(dest, cfg):
    for split, n in (("train", cfg["n_train"]), ("val", cfg["n_val"])):
        for i in range(n):
            rng = _rng(cfg["seed"], "cityscapes", split, i)
            city = CITIES[split][i % len(CITIES[split])]
            stem = f"{city}_{i:06d}_{19 + 7 * i:06d}"
            lab = street_label(rng, cfg["height"], cfg["width"])
            _save_png(_paint(lab, _COLOURS, rng), os.path.join(dest, "leftImg8bit", split, city,
                                                                stem + "_leftImg8bit.png"))
            _save_png(lab, os.path.join(dest, "gtFine", split, city, stem + "_gtFine_labelIds.png"))


def _condition(img, condition, rng):
    """What each ACDC condition does to the picture, roughly: fog veils it, night darkens it, rain streaks it,
    snow speckles it."""
    x = img.astype(np.float32)
    if condition == "fog":
        x = 0.5 * x + 0.5 * 200
    elif condition == "night":
        x = 0.3 * x
    elif condition == "rain":
        x[:, ::5] = 0.7 * x[:, ::5] + 0.3 * 220
    else:
        x[rng.random(x.shape[:2]) < 0.05] = 250
    return np.clip(x, 0, 255).round().astype(np.uint8)


def _acdc(dest, cfg):
    for cond in ("fog", "night", "rain", "snow"):
        seq = ACDC_SEQUENCES[cond]
        for split, n in (("train", cfg["n_train"]), ("val", cfg["n_val"])):
            for i in range(n):
                rng = _rng(cfg["seed"], "acdc", split, i, extra=1 + ("fog", "night", "rain", "snow").index(cond))
                # Frames of the train split come later in the sequence: an id is never in two splits (as in ACDC).
                stem = f"{seq}_frame_{41 + 8 * i + (800 if split == 'train' else 0):06d}"
                lab = street_label(rng, cfg["height"], cfg["width"])
                img = _condition(_paint(lab, _COLOURS, rng), cond, rng)
                _save_png(img, os.path.join(dest, "rgb_anon", cond, split, seq, stem + "_rgb_anon.png"))
                gt = os.path.join(dest, "gt", cond, split, seq, stem)
                _save_png(lab, gt + "_gt_labelIds.png")
                # Decoys the real ACDC holds beside the labelIds: train ids, colours, a reference image.
                _save_png(cityscapes.label_to_train_id(lab), gt + "_gt_labelTrainIds.png")
                _save_png(np.array([_COLOURS[v] for v in range(34)], np.uint8)[lab], gt + "_gt_labelColor.png")
                _save_png(img[::-1].copy(), os.path.join(dest, "rgb_anon", cond, split + "_ref", seq,
                                                          stem + "_rgb_ref_anon.png"))


def _blobs(rng, h, w, values, background, n):
    """A label map of ``background`` with ``n`` rectangles and ellipses of values drawn from ``values``."""
    lab = np.full((h, w), background, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(n):
        v = int(rng.choice(values))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.15, 0.4) * h, rng.uniform(0.15, 0.4) * w
        if rng.random() < 0.5:
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        else:
            mask = (abs(yy - cy) < ry) & (abs(xx - cx) < rx)
        lab[mask] = v
    return lab


def _ade20k(dest, cfg):
    base = os.path.join(dest, ade20k.FOLDER)
    colours = {k + 1: tuple(int(c) for c in ade20k.PALETTE[k]) for k in range(len(ade20k.CLASSES))}
    colours[0] = (0, 0, 0)
    for split, n in (("train", cfg["n_train"]), ("val", cfg["n_val"])):
        word, folder = ("train", "training") if split == "train" else ("val", "validation")
        for i in range(n):
            rng = _rng(cfg["seed"], "ade20k", split, i)
            h, w = (int(v) for v in rng.integers(32, cfg["max_side"] + 1, 2))   # sizes vary, as in ADE20K
            # A few of the 150 classes per image on a wall / floor / sky stuff background, some "other" (0).
            values = [0] + [int(v) for v in rng.integers(1, 151, 4)]
            lab = _blobs(rng, h, w, values, background=int(rng.choice((1, 3, 4))), n=int(rng.integers(2, 6)))
            lab[: h // 6, : w // 5] = 0   # always some "other" pixels, which the adapter must ignore
            stem = f"ADE_{word}_{i + 1:08d}"
            path = os.path.join(base, "images", folder, stem + ".jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(_paint(lab, colours, rng)).save(path, quality=95)
            _save_png(lab, os.path.join(base, "annotations", folder, stem + ".png"))


def _folder(dest, cfg):
    n_cls = len(FOLDER_CLASSES)
    palette = np.array([(0, 0, 0), (230, 60, 40), (40, 90, 230), (240, 200, 30), (40, 180, 70), (170, 60, 200)],
                       np.uint8)
    with open(os.path.join(dest, "classes.txt"), "w") as f:
        f.write("".join(c + "\n" for c in FOLDER_CLASSES))
    with open(os.path.join(dest, "palette.txt"), "w") as f:
        f.write("".join(" ".join(str(int(v)) for v in row) + "\n" for row in palette))
    colours = {k: tuple(int(c) for c in palette[k]) for k in range(n_cls)}
    colours[0] = (120, 120, 120)
    colours[255] = (255, 255, 255)
    for split, n in (("train", cfg["n_train"]), ("val", cfg["n_val"])):
        ids = []
        for i in range(n):
            rng = _rng(cfg["seed"], "folder", split, i)
            lab = _blobs(rng, cfg["height"], cfg["width"], list(range(1, n_cls)), 0, int(rng.integers(1, 4)))
            lab[0, :] = 255   # a row of "ignore", as annotation tools leave at borders
            ids.append(f"{split}_{i:04d}")
            _save_png(_paint(lab, colours, rng), os.path.join(dest, "images", ids[-1] + ".png"))
            _save_png(lab, os.path.join(dest, "labels", ids[-1] + ".png"))
        with open(os.path.join(dest, f"{split}.txt"), "w") as f:
            f.write("".join(i + "\n" for i in ids))


_WRITERS = {"cityscapes": _cityscapes, "ade20k": _ade20k, "acdc": _acdc, "folder": _folder}


def ensure_layout(layout: str, root, *, n_train=None, n_val=None, width=None, height=None, max_side=None,
                  seed=None, quiet=False) -> str:
    """Generate (once) the synthetic ``layout`` dataset at ``root`` and return ``root`` (absolute).

    A dataset with the same arguments there is used as it is; one with other arguments (or an older generator)
    is replaced; a folder that is not a synthetic dataset is refused.
    """
    if layout not in _WRITERS:
        raise UsageError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    root = os.path.abspath(os.fspath(root))
    given = dict(n_train=n_train, n_val=n_val, width=width, height=height, max_side=max_side, seed=seed)
    cfg = {"generator": GENERATOR_VERSION, "layout": layout}
    cfg.update({k: int(DEFAULTS[k] if v is None else v) for k, v in given.items()})
    if _read_stamp(root) == cfg:
        return root
    if min(cfg["n_train"], cfg["n_val"]) < 1 or min(cfg["width"], cfg["height"], cfg["max_side"]) < 32 \
            or cfg["seed"] < 0:
        raise UsageError(f"synthetic {layout}: need counts >= 1, sizes >= 32 px (the corruptions' minimum) and "
                         f"seed >= 0, got {cfg}")

    def generate(dest, cfg):
        _WRITERS[layout](dest, cfg)
        with open(os.path.join(dest, STAMP), "w") as f:   # written last: its presence means "complete"
            json.dump(cfg, f, indent=1, sort_keys=True)
            f.write("\n")

    t0 = time.time()
    install_generated(root, cfg, generate)
    if not quiet:
        print(f"synthetic {layout}: wrote train {cfg['n_train']}, val {cfg['n_val']} images to {root} in "
              f"{time.time() - t0:.1f}s", flush=True)
    return root


def get_args_parser():
    p = argparse.ArgumentParser(description="Generate a small synthetic dataset in a real dataset's layout (once).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layout", required=True, choices=LAYOUTS, help="whose on-disk layout and label encoding")
    p.add_argument("--root", required=True, help="output folder (the dataset root an adapter reads)")
    p.add_argument("--n-train", type=int, default=DEFAULTS["n_train"], help="train images (per ACDC condition)")
    p.add_argument("--n-val", type=int, default=DEFAULTS["n_val"], help="val images (per ACDC condition)")
    p.add_argument("--width", type=int, default=DEFAULTS["width"], help="image width, px (cityscapes, acdc, folder)")
    p.add_argument("--height", type=int, default=DEFAULTS["height"],
                   help="image height, px (cityscapes, acdc, folder; >= 32)")
    p.add_argument("--max-side", type=int, default=DEFAULTS["max_side"],
                   help="largest side, px (ade20k, whose sizes vary from 32 up to this)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="same seed and sizes: byte-identical files")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def main(args):
    ensure_layout(args.layout, args.root, n_train=args.n_train, n_val=args.n_val, width=args.width,
                  height=args.height, max_side=args.max_side, seed=args.seed, quiet=args.quiet)


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main, get_args_parser())

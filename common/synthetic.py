"""A small synthetic stand-in for PASCAL VOC 2012 + SBD, written in their real on-disk layouts.

    python -m common.synthetic --root data/synthetic        # 700 images, in a few seconds

writes (once; a second call with the same arguments returns at once)

    <root>/synthetic.json                        arguments + generator version (the "done" stamp)
    <root>/voc/VOCdevkit/VOC2012/JPEGImages/<id>.jpg              RGB, JPEG quality 90
    <root>/voc/VOCdevkit/VOC2012/SegmentationClass/<id>.png       palette PNG, 0..20 and 255
    <root>/voc/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    <root>/sbd/img/<id>.jpg, <root>/sbd/cls/<id>.mat             GTcls struct as in the real SBD
    <root>/sbd/{train,val,train_noval}.txt

so that ``VOCSegmentation(<root>/voc, year="2012", image_set="train"|"val")`` and
``SBDataset(<root>/sbd, image_set="train_noval", mode="segmentation"|"boundaries")`` read it unchanged
(docs/protocol.md, "Data"). Ids look like VOC's: VOC train ``2024_NNNNNN``, VOC val ``2025_NNNNNN``, SBD
``2026_NNNNNN``, so the three sets never overlap (the real train_noval excludes VOC val too).

Each image has a smooth low-saturation background (gradient, blotches, fine noise), 0-3 grey-ish
irregular "distractor" blobs (labelled background) and 1-4 objects, 15-60% of the short side, which
may overlap (the later one is on top and owns the label) and may be clipped by the border. Image and
label come from one hard-edged PIL mask per object. A class is a (shape, texture, colour) triple, and
each (shape, texture) pair and each colour (4 tones x 5 hues) is used once:

    id class        shape    texture  colour         id class        shape    texture  colour
     1 aeroplane    disc     solid    bright red     11 diningtable  disc     checker  pale yellow
     2 bicycle      square   solid    dark blue      12 dog          square   checker  muted rose
     3 bird         triangle solid    pale violet    13 horse        triangle checker  bright green
     4 boat         ring     solid    muted lime     14 motorbike    ring     checker  dark orange
     5 bottle       cross    solid    muted cyan     15 person       cross    checker  bright azure
     6 bus          disc     stripes  muted blue     16 pottedplant  disc     dots     dark cyan
     7 car          square   stripes  pale green     17 sheep        square   dots     bright yellow
     8 cat          triangle stripes  dark lime      18 sofa         triangle dots     muted orange
     9 chair        ring     stripes  bright violet  19 train        ring     dots     pale azure
    10 cow          cross    stripes  pale red       20 tvmonitor    cross    dots     dark rose

Colour is the strong cue; shape and texture back it up. It has to be this coarse for the laptop run
in train.py's docstring (DeepLabV3+ ResNet-18 from scratch, ~450 steps) to learn it: with 20 hues
18 degrees apart, or one colour per two classes, that run learned colour only, merged neighbouring
hues (the training hue jitter is +-36 degrees) and ended at val mIoU 0.23; with this table and these
object counts it ended at 0.69. Because colour carries the classes, contrast and fog hurt most.

VOC labels get a 255 "ignore" band along every class boundary inside the image, like the real VOC
outlines: a pixel is 255 when a pixel of another class lies within ``ignore_radius`` (Chebyshev) of
it, i.e. a band 2 px wide for short sides under 120 px and 4 px above. SBD labels have no band; their
per-class ``Boundaries`` are the class's pixels with a 4-neighbour of another class.

Same arguments -> byte-identical files: every image draws from its own numpy Generator seeded by
(seed, split, index), and the .mat header's creation time is replaced by a fixed text.

The drawing pieces (``class_style``, ``shape_proportions``, ``shape_mask``, ``texture_params``,
``texture_pattern``, ``object_colours``, ``greyish``, ``blotches``) also draw make_video.py's synthetic clip
(common/synthetic_clip.py).
"""
import argparse
import colorsys
import io
import json
import os
import shutil
import socket
import tempfile
import time

import numpy as np
import scipy.io
import scipy.ndimage as ndi
import scipy.sparse
from PIL import Image, ImageDraw

from .cli import UsageError, write_problem
from .constants import NUM_CLASSES, voc_palette

# Bump whenever the drawing changes, so that stamps of older datasets no longer match.
GENERATOR_VERSION = "synthetic-voc-6"
DEFAULTS = dict(n_voc_train=300, n_sbd=300, n_val=100, min_side=64, max_side=160, seed=0)
STAMP = "synthetic.json"

# Colour is the cue a small net learns first, and the training jitter moves it: hue by up to +-36
# degrees, brightness and saturation by up to 30% (docs/protocol.md "Transforms"). So a tone has only five
# hues, 72 degrees apart, and tones differ in value or saturation by more than the jitter; the two
# tones that differ in value only (pale, muted) sit on hues 36 degrees apart as well.
TONES = {"bright": (0.85, 0.95), "dark": (0.9, 0.4), "pale": (0.45, 0.97), "muted": (0.45, 0.6)}  # (sat, value)
HUES = {"red": 0, "orange": 36, "yellow": 72, "lime": 108, "green": 144, "cyan": 180, "azure": 216,
        "blue": 252, "violet": 288, "rose": 324}
# Class k = row k: each (shape, texture) pair and each colour once; within a tone, or a hue pair such
# as red/orange, no two classes share a shape or (hue pair) a texture, so colour does not give them away.
CLASS_TABLE = (
    ("disc", "solid", "bright", "red"), ("square", "solid", "dark", "blue"),
    ("triangle", "solid", "pale", "violet"), ("ring", "solid", "muted", "lime"),
    ("cross", "solid", "muted", "cyan"), ("disc", "stripes", "muted", "blue"),
    ("square", "stripes", "pale", "green"), ("triangle", "stripes", "dark", "lime"),
    ("ring", "stripes", "bright", "violet"), ("cross", "stripes", "pale", "red"),
    ("disc", "checker", "pale", "yellow"), ("square", "checker", "muted", "rose"),
    ("triangle", "checker", "bright", "green"), ("ring", "checker", "dark", "orange"),
    ("cross", "checker", "bright", "azure"), ("disc", "dots", "dark", "cyan"),
    ("square", "dots", "bright", "yellow"), ("triangle", "dots", "muted", "orange"),
    ("ring", "dots", "pale", "azure"), ("cross", "dots", "dark", "rose"),
)


def class_style(k: int):
    """(shape, texture, tone, RGB) of class k in 1..20 (CLASS_TABLE, drawn in the module docstring)."""
    shape, texture, tone, hue = CLASS_TABLE[k - 1]
    rgb = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(HUES[hue] / 360, *TONES[tone]))
    return shape, texture, tone, rgb


def second_tone(colour, tone: str):
    """The texture's second colour: a darker shade that stays inside the class's tone, so that the
    stripes of a bright colour do not look like the dark class of the same hue."""
    return colour * (0.6 if tone == "dark" else 0.78)


SPLITS = {"voc_train": (0, "2024"), "voc_val": (1, "2025"), "sbd": (2, "2026")}  # split -> (seed code, id year)
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by common.synthetic".ljust(116)  # fixed, not time.asctime()


def ignore_radius(short_side: int) -> int:
    """Half-width of the VOC 255 band: 1 px each side below a short side of 120 px, 2 px above."""
    return max(1, round(short_side / 80))


def _image_size(rng, min_side, max_side):
    """Random (h, w), landscape or portrait, aspect at most 1.8, short side >= min_side."""
    long = int(rng.integers(max(min_side, round(0.75 * max_side)), max_side + 1))
    short = int(rng.integers(max(min_side, round(long / 1.8)), long + 1))
    return (short, long) if rng.random() < 0.5 else (long, short)


def _rotated(points, angle, cx, cy):
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


# The drawing pieces below are public so that common/synthetic_clip.py draws the same classes. Each random
# draw is a function of the rng passed in, in the order the dataset has always made them: the files stay
# byte-identical for a GENERATOR_VERSION.

def shape_proportions(rng, shape) -> dict:
    """The random proportions of one ``shape``, as keywords of ``shape_mask``: ``aspect`` (disc, ring, square),
    ``hole`` (ring), ``bar`` (cross); a triangle has none."""
    if shape in ("disc", "ring"):
        aspect = rng.uniform(0.85, 1.0)  # nearly round so that a disc never looks like a rectangle
        # A ring's thickness is 40-50% of its radius.
        return dict(aspect=aspect, hole=rng.uniform(0.5, 0.6)) if shape == "ring" else dict(aspect=aspect)
    if shape == "square":
        return dict(aspect=rng.uniform(0.7, 1.0))
    if shape == "cross":
        return dict(bar=rng.uniform(0.35, 0.45))  # two bars of width 35-45% of the size
    return {}


def shape_mask(shape, h, w, cx, cy, r, angle, aspect=1.0, hole=0.55, bar=0.4) -> np.ndarray:
    """Boolean HxW mask of one class shape of radius ``r`` centred at (cx, cy), hard-edged (PIL).

    ``angle`` (radians) turns the polygons (square, triangle, cross); discs and rings are axis-aligned
    ellipses of y/x ratio ``aspect``. A ring's hole has ``hole`` times its radius and shows whatever lies
    below; a square's half-side is 0.75 r (its area close to the disc's) by ``aspect`` times that; a cross is
    two bars of half-width ``bar`` times r. Every shape lies within 1.1 r of its centre.
    """
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    if shape in ("disc", "ring"):
        ry = r * aspect
        d.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=1)
        if shape == "ring":
            d.ellipse([cx - hole * r, cy - hole * ry, cx + hole * r, cy + hole * ry], fill=0)
    elif shape == "square":
        q = r * 0.75
        e = q * aspect
        d.polygon(_rotated([(-q, -e), (q, -e), (q, e), (-q, e)], angle, cx, cy), fill=1)
    elif shape == "triangle":
        corners = [(r * np.cos(t), r * np.sin(t)) for t in (0, 2 * np.pi / 3, 4 * np.pi / 3)]
        d.polygon(_rotated(corners, angle, cx, cy), fill=1)
    else:  # cross
        t = r * bar
        for pts in ([(-r, -t), (r, -t), (r, t), (-r, t)], [(-t, -r), (t, -r), (t, r), (-t, r)]):
            d.polygon(_rotated(pts, angle, cx, cy), fill=1)
    return np.asarray(m, dtype=bool)


def texture_params(rng, texture, size):
    """(period, angle, phase) of one object's texture, or None for "solid" (which draws nothing).

    The period follows the object's size (3-4.5 periods across it), so the pattern survives the 0.5x-2x
    training rescale about as well as the shape does.
    """
    if texture == "solid":
        return None
    period, angle = max(4.0, size * rng.uniform(0.22, 0.32)), rng.uniform(0, np.pi)
    return period, angle, (rng.random(), rng.random())


def texture_pattern(texture, xx, yy, params) -> np.ndarray:
    """0/1 pattern (1 = the second tone) at coordinates (xx, yy), with ``texture_params``' period, angle, phase."""
    if texture == "solid":
        return np.zeros(yy.shape, dtype=bool)
    period, a, phase = params
    u = (xx * np.cos(a) + yy * np.sin(a)) / period + phase[0]
    v = (-xx * np.sin(a) + yy * np.cos(a)) / period + phase[1]
    if texture == "stripes":
        return (u % 1) < 0.5
    if texture == "checker":
        return ((np.floor(2 * u) + np.floor(2 * v)) % 2) == 1
    return ((u % 1 - 0.5) ** 2 + (v % 1 - 0.5) ** 2) < 0.3 ** 2  # dots


def object_colours(rng, k: int):
    """(colour, second) of one object of class k: the class colour jittered by up to 5% per channel and 10% in
    brightness (float32 RGB), and its texture's second tone."""
    _, _, tone, rgb = class_style(k)
    colour = np.array(rgb, np.float32) * rng.uniform(0.95, 1.05, 3) * rng.uniform(0.9, 1.1)
    return colour, second_tone(colour, tone)


def greyish(rng, lo=0.25, hi=0.9):
    """A low-saturation colour (at most 0.18), so background and distractors never take a class's."""
    v = rng.uniform(lo, hi) * 255
    return v * (1 - rng.uniform(0, 0.18) * rng.random(3))


def blotches(rng, h, w):
    """Smooth low-frequency blotches, HxWx1 float32 in -128..127: a 4x4 random field upsampled."""
    field = Image.fromarray(rng.uniform(0, 255, (4, 4)).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    return np.asarray(field, np.float32)[..., None] - 128


def _background(rng, h, w, yy, xx):
    a = rng.uniform(0, 2 * np.pi)
    t = (xx * np.cos(a) + yy * np.sin(a)) / max(h, w)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = (1 - t)[..., None] * greyish(rng) + t[..., None] * greyish(rng)
    img += blotches(rng, h, w) * rng.uniform(0.05, 0.2)  # low contrast
    for _ in range(int(rng.integers(0, 4))):  # distractor blobs: irregular polygons, labelled 0
        n, cx, cy = int(rng.integers(5, 9)), rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.1, 0.3) * min(h, w)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.5, 1.0, n)
        m = Image.new("L", (w, h), 0)
        ImageDraw.Draw(m).polygon(list(zip(cx + rad * np.cos(ang), cy + rad * np.sin(ang))), fill=1)
        img[np.asarray(m, dtype=bool)] = greyish(rng)
    return img


def render(seed: int, split: str, index: int, min_side: int, max_side: int):
    """Draw one image: returns (uint8 HxWx3 image, uint8 HxW class map without 255)."""
    code = SPLITS[split][0]
    rng = np.random.default_rng([seed, code, index])
    h, w = _image_size(rng, min_side, max_side)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = _background(rng, h, w, yy, xx)
    seg = np.zeros((h, w), np.uint8)
    # Round-robin primary class: any 20 consecutive images of a split show all 20 classes.
    primary = 1 + (index + 7 * code) % (NUM_CLASSES - 1)
    # 1-4 objects, mostly 2 or more: more foreground pixels trained better (BENCHMARKS.md, Decisions).
    others = rng.integers(1, NUM_CLASSES, rng.choice(4, p=[0.1, 0.3, 0.3, 0.3]))
    sizes = np.sort(rng.uniform(0.15, 0.6, len(others)))[::-1]  # big first, so small ones stay visible
    objs = [(int(k), s, rng.uniform(0, w), rng.uniform(0, h)) for k, s in zip(others, sizes)]
    # The primary object comes last (on top) and with its centre away from the border, so it is seen.
    objs.append((primary, rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h))
    for k, s, cx, cy in objs:
        shape, texture, _, _ = class_style(k)
        size = max(s, 0.25 if shape == "ring" else 0) * min(h, w)  # thin rings would be all 255 band
        angle = rng.uniform(0, 2 * np.pi)
        mask = shape_mask(shape, h, w, cx, cy, size / 2, angle, **shape_proportions(rng, shape))
        colour, second = object_colours(rng, k)
        a = rng.uniform(0, 2 * np.pi)  # shading: a gentle linear brightness ramp across the object
        shade = 1 + 0.1 * ((xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)) / max(size / 2, 1)
        pattern = texture_pattern(texture, xx, yy, texture_params(rng, texture, size))[..., None]
        obj = np.where(pattern, second, colour) * np.clip(shade, 0.8, 1.2)[..., None]
        img[mask] = obj[mask]
        seg[mask] = k
    img += rng.normal(0, 4, (h, w, 1))  # fine sensor-like noise over everything
    return np.clip(img, 0, 255).round().astype(np.uint8), seg


def voc_label(seg: np.ndarray) -> np.ndarray:
    """VOC-style label: ``seg`` with 255 on every pixel that has another class within ignore_radius."""
    size = 2 * ignore_radius(min(seg.shape)) + 1
    # mode="nearest" repeats the edge, so the image border itself never gets a band (as in VOC).
    band = ndi.maximum_filter(seg, size, mode="nearest") != ndi.minimum_filter(seg, size, mode="nearest")
    return np.where(band, 255, seg).astype(np.uint8)


def sbd_mat_bytes(seg: np.ndarray) -> bytes:
    """The SBD ``cls/<id>.mat`` content: struct GTcls{Boundaries, Segmentation, CategoriesPresent}."""
    cross = ndi.generate_binary_structure(2, 1)
    edge = (ndi.maximum_filter(seg, footprint=cross, mode="nearest") != seg) | \
           (ndi.minimum_filter(seg, footprint=cross, mode="nearest") != seg)
    cells = np.empty((NUM_CLASSES - 1, 1), dtype=object)  # a 20x1 MATLAB cell of sparse logical maps
    for k in range(1, NUM_CLASSES):
        cells[k - 1, 0] = scipy.sparse.csc_matrix(edge & (seg == k))
    present = np.array([k for k in range(1, NUM_CLASSES) if (seg == k).any()], np.uint8).reshape(-1, 1)
    gt = {"Boundaries": cells, "Segmentation": seg, "CategoriesPresent": present}
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"GTcls": gt}, do_compression=True)
    return _MAT_HEADER + buf.getvalue()[116:]  # savemat stamps the wall-clock time into the 116-byte header


def _write_split(out, split, n, seed, min_side, max_side):
    """Render n images of one split into ``out`` (VOC or SBD layout); return their ids."""
    ids = [f"{SPLITS[split][1]}_{i:06d}" for i in range(n)]
    pal = voc_palette().flatten().tolist()
    for i, name in enumerate(ids):
        img, seg = render(seed, split, i, min_side, max_side)
        if split == "sbd":
            Image.fromarray(img).save(os.path.join(out, "img", name + ".jpg"), quality=90)
            with open(os.path.join(out, "cls", name + ".mat"), "wb") as f:
                f.write(sbd_mat_bytes(seg))
        else:
            Image.fromarray(img).save(os.path.join(out, "JPEGImages", name + ".jpg"), quality=90)
            lab = Image.fromarray(voc_label(seg))
            lab.putpalette(pal)  # turns the "L" image into "P" with the VOC colours, as VOC ships them
            lab.save(os.path.join(out, "SegmentationClass", name + ".png"))
    return ids


def _generate(dest, cfg):
    voc = os.path.join(dest, "voc", "VOCdevkit", "VOC2012")
    sbd = os.path.join(dest, "sbd")
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(voc, d))
    for d in ("img", "cls"):
        os.makedirs(os.path.join(sbd, d))
    common = (cfg["seed"], cfg["min_side"], cfg["max_side"])
    train = _write_split(voc, "voc_train", cfg["n_voc_train"], *common)
    val = _write_split(voc, "voc_val", cfg["n_val"], *common)
    sb = _write_split(sbd, "sbd", cfg["n_sbd"], *common)
    cut = len(sb) - len(sb) // 10  # SBD's own train/val (90/10); train_noval is all: none of it is VOC val
    sets = os.path.join(voc, "ImageSets", "Segmentation")
    lists = {os.path.join(sets, "train.txt"): train, os.path.join(sets, "val.txt"): val,
             os.path.join(sets, "trainval.txt"): train + val, os.path.join(sbd, "train.txt"): sb[:cut],
             os.path.join(sbd, "val.txt"): sb[cut:], os.path.join(sbd, "train_noval.txt"): sb}
    for path, ids in lists.items():
        with open(path, "w") as f:
            f.write("".join(i + "\n" for i in ids))
    with open(os.path.join(dest, STAMP), "w") as f:  # written last: its presence means "complete"
        json.dump(cfg, f, indent=1, sort_keys=True)
        f.write("\n")


def _read_stamp(root):
    try:
        with open(os.path.join(root, STAMP)) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _is_foreign(root):
    """True when root holds something that is not ours (a file, or a non-empty folder without stamp)."""
    if not os.path.exists(root):
        return False
    return not os.path.isdir(root) or (bool(os.listdir(root)) and _read_stamp(root) is None)


def _temp_prefix(root) -> str:
    """``<root>.tmp-<host>-<pid>-``: the host and pid say whether the run that builds it is still alive."""
    return f"{os.path.basename(root)}.tmp-{socket.gethostname()}-{os.getpid()}-"


def _remove_stale_temps(root, max_age_s=3600):
    """Delete ``<root>.tmp-*`` / ``<root>.old-*`` folders left by killed runs: at once when the run was on this
    host and its process is gone, else when more than an hour old.

    Ranks on other hosts may share this filesystem, so their pids mean nothing here; a generation takes
    seconds, so an hour-old temp folder belongs to nobody.
    """
    parent, base = os.path.split(root)
    here = f"{base}.tmp-{socket.gethostname()}-"
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if not name.startswith((base + ".tmp-", base + ".old-")):
            continue
        pid = name[len(here):].split("-")[0] if name.startswith(here) else ""
        if (pid.isdigit() and not _alive(int(pid))) or time.time() - os.path.getmtime(path) > max_age_s:
            shutil.rmtree(path, ignore_errors=True)


def install_generated(root: str, cfg: dict, generate) -> None:
    """Run ``generate(folder, cfg)`` (which writes the STAMP file last) into a private sibling folder and rename
    it to ``root``, replacing an older synthetic dataset there; ``root`` holding something else is refused. A disk
    that refuses a write is one line naming ``root``.

    Shared by every synthetic layout (this VOC + SBD set, and common.synthetic_layouts).
    """
    if _is_foreign(root):
        raise UsageError(f"{root} exists and is not a synthetic dataset (no {STAMP}); "
                         f"choose another root or remove it yourself")
    parent = os.path.dirname(root)
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_stale_temps(root)
        # Build in a private sibling folder and rename it into place, so a killed run leaves no
        # half-written <root>, and two ranks generating at once each install a complete copy.
        tmp = tempfile.mkdtemp(prefix=_temp_prefix(root), dir=parent)
    except OSError as e:
        raise UsageError(write_problem(e, root) or f"{root}: cannot create it ({e.strerror})") from None
    try:
        generate(tmp, cfg)
        for _ in range(5):
            try:
                os.rename(tmp, root)  # succeeds when root is absent (or an empty folder)
                break
            except OSError as e:
                if write_problem(e) is not None:   # the disk refused it: no retry helps
                    raise
                if _read_stamp(root) == cfg:  # another process finished the same dataset first: use theirs
                    break
                if _is_foreign(root):
                    raise UsageError(f"{root} appeared meanwhile and is not a synthetic dataset")
                # An older synthetic dataset (other arguments or version): move it aside, then retry.
                old = tempfile.mkdtemp(prefix=f"{os.path.basename(root)}.old-", dir=parent)
                try:
                    os.rename(root, os.path.join(old, "x"))
                except FileNotFoundError:
                    pass
                shutil.rmtree(old, ignore_errors=True)
        else:
            raise RuntimeError(f"could not move {tmp} to {root}")
    except OSError as e:   # the disk filled up while generating: one line naming the root
        line = write_problem(e, root)
        if line is None:
            raise
        raise UsageError(line) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename (SIGTERM too: common/cli.py)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # it exists, owned by someone else
        return True
    return True


def ensure_synthetic(root, *, n_voc_train=None, n_sbd=None, n_val=None, min_side=None, max_side=None,
                     seed=None, quiet=False) -> tuple[str, str]:
    """Generate (once) and return (voc_root, sbd_root).

    An argument left at None takes its value from the dataset already at ``root`` (so train.py, which
    passes none, uses whatever ``python -m common.synthetic`` made there), else from DEFAULTS. A dataset
    with other values, or from another GENERATOR_VERSION, is replaced.
    """
    root = os.path.abspath(os.fspath(root))
    stamp = _read_stamp(root) or {}
    given = dict(n_voc_train=n_voc_train, n_sbd=n_sbd, n_val=n_val, min_side=min_side, max_side=max_side,
                 seed=seed)
    cfg = {"generator": GENERATOR_VERSION}
    cfg.update({k: int(stamp.get(k, DEFAULTS[k]) if v is None else v) for k, v in given.items()})
    roots = os.path.join(root, "voc"), os.path.join(root, "sbd")
    if stamp == cfg:
        return roots  # fast path: nothing is read or written
    n_voc_train, n_sbd, n_val, min_side, max_side, seed = (cfg[k] for k in given)
    if min(n_voc_train, n_sbd, n_val) < 1 or not 16 <= min_side <= max_side or seed < 0:
        raise UsageError(f"synthetic dataset: need counts >= 1, 16 <= min_side <= max_side and seed >= 0, "
                         f"got {cfg}")
    t0 = time.time()
    install_generated(root, cfg, _generate)
    if not quiet:
        n = n_voc_train + n_val + n_sbd
        print(f"synthetic: wrote {n} images (VOC train {n_voc_train}, val {n_val}, SBD {n_sbd}) "
              f"to {root} in {time.time() - t0:.1f}s", flush=True)
    return roots


def get_args_parser():
    p = argparse.ArgumentParser(description="Generate the synthetic VOC 2012 + SBD dataset (once).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", default="data/synthetic", help="output folder; <root>/voc and <root>/sbd")
    p.add_argument("--n-voc-train", type=int, default=DEFAULTS["n_voc_train"], help="VOC 2012 train images")
    p.add_argument("--n-sbd", type=int, default=DEFAULTS["n_sbd"], help="SBD train_noval images")
    p.add_argument("--n-val", type=int, default=DEFAULTS["n_val"], help="VOC 2012 val images")
    p.add_argument("--min-side", type=int, default=DEFAULTS["min_side"], help="smallest short side, px (>= 16)")
    p.add_argument("--max-side", type=int, default=DEFAULTS["max_side"], help="largest long side, px")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="same seed and sizes: byte-identical files")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    return p


def main(args):
    voc, sbd = ensure_synthetic(args.root, n_voc_train=args.n_voc_train, n_sbd=args.n_sbd, n_val=args.n_val,
                                min_side=args.min_side, max_side=args.max_side, seed=args.seed, quiet=args.quiet)
    if not args.quiet:
        print(f"voc_root={voc}\nsbd_root={sbd}")


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main, get_args_parser())

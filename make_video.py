"""The paper's demo video: a clip run through a baseline and a robust (SCrIBE) model under corruptions.

    python make_video.py --video clip.mp4 --baseline runs/baseline/checkpoint.pt --robust runs/scribe/checkpoint.pt \
        --out demo.mp4
    python make_video.py --synthetic --baseline runs/baseline/checkpoint.pt --robust runs/scribe/checkpoint.pt \
        --out demo.mp4                       # 130 generated frames of moving synthetic-VOC shapes

writes ``--out`` (H.264 ``libx264``, yuv420p; ``mpeg4`` where this PyAV build lacks libx264), one output
frame per input frame at the input's frame rate (its stream's average rate; ``--fps`` for --synthetic).
Each frame is 960x540, four 480x270 tiles (PROTOCOL.md, "Figures and video"), captioned as the notebook's:

    original                     | corrupted, "Corruption: <name>" ("Corruption: None" when clean)
    baseline prediction, "Theirs" | robust (SCrIBE) prediction, "Ours"          (VOC palette colours)

What is the notebook's (cells 55-59 of ICIP2020_OnTheStructuresOfRepresentation_LehmanTemelAlRegib.ipynb):
- Geometry. Each frame is resized to 480 x 270 (Pillow's default filter, bicubic in the notebook's Pillow 7.2),
  squashed to 224 x 224 (bilinear), corrupted, and resized back to 270 x 480 (bilinear); that array is what both
  models see and the corrupted tile. The original tile is the frame resized to 270 rows (bilinear; 480 x 270 for
  16:9 input; other aspects are squashed to 480 x 270 here, where the notebook's concatenation would fail). The
  clean segment takes the same round trip through 224 x 224, uncorrupted.
- Schedule. ``switch = n_frames // 13``: frame i is in segment ``i // switch``: clean, then the paper's
  corruptions 1..13 skipping frost (shot_noise ... pixelate) at severity 2, elastic_transform at 3. The
  ``n_frames % 13`` leftover frames keep the last corruption (PROTOCOL.md; the notebook's loop itself would
  have moved them on to jpeg_compression at severity 2). ``--corruptions`` / ``--severity`` replace the list /
  set one severity for all; the split is then ``n_frames // (1 + len(corruptions))``. The schedule is printed.
- Captions at (20, 30) px in their tiles, red on a black outline, in DejaVu Sans Bold (matplotlib's default
  font, which the notebook's text used), 20 px high as the notebook's 3 pt at 960 dpi were at 1920 x 1080.
What is ours: the notebook drew each frame with matplotlib into a 1920 x 1080 figure and wrote it at 30 fps and
18000 kb/s with FFmpeg. Its 1920 x 1080 frames are the same 960 x 540 image scaled 2x, so we write the 960 x 540
frames themselves, composed with numpy (BENCHMARKS.md, video group: ~50 ms a frame less), with libx264 at
crf 18 (close to lossless for the palette colours and 1-px class edges) and at the input's own frame rate
(the notebook's 30 fps changes a 25 fps clip's speed). Corruptions follow the project's seeded rule,
``corrupt_image(frame224, image_id=f"frame{index:06d}", corruption, severity)``, so every run gives the same
pixels. ``--size N`` selects the older, faster geometry: short side N, aspect kept (both sides rounded to a
multiple of 8), corrupted at that size, and the model-sized arrays scaled to fit the tiles.

Speed, at --size 224 on 2 idle CPU cores with two tiny ResNet-18 test models: about 8 frames/s; the models
take most of it (the default geometry, 480x270 model input: 1.5x the time a frame of --size 224's 400x224, 0.95
against 1.41 frames/s side by side on a shared, loaded 2-core machine, 26 synthetic frames under brightness);
composing a frame takes ~3 ms (a matplotlib figure per frame: ~51 ms; BENCHMARKS.md, video group) and
encoding ~7 ms. The composed frames are the same on every run; the encoded bytes are not (this
libx264 build varied between runs even single-threaded): decoded frames of two runs differ by ~0.5 grey levels
on average, mostly in the noisy tiles.

The video is written to ``<out stem>.tmp-<pid><ext>`` and renamed at the end: an interrupted run leaves
no partial ``--out``. Bad input (unreadable video, missing checkpoint, unknown corruption) ends with one
``error:`` line on stderr and exit status 2.
"""
import argparse
import functools
import json
import math
import os
import sys
import time
from fractions import Fraction

import av
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from common import model_specs, synthetic
from common.cli import UsageError, add_device_arguments, check_at_least, run_cli, write_problem
from common.constants import colorize
from common.corruptions import (CORRUPTIONS, DEFAULT_CODE, MAX_SEVERITY, MIN_SIDE, add_code_argument, corrupt_image,
                                parse_corruptions)
from common.device import resolve_device, use_device
from common.models import predict
from common.folders import git_commit

TILE_W, TILE_H = 480, 270               # PROTOCOL.md: 2x2 tiles of 480x270 -> 960x540
FRAME_W, FRAME_H = 2 * TILE_W, 2 * TILE_H
CLEAN = "clean"
# PROTOCOL.md: "clean, then corruptions 1..13 skipping frost" in the paper's numbering (0 gaussian_noise
# and 14 jpeg_compression are not in the video; frost, 8, is skipped).
DEFAULT_CORRUPTIONS = tuple(CORRUPTIONS[i] for i in range(1, 14) if i != 8)
DEFAULT_SEVERITY = 2
SEVERITY_OVERRIDES = {"elastic_transform": 3}  # severity 2 of elastic is barely visible at video size

# Encoders in order of preference: (PyAV codec name, stream options, bit rate). crf 18 keeps the palette
# colours and 1-px class edges of the prediction tiles close to lossless; preset veryfast encodes 960x540
# at ~6 ms a frame against ~16 ms for medium, at about the same size. mpeg4 has no crf, so a bit rate.
CODECS = (("libx264", {"crf": "18", "preset": "veryfast"}, None),
          ("mpeg4", {}, 6_000_000))

# The notebook's geometry (cells 55, 57): frame -> 480x270 -> 224x224 -> corrupted -> 270x480.
NOTEBOOK_WH = (TILE_W, TILE_H)
NOTEBOOK_SQUARE = 224
# The notebook's captions: text at (500, 30), (20, 300), (500, 300) of the 960x540 image, i.e. (20, 30) inside
# each tile (left end of the baseline), red with a black outline, fontsize 3 pt at 960 dpi on the 2x figure.
CAPTION_XY = (20, 30)
CAPTION_RGB = (255, 0, 0)
CAPTION_FONT_SIZE = 20   # 3 pt * 960 dpi / 72 = 40 px at 1920 x 1080, 20 px at 960 x 540
CAPTION_STROKE = 2       # px of black outline (the notebook's 1 pt Stroke: ~1.7 px at this size)
THEIRS, OURS = "Theirs", "Ours"
LETTERBOX = 16        # grey level around frames whose aspect is not 16:9 (--size geometry)

SYNTH_W, SYNTH_H = 640, 360   # the generated clip's size (16:9, like the tiles)
SYNTH_OBJECTS = 6


# ---------------------------------------------------------------------------------------------- schedule

def build_schedule(corruptions=None, severity=None):
    """[(corruption, severity), ...]: ("clean", 0) first, then each corruption at its severity."""
    try:
        names = DEFAULT_CORRUPTIONS if corruptions is None else parse_corruptions(corruptions)
    except UsageError as e:
        raise UsageError(f"--corruptions: {e}") from None
    if severity is not None and not 1 <= severity <= MAX_SEVERITY:
        raise UsageError(f"--severity {severity}: must be in 1..{MAX_SEVERITY} (the clean segment is always first)")
    return [(CLEAN, 0)] + [(c, severity if severity is not None else SEVERITY_OVERRIDES.get(c, DEFAULT_SEVERITY))
                           for c in names]


def segment_of(index: int, n_frames: int, n_segments: int) -> int:
    """Segment of frame ``index``: the notebook's ``index // switch`` with ``switch = N // K``; the N % K
    leftover frames stay in the last segment. Under K frames (switch 0) frame i is in segment i."""
    switch = n_frames // n_segments
    return min(index // switch if switch else index, n_segments - 1)


def segment_starts(n_frames: int, n_segments: int) -> list:
    """First frame of each segment plus N at the end: j * (N // K) for j = 0..K-1 (the inverse of segment_of)."""
    switch = n_frames // n_segments
    return [min(j * switch if switch else j, n_frames) for j in range(n_segments)] + [n_frames]


def print_schedule(schedule, n_frames, fps):
    starts = segment_starts(n_frames, len(schedule))
    k = len(schedule)
    print(f"schedule: {n_frames} frames in {k} segments of {n_frames // k} (n_frames // {k}, as the notebook split)"
          + (f"; the last also keeps the {n_frames % k} leftover frame(s)" if n_frames >= k and n_frames % k else ""))
    for j, (c, s) in enumerate(schedule):
        a, b = starts[j], starts[j + 1]
        when = f"{a / fps:6.2f}s" if fps else ""
        print(f"  {j:2d}  frames {a:5d}-{b - 1:5d} ({b - a:4d})  {when}  {c}" + (f", severity {s}" if s else ""))
    if n_frames < len(schedule):
        print(f"warning: {n_frames} frames for {len(schedule)} segments; "
              f"{len(schedule) - n_frames} segment(s) get no frame (use more frames or fewer --corruptions)")


# ---------------------------------------------------------------------------------------------- inputs

def probe_video(path):
    """(frame count, frame rate, (width, height)) of the first video stream; UsageError if unusable.

    Frames are counted by decoding, since container headers' counts are missing (mkv, webm, streams) or
    approximate, and the schedule needs the exact number. Decoding also proves the file is a video
    before anything is written.
    """
    if not os.path.isfile(path):
        raise UsageError(f"--video {path}: no such file; pass a video file PyAV/FFmpeg can read")
    if os.path.getsize(path) == 0:
        raise UsageError(f"--video {path}: the file is empty; pass a video file PyAV/FFmpeg can read")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise UsageError(f"--video {path}: has no video stream (audio only?); pass a video file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            n, size = 0, None
            for frame in container.decode(stream):
                size = size or (frame.width, frame.height)
                n += 1
    except av.error.FFmpegError as e:
        raise UsageError(f"--video {path}: not a video PyAV can decode ({e.strerror or type(e).__name__}); "
                         f"pass a video file (mp4, mkv, webm, avi, ...)") from None
    if n == 0:
        raise UsageError(f"--video {path}: the video stream has no frames; pass another video")
    if not rate or rate <= 0:
        print(f"warning: --video {path} states no frame rate; writing at 25 fps")
        rate = Fraction(25)
    return n, Fraction(rate), size


def video_frames(path):
    """Yield the first video stream's frames as HxWx3 uint8 RGB arrays."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def _reflect(p, hi):
    """p folded into [0, hi] like a ball bouncing between two walls: a position computable for any frame."""
    q = np.mod(p, 2 * hi)
    return np.where(q <= hi, q, 2 * hi - q)


class SyntheticClip:
    """Moving, rotating objects of the synthetic dataset's classes over a smooth, slowly panning background.

    Each object is drawn by common.synthetic's own pieces (``shape_mask``, ``texture_pattern``,
    ``object_colours``), so it keeps its class's shape, texture and colour and models trained on the
    synthetic set recognise it. Deterministic: ``frame(i)`` depends only on (seed, i).
    """

    def __init__(self, seed=0, width=SYNTH_W, height=SYNTH_H, n_objects=SYNTH_OBJECTS):
        rng = np.random.default_rng([seed, 0])
        self.seed, self.w, self.h = seed, width, height
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.c0, self.c1 = synthetic.greyish(rng, 0.3, 0.85), synthetic.greyish(rng, 0.3, 0.85)
        self.angle0, self.spin = rng.uniform(0, 2 * np.pi), rng.choice([-1, 1]) * 2 * np.pi / 900
        # Blotches on a field larger than the frame; a moving crop of it reads as a slow camera pan.
        self.pan = 40
        self.blot = synthetic.blotches(rng, height + 2 * self.pan, width + 2 * self.pan) * 0.12
        sizes = np.sort(rng.uniform(0.22, 0.42, n_objects))[::-1] * height  # big first: small ones stay on top
        classes = rng.choice(np.arange(1, 21), n_objects, replace=False)
        self.objects = [self._object(rng, int(k), size) for k, size in zip(classes, sizes)]

    def _object(self, rng, k, size):
        """One object of class k and diameter ``size``: its look, start position and motion (px, rad per frame)."""
        shape, texture, _, _ = synthetic.class_style(k)
        colour, second = synthetic.object_colours(rng, k)
        heading, speed = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 3.0)
        return dict(shape=shape, r=size / 2, proportions=synthetic.shape_proportions(rng, shape), texture=texture,
                    pattern=synthetic.texture_params(rng, texture, size), colour=colour, second=second,
                    x0=rng.uniform(0, self.w), y0=rng.uniform(0, self.h),
                    vx=speed * np.cos(heading), vy=speed * np.sin(heading),
                    a0=rng.uniform(0, 2 * np.pi), omega=rng.choice([-1, 1]) * rng.uniform(0.01, 0.04))

    def background(self, i):
        a = self.angle0 + self.spin * i
        t = ((self.xx - self.w / 2) * np.cos(a) + (self.yy - self.h / 2) * np.sin(a)) / math.hypot(self.w, self.h) + 0.5
        img = (1 - t)[..., None] * self.c0 + t[..., None] * self.c1
        ox = int(round(self.pan * (1 + np.sin(2 * np.pi * i / 400))))
        oy = int(round(self.pan * (1 + np.cos(2 * np.pi * i / 300))))
        return img + self.blot[oy:oy + self.h, ox:ox + self.w]

    def draw(self, img, o, i):
        cx, cy = float(_reflect(o["x0"] + o["vx"] * i, self.w)), float(_reflect(o["y0"] + o["vy"] * i, self.h))
        a = o["a0"] + o["omega"] * i
        # Drawn in its bounding box only (shape_mask: every shape lies within 1.1 r), not over the whole frame.
        big = 1.1 * o["r"]
        x0, y0 = max(0, int(cx - big)), max(0, int(cy - big))
        x1, y1 = min(self.w, int(cx + big) + 1), min(self.h, int(cy + big) + 1)
        if x1 <= x0 or y1 <= y0:
            return
        mask = synthetic.shape_mask(o["shape"], y1 - y0, x1 - x0, cx - x0, cy - y0, o["r"], a, **o["proportions"])
        # The texture lives in the object's own (rotated) frame, so it moves and turns with the object.
        lx, ly = self.xx[y0:y1, x0:x1] - cx, self.yy[y0:y1, x0:x1] - cy
        c, s = np.cos(a), np.sin(a)
        pattern = synthetic.texture_pattern(o["texture"], lx * c + ly * s, -lx * s + ly * c, o["pattern"])
        region = img[y0:y1, x0:x1]
        region[mask] = np.where(pattern[..., None], o["second"], o["colour"])[mask]

    def frame(self, i):
        img = self.background(i)
        for o in self.objects:
            self.draw(img, o, i)
        img += np.random.default_rng([self.seed, 1, i]).normal(0, 3, (self.h, self.w, 1))  # sensor-like noise
        return np.clip(img, 0, 255).round().astype(np.uint8)


def synthetic_frames(n_frames, seed=0):
    clip = SyntheticClip(seed)
    for i in range(n_frames):
        yield clip.frame(i)


# ---------------------------------------------------------------------------------------------- frames

def model_size(width, height, size):
    """(w, h) the models see: the notebook's 480x270 when ``size`` is None; else short side ``size``, aspect
    kept, both rounded to a multiple of 8 (an exact tiling for the stride-4 and stride-8 feature maps).
    """
    if size is None:
        return NOTEBOOK_WH
    r8 = lambda v: max(MIN_SIDE, int(round(v / 8)) * 8)  # noqa: E731 (imagecorruptions needs >= 32 px)
    scale = size / min(width, height)
    return r8(width * scale), r8(height * scale)


def fit_box(width, height):
    """(x, y, w, h) of a width x height image scaled to fit a tile, centred (letterboxed, never cropped)."""
    scale = min(TILE_W / width, TILE_H / height)
    w, h = min(TILE_W, round(width * scale)), min(TILE_H, round(height * scale))
    return (TILE_W - w) // 2, (TILE_H - h) // 2, w, h


@functools.lru_cache(maxsize=None)
def _font():
    """DejaVu Sans Bold (shipped with matplotlib, the notebook's text font), else Pillow's own."""
    try:
        from matplotlib import font_manager
        path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold"),
                                     fallback_to_default=False)
        return ImageFont.truetype(path, CAPTION_FONT_SIZE)
    except (ImportError, ValueError, OSError):
        try:
            return ImageFont.load_default(size=CAPTION_FONT_SIZE)  # Pillow >= 10.1 with FreeType
        except (TypeError, OSError, ImportError):
            return ImageFont.load_default()  # small bitmap font


@functools.lru_cache(maxsize=256)
def caption_patch(text):
    """(outline coverage, fill coverage, (dx, dy)) of one caption: float32 HxWx1 arrays in 0..1 and the offset
    of their top-left corner from the caption's anchor (the left end of its baseline). Cached per text."""
    font = _font()
    left, top, right, bottom = font.getbbox(text, anchor="ls", stroke_width=CAPTION_STROKE)
    cover = []
    for stroke in (CAPTION_STROKE, 0):
        glyphs = Image.new("L", (right - left, bottom - top), 0)
        ImageDraw.Draw(glyphs).text((-left, -top), text, fill=255, font=font, anchor="ls", stroke_width=stroke,
                                    stroke_fill=255)
        cover.append(np.asarray(glyphs, np.float32)[..., None] / 255)
    return cover[0], cover[1], (left, top)


def put_caption(canvas, text, x, y, clip):
    """Write ``text`` with its baseline starting at (x, y) of ``canvas``, in place: a black outline, then the
    red letters, each blended by its coverage. ``clip`` = (x0, y0, x1, y1): the tile it may not leave."""
    if not text:
        return
    outline, fill, (dx, dy) = caption_patch(text)
    h, w = fill.shape[:2]
    x0, y0 = x + dx, y + dy
    cx0, cy0, cx1, cy1 = max(x0, clip[0]), max(y0, clip[1]), min(x0 + w, clip[2]), min(y0 + h, clip[3])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    sub = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    region = canvas[cy0:cy1, cx0:cx1].astype(np.float32)
    region *= 1 - outline[sub]
    region = region * (1 - fill[sub]) + np.float32(CAPTION_RGB) * fill[sub]
    canvas[cy0:cy1, cx0:cx1] = region.round().astype(np.uint8)


def compose(original, corrupted, pred_baseline, pred_robust, labels):
    """One 540x960x3 output frame: 2x2 tiles, each with its caption (empty: none).

    ``labels``: four texts, in the order top-left, top-right, bottom-left, bottom-right. Arrays of another
    size than a tile (the --size geometry) are scaled to fit it, centred.
    """
    canvas = np.full((FRAME_H, FRAME_W, 3), LETTERBOX, np.uint8)
    x, y, w, h = fit_box(corrupted.shape[1], corrupted.shape[0])
    tiles = ((original, Image.BILINEAR), (corrupted, Image.BILINEAR),
             (colorize(pred_baseline), Image.NEAREST), (colorize(pred_robust), Image.NEAREST))
    for k, ((img, resample), text) in enumerate(zip(tiles, labels)):
        ty, tx = (k // 2) * TILE_H, (k % 2) * TILE_W
        if img.shape[:2] != (h, w):
            img = np.asarray(Image.fromarray(img).resize((w, h), resample))
        canvas[ty + y:ty + y + h, tx + x:tx + x + w] = img
        put_caption(canvas, text, tx + CAPTION_XY[0], ty + CAPTION_XY[1], (tx, ty, tx + TILE_W, ty + TILE_H))
    return canvas


def condition_label(corruption, severity):
    """The notebook's caption of the corrupted tile (its corruption's function name; "None" when clean)."""
    return f"Corruption: {'None' if severity == 0 else corruption}"


# ---------------------------------------------------------------------------------------------- output

def pick_codec():
    """(name, options, bit rate) of the first encoder in CODECS this PyAV build has."""
    for name, options, bit_rate in CODECS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # av raises UnknownCodecError (a ValueError) or FFmpegError, by version
            continue
        if name != CODECS[0][0]:
            print(f"note: this PyAV build has no {CODECS[0][0]} encoder; encoding with {name} instead")
        return name, options, bit_rate
    raise UsageError(f"this PyAV build has none of the encoders {[c[0] for c in CODECS]}; install PyAV "
                     f"from PyPI (its wheels include libx264)")


def temp_path(out):
    stem, ext = os.path.splitext(out)
    return f"{stem}.tmp-{os.getpid()}{ext}"


def open_output(path, fps, codec, shown=None):
    """Open ``path`` for writing with one 960x540 yuv420p video stream; ``shown`` names it in errors."""
    name, options, bit_rate = codec
    shown = shown or path
    try:
        container = av.open(path, mode="w")  # the extension picks the container
    except ValueError as e:  # "Could not determine output format"
        raise UsageError(f"--out {shown}: {e}; give it a video extension such as .mp4 or .mkv") from None
    except OSError as e:
        raise UsageError(f"--out {shown}: cannot write it ({e.strerror or e})") from None
    stream = container.add_stream(name, rate=fps, options=dict(options))
    stream.width, stream.height, stream.pix_fmt = FRAME_W, FRAME_H, "yuv420p"
    if bit_rate:
        stream.bit_rate = bit_rate
    return container, stream


def batches(frames, n):
    """Lists of up to n consecutive frames: only one batch of decoded frames is held in memory."""
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def notebook_frame(frame, image_id, corruption, severity, code=DEFAULT_CODE):
    """(original tile, model input) of one frame, both 270x480x3 uint8, the notebook's way (cells 55, 57).

    Original: ``transforms.Resize(270)`` of the frame (Pillow bilinear; 480 wide for 16:9). Model input:
    ``img.resize((480, 270))`` with Pillow's default filter (bicubic since Pillow 7.0; the notebook pinned 7.2),
    ``resize((224, 224), BILINEAR)``, corrupted (not when clean), ``transforms.Resize((270, 480))`` (bilinear).
    """
    img = Image.fromarray(frame)
    original = np.asarray(img.resize(NOTEBOOK_WH, Image.BILINEAR))
    square = np.asarray(img.resize(NOTEBOOK_WH, Image.BICUBIC).resize((NOTEBOOK_SQUARE,) * 2, Image.BILINEAR))
    if severity:
        # The project's seed rule with the frame index as image id: re-running gives identical pixels.
        square = corrupt_image(square, image_id, corruption, severity, code)
    return original, np.asarray(Image.fromarray(square).resize(NOTEBOOK_WH, Image.BILINEAR))


def prepare_batch(batch, start, n_frames, schedule, size, code=DEFAULT_CODE):
    """(conditions, originals, corrupted) of frames start .. start+len(batch)-1.

    ``size`` None: the notebook's geometry (``notebook_frame``), 270x480 arrays. ``size`` (w, h): the --size
    geometry, both arrays at the model size and the corruption applied at that size.
    """
    conds = [schedule[segment_of(start + k, n_frames, len(schedule))] for k in range(len(batch))]
    if size is None:
        pairs = [notebook_frame(f, f"frame{start + k:06d}", c, s, code)
                 for k, (f, (c, s)) in enumerate(zip(batch, conds))]
        return conds, np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    # Bilinear with PIL's support scaled to the reduction (antialiased); the same rule for every input.
    originals = np.stack([f if f.shape[:2] == size[::-1] else
                          np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in batch])
    corrupted = np.stack([corrupt_image(img, f"frame{start + k:06d}", c, s, code) if s else img.copy()
                          for k, (img, (c, s)) in enumerate(zip(originals, conds))])
    return conds, originals, corrupted


def encode_batch(batch, start, n_frames, schedule, size, models, names, args, container, stream, bar):
    """Resize, corrupt, predict, compose and encode frames start .. start+len(batch)-1; returns the next index."""
    conds, originals, corrupted = prepare_batch(batch, start, n_frames, schedule, size, args.corruption_code)
    preds = [predict(m, corrupted, args.device, args.batch_size) for m in models]
    for k, (c, s) in enumerate(conds):
        frame = compose(originals[k], corrupted[k], preds[0][k], preds[1][k],
                        ("", condition_label(c, s), names[0], names[1]))
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts = start + k  # one tick of 1/fps per frame: constant frame rate
        for packet in stream.encode(video_frame):
            container.mux(packet)
        bar.update(1)
    return start + len(batch)


# ---------------------------------------------------------------------------------------------- main

def load_pair(args):
    """(baseline, robust) models and their names (--names, else each checkpoint's name). Either may be
    a checkpoint, torchvision:<builder>[:<weights>] or module:factory (common/model_specs.py)."""
    if args.names is not None and len(args.names) != 2:
        raise UsageError(f"--names: give two names (baseline, robust), got {len(args.names)}")
    specs = [args.baseline, args.robust]
    options = model_specs.model_options(specs, args.weights_file, args.model_kind, where="--baseline/--robust")
    models, names = [], []
    for k, (flag, spec) in enumerate((("--baseline", args.baseline), ("--robust", args.robust))):
        if model_specs.spec_kind(spec) == "checkpoint" and not os.path.isfile(spec):
            raise UsageError(f"{flag} {spec}: no such checkpoint; pass a checkpoint written by train.py, "
                             f"torchvision:<builder> or module:factory")
        model, info = model_specs.load_spec(spec, args.device, *options[k], hash_file=False)
        # NHWC convolutions: ~25% faster for these ResNets on CPU (oneDNN) as on GPU; the frames arrive
        # as NHWC arrays already. Same device and arguments -> same predictions, run after run.
        models.append(model.to(memory_format=torch.channels_last))
        names.append(args.names[k] if args.names else info["name"])
        print(f"{flag[2:]}: {spec} ({names[-1]}, {model.config['kind']}, {model.config.get('arch')}"
              f"{' ' + model.config['backbone'] if model.config.get('backbone') else ''})")
    return models, names


def describe_input(args):
    """(frame count, frame rate, (width, height), description) of the --synthetic clip or the --video."""
    if not args.synthetic:
        if args.fps is not None:
            raise UsageError("--fps applies to --synthetic only; a --video keeps its own frame rate")
        return (*probe_video(args.video), args.video)
    check_at_least("--frames", args.frames)
    fps = Fraction(args.fps if args.fps is not None else 25).limit_denominator(1001)
    if fps <= 0:
        raise UsageError(f"--fps {args.fps}: must be positive")
    return args.frames, fps, (SYNTH_W, SYNTH_H), f"synthetic clip (seed {args.seed})"


def main(args):
    schedule = build_schedule(args.corruptions, args.severity)  # unknown corruption: fails before any work
    check_at_least("--batch-size", args.batch_size)
    if args.size is not None and args.size < MIN_SIDE:
        raise UsageError(f"--size {args.size}: must be at least {MIN_SIDE} (imagecorruptions' smallest image)")
    device = resolve_device(args.device)
    use_device(device)
    args.device = str(device)
    n_frames, fps, src_size, source = describe_input(args)
    if os.path.exists(args.out) and not os.path.isfile(args.out):
        raise UsageError(f"--out {args.out}: is a folder; give a file name such as demo.mp4")
    if args.video and os.path.exists(args.out) and os.path.samefile(args.out, args.video):
        raise UsageError(f"--out {args.out}: is the input --video; give another name")

    print(f"git commit: {git_commit()}\narguments: {json.dumps(vars(args), sort_keys=True)}")
    (base, robust), names = load_pair(args)
    captions = args.names or (THEIRS, OURS)   # the notebook's, unless --names
    mw, mh = model_size(*src_size, args.size)
    geometry = (f"the notebook's: {TILE_W}x{TILE_H} -> {NOTEBOOK_SQUARE}x{NOTEBOOK_SQUARE} -> corrupted -> "
                f"{TILE_W}x{TILE_H}" if args.size is None else f"--size {args.size}: short side {args.size}")
    print(f"input: {source}, {src_size[0]}x{src_size[1]}, {n_frames} frames at {float(fps):.3f} fps; "
          f"models see {mw}x{mh} ({geometry}); device {args.device}")
    print_schedule(schedule, n_frames, float(fps))
    codec = pick_codec()

    frames = synthetic_frames(n_frames, args.seed) if args.synthetic else video_frames(args.video)
    tmp = temp_path(args.out)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    t0, written = time.perf_counter(), 0
    try:
        container, stream = open_output(tmp, fps, codec, shown=args.out)
        with container, tqdm(total=n_frames, unit="frame", desc="video", disable=None) as bar:
            for batch in batches(frames, args.batch_size):
                written = encode_batch(batch, written, n_frames, schedule, None if args.size is None else (mw, mh),
                                       (base, robust),
                                       captions, args, container, stream, bar)
            for packet in stream.encode(None):  # flush frames the encoder still holds (B-frame lookahead)
                container.mux(packet)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, args.out)
    except OSError as e:   # the disk full or read-only: one line naming --out (the temporary name means nothing)
        line = write_problem(e, args.out)
        if line is None:
            raise
        raise UsageError(line) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    seconds = time.perf_counter() - t0
    if written != n_frames:  # the second decode disagreed with the first: worth knowing, not fatal
        print(f"warning: counted {n_frames} frames but decoded {written}; segment boundaries assumed {n_frames}")
    print(f"wrote {args.out}: {written} frames, {FRAME_W}x{FRAME_H}, {float(fps):.3f} fps, {codec[0]}; "
          f"{seconds:.1f}s ({written / max(seconds, 1e-9):.2f} frames/s)")
    return 0


def get_args_parser():
    p = argparse.ArgumentParser(description="Render the demo video: original | corrupted over baseline | SCrIBE "
                                            "predictions, with the corruption changing every 1/13 of the clip.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", default=None,
                     help="input video (anything PyAV/FFmpeg decodes); all its frames are used")
    src.add_argument("--synthetic", action="store_true",
                     help="generate a clip of moving shapes of the synthetic dataset's classes instead of --video")
    p.add_argument("--baseline", required=True,
                   help="baseline model (bottom-left tile): a checkpoint written by train.py, "
                        "torchvision:<builder>[:<weights>] or module.path:factory")
    p.add_argument("--robust", required=True,
                   help="robust (SCrIBE) model (bottom-right tile): a checkpoint, torchvision: or module:factory spec")
    p.add_argument("--names", nargs=2, default=None, metavar=("BASELINE", "ROBUST"),
                   help="captions of the two prediction tiles; default: the notebook's 'Theirs' (baseline) and "
                        "'Ours' (robust)")
    model_specs.add_model_arguments(p, "--baseline/--robust")
    p.add_argument("--out", default="demo.mp4", help="output video; the extension picks the container (.mp4, .mkv)")
    p.add_argument("--corruptions", nargs="+", default=None,
                   help="corruptions after the clean segment (names, short names, numbers or groups); "
                        "default: the paper's 1..13 without frost")
    p.add_argument("--severity", type=int, default=None,
                   help="one severity 1..5 for every corruption; default: 2, and 3 for elastic_transform")
    p.add_argument("--frames", type=int, default=130, help="length of the --synthetic clip (10 frames a segment)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the --synthetic clip (default 25); "
                                                           "a --video keeps its own")
    p.add_argument("--seed", type=int, default=0, help="layout and motion of the --synthetic clip")
    p.add_argument("--size", type=int, default=None,
                   help="default: the notebook's geometry (each frame 480x270 -> 224x224 -> corrupted -> 480x270, "
                        "which the models see); N: the older, faster one, the models see and the corruptions "
                        "act on the frame at short side N (aspect kept), scaled up to the tiles")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward pass")
    add_code_argument(p)
    add_device_arguments(p, amp=False)
    return p


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser(), kept=lambda args: f"no partial video is left ({args.out} is written "
                                                               f"only once whole); run the same command again"))

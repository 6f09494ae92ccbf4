"""The demo video's 960x540 frame (make_video.py): four 480x270 tiles, the notebook's resize round trip of each
input frame, and the captions, composed with numpy and Pillow.

    original                     | corrupted, "Corruption: <name>"
    baseline prediction, "Theirs" | robust prediction, "Ours"

The predictions are drawn in the palette of the models' dataset (a DatasetSpec, ``compose``'s ``spec``).
"""
import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.corruptions import DEFAULT_CODE, MIN_SIDE, corrupt_image

TILE_W, TILE_H = 480, 270               # docs/protocol.md: 2x2 tiles of 480x270 -> 960x540
FRAME_W, FRAME_H = 2 * TILE_W, 2 * TILE_H
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


def compose(original, corrupted, pred_baseline, pred_robust, labels, spec):
    """One 540x960x3 output frame: 2x2 tiles, each with its caption (empty: none).

    ``labels``: four texts, in the order top-left, top-right, bottom-left, bottom-right; ``spec``: the DatasetSpec
    whose palette colours the two predictions (255 and anything past its classes white). Arrays of another
    size than a tile (the --size geometry) are scaled to fit it, centred.
    """
    canvas = np.full((FRAME_H, FRAME_W, 3), LETTERBOX, np.uint8)
    x, y, w, h = fit_box(corrupted.shape[1], corrupted.shape[0])
    tiles = ((original, Image.BILINEAR), (corrupted, Image.BILINEAR),
             (spec.colorize(pred_baseline), Image.NEAREST), (spec.colorize(pred_robust), Image.NEAREST))
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

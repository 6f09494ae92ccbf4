"""The on-disk VOC-C layout that dump_voc_c.py writes and evaluate_corruptions.py reads (PROTOCOL.md).

    <root>/manifest.json                           protocol, size, seed rule, package versions, counts
    <root>/<corruption>/<severity>/<id>.png        corrupted RGB image, lossless PNG
    <root>/labels/<id>.png                         the label under the same protocol (VOC palette PNG)

PNG is lossless, so an image read back from a dump is the very array ``corrupt_image`` returned.
"""
import io
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image

from .checkpoint import atomic_write
from .constants import voc_palette
from .errors import UsageError

MANIFEST = "manifest.json"
SEED_RULE = ('seed = zlib.crc32(f"{image_id}|{corruption}|{severity}".encode()); np.random.seed(seed); '
             'imagecorruptions.corrupt(img, corruption_name=corruption, severity=severity, **kw) with '
             'kw = {"seed": seed} for impulse_noise and glass_blur, {} otherwise')


def image_path(root, corruption: str, severity: int, image_id: str) -> str:
    return os.path.join(root, corruption, str(severity), f"{image_id}.png")


def label_path(root, image_id: str) -> str:
    return os.path.join(root, "labels", f"{image_id}.png")


# Corrupted RGB images are written by the small PNG encoder below: every row with the "up" filter (the
# difference to the row above, one numpy subtraction), then one Huffman-only deflate by zlib-ng. At 224x224
# that takes ~0.5 ms, against ~1.1 ms for OpenCV's encoder at zlib level 1 (RLE strategy, up filter; system
# zlib) and 3.5-4.5 ms for Pillow's default, at ~10% larger files than the former (60 KB on average for the
# slow four at 224 px, 40% of raw). The slow corruptions take ~14 ms each, so encoding is ~3% of a dump.
PNG_ENCODING = "rows filtered 'up', deflated by zlib-ng at level 1 with the Huffman-only strategy"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data (PNG specification, section 5.3)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def rgb_png(array: np.ndarray) -> bytes:
    """A uint8 HxWx3 array as an 8-bit RGB PNG (non-interlaced), the same bytes for the same pixels."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {array.dtype} {array.shape}")
    h, w, _ = array.shape
    rows = np.ascontiguousarray(array).reshape(h, w * 3)
    scanlines = np.empty((h, w * 3 + 1), np.uint8)
    scanlines[:, 0] = 2                          # filter type 2, "up"; the row above row 0 counts as zeros
    scanlines[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])   # uint8 arithmetic is modulo 256, as PNG's
    from zlib_ng import zlib_ng   # only where PNGs are encoded: training and the sweep never need it

    deflate = zlib_ng.compressobj(1, zlib_ng.DEFLATED, 15, 9, zlib_ng.Z_HUFFMAN_ONLY)
    idat = deflate.compress(scanlines.tobytes()) + deflate.flush()
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)   # 8 bits, RGB, deflate, adaptive filters, no interlace
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_bytes(array: np.ndarray, palette: bool = False) -> bytes:
    """Encode RGB (or, with ``palette``, a VOC label as a palette PNG) with fixed settings: same bytes every time."""
    if palette:  # the values are class indices: store them as they are, with the VOC colours
        array = np.ascontiguousarray(array, dtype=np.uint8)
        im = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        im.putpalette(voc_palette().ravel().tolist())
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=3)
        return buf.getvalue()
    return rgb_png(array)


def write_bytes(path: str, data: bytes) -> None:
    """Write under a temporary name and rename, without an fsync per file (see ``atomic_write``)."""
    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)
    atomic_write(path, write, durable=False)


def read_png(path: str, shape=None):
    """The decoded array, or None when the file is missing, unreadable, truncated or of another shape."""
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.array(im)
    except (OSError, ValueError, SyntaxError):
        return None
    if shape is not None and arr.shape != tuple(shape):
        return None
    return arr


def read_manifest(root):
    path = os.path.join(root, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable manifest ({e}); remove it to rebuild the dump") from None


def check_manifest(root, protocol: str, size: int, versions: dict) -> dict:
    """Refuse a dump made under another protocol, size or package versions (its pixels would differ)."""
    m = read_manifest(root)
    if m is None:
        raise UsageError(f"{root}: no {MANIFEST}; is this a folder written by dump_voc_c.py?")
    want = {"protocol": protocol, "size": size if protocol != "native" else None}
    got = {k: m.get(k) for k in want}
    if got != want:
        raise UsageError(f"{root} was dumped with {got}, this run uses {want}; dump again or match the flags")
    if m.get("versions") != versions:
        raise UsageError(f"{root} was dumped with other package versions ({m.get('versions')} vs {versions}); "
                         f"its pixels may differ: install requirements.txt's pins or dump again")
    return m

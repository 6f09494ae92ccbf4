"""The on-disk VOC-C layout that dump_voc_c.py writes and evaluate_corruptions.py reads (docs/protocol.md).

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

from .cli import UsageError
from .constants import voc_palette
from .folders import atomic_write

MANIFEST = "manifest.json"
SEED_RULE = ('seed = zlib.crc32(f"{image_id}|{corruption}|{severity}".encode()); np.random.seed(seed); '
             'imagecorruptions.corrupt(img, corruption_name=corruption, severity=severity, **kw) with '
             'kw = {"seed": seed} for impulse_noise and glass_blur, {} otherwise')
SEED_RULES = {
    "imagecorruptions": SEED_RULE,
    "imagenet-c": ('seed = zlib.crc32(f"{image_id}|{corruption}|{severity}".encode()); np.random.seed(seed); '
                   'imagenet_c.corrupt(img, severity, corruption) (hendrycks imagenet-c 0.0.3, scikit-image 0.17.2; '
                   'glass_blur also seeds its pixel shuffle with seed)'),
}


def seed_rule(code: str) -> str:
    """The seed rule as recorded in manifests and run.json, for corruption code ``code``."""
    return SEED_RULES[code]


def image_path(root, corruption: str, severity: int, image_id: str) -> str:
    return os.path.join(root, corruption, str(severity), f"{image_id}.png")


def label_path(root, image_id: str) -> str:
    return os.path.join(root, "labels", f"{image_id}.png")


# Corrupted RGB images are written by the small PNG encoder below: every row with the "up" filter (the
# difference to the row above, one numpy subtraction), then one Huffman-only deflate by zlib-ng: faster than
# OpenCV's and Pillow's encoders for slightly larger files, a small part of a dump (BENCHMARKS.md, Decisions).
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
    """The decoded uint8 array, or None when the file is missing, unreadable, truncated, of another shape or of
    another bit depth: a dumped PNG is a cache, so the callers then compute the image again."""
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.array(im)
    except Exception:   # OSError (truncated), SyntaxError (broken chunk), ValueError, DecompressionBombError...
        return None
    if arr.dtype != np.uint8 or (shape is not None and arr.shape != tuple(shape)):
        return None
    return arr


def manifest_fix(root) -> str:
    return f"rebuild it with dump_voc_c.py --overwrite --out {root} (and the flags of the dump)"


def read_manifest(root):
    """manifest.json as a dict, or None when absent; a damaged one (not JSON, fields missing or of the wrong
    type) is a UsageError naming it."""
    path = os.path.join(root, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as fh:
            m = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: damaged manifest (not valid JSON: {getattr(e, 'msg', None) or e}); "
                         f"{manifest_fix(root)}") from None
    types = {"protocol": str, "size": (int, type(None)), "seed_rule": str, "versions": dict, "images": dict}
    if isinstance(m, dict) and all(k in m for k in types):
        lacking = [k for k in IDENTITY if k not in m]
        if lacking:   # the rest of the dump's identity, recorded since
            raise UsageError(f"{path}: no {', '.join(lacking)} (an earlier dump_voc_c.py's format); "
                             f"{manifest_fix(root)}")
        types.update({k: str for k in IDENTITY if k not in types})
    if not isinstance(m, dict):
        what = "not a JSON object"
    else:   # size is null under --protocol native
        bad = [k for k, t in types.items() if k not in m or not isinstance(m[k], t)]
        if not bad and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in m["images"].values()):
            bad = ["images"]
        what = f"{', '.join(bad)} missing or of the wrong type" if bad else None
    if what:
        raise UsageError(f"{path}: damaged manifest ({what}); {manifest_fix(root)}")
    return m


# What makes two dumps' pixels differ, in the order a difference is reported (the sweep's run.json records the
# same fields of the dump it read, under "voc_c").
# The val set: by its files' digest (data_sha256), not by the path it was read from (results.same_data).
IDENTITY = ("corruption_code", "protocol", "size", "seed_rule", "data", "voc_root", "split", "image_ids_sha256",
            "data_sha256")


def manifest_difference(m: dict, want: dict):
    """(field, manifest's value, wanted value) of the first identity field that differs, or None; only the fields
    ``want`` names (all of them from dump_voc_c.py, the data's from the sweep), ``versions`` key by key."""
    from .results import same_data

    for k in IDENTITY:
        if k in want and m[k] != want[k] and not same_data(k, m, want):
            return k, m[k], want[k]
    for k, v in sorted(want.get("versions", {}).items()):
        if k in m.get("versions", {}) and m["versions"][k] != v:
            return f"versions.{k}", m["versions"][k], v
    return None


def check_manifest(root, protocol: str, size: int, versions: dict, **expect) -> dict:
    """Refuse a dump made under another protocol, size, package versions or from other images (its pixels would
    differ). ``expect``: other identity fields to compare (data, voc_root, split, image_ids_sha256)."""
    m = read_manifest(root)
    if m is None:
        raise UsageError(f"{root}: no {MANIFEST}; is this a folder written by dump_voc_c.py?")
    want = {"protocol": protocol, "size": size if protocol != "native" else None, "versions": versions, **expect}
    diff = manifest_difference(m, want)
    if diff is not None:
        field, got, wanted = diff
        hint = ("its pixels may differ: install requirements.txt's pins or dump again" if field.startswith("versions")
                else "dump again or match the flags")
        if field == "corruption_code":
            field = "--corruption-code"
        raise UsageError(f"{root} was dumped with {field} {json.dumps(got)[:60]}, this run has "
                         f"{json.dumps(wanted)[:60]}; {hint}")
    return m

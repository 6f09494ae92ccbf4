"""The on-disk VOC-C layout that dump_voc_c.py writes and evaluate_corruptions.py reads (PROTOCOL.md).

    <root>/manifest.json                           protocol, size, seed rule, package versions, counts
    <root>/<corruption>/<severity>/<id>.png        corrupted RGB image, lossless PNG
    <root>/labels/<id>.png                         the label under the same protocol (VOC palette PNG)

PNG is lossless, so an image read back from a dump is the very array ``corrupt_image`` returned.
"""
import io
import json
import os

import cv2
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


# Corrupted RGB images: OpenCV's encoder, zlib level 1 with the RLE strategy and the "up" filter on every
# row. At 224x224 that takes about 1 ms (Pillow's default adaptive filter at level 3: 3.5-4.5 ms, as long as
# a fast corruption) and keeps smooth images at about a third to two thirds of their raw size.
PNG_ENCODING = "OpenCV imencode: zlib level 1, strategy RLE, filter UP"
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
               cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def png_bytes(array: np.ndarray, palette: bool = False) -> bytes:
    """Encode RGB (or, with ``palette``, a VOC label as a palette PNG) with fixed settings: same bytes every time."""
    if palette:  # the values are class indices: store them as they are, with the VOC colours
        array = np.ascontiguousarray(array, dtype=np.uint8)
        im = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        im.putpalette(voc_palette().ravel().tolist())
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=3)
        return buf.getvalue()
    ok, data = cv2.imencode(".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR), _PNG_PARAMS)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {array.shape} {array.dtype} image as PNG")
    return data.tobytes()


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
    want = {"protocol": protocol, "size": size if protocol == "paper" else None}
    got = {k: m.get(k) for k in want}
    if got != want:
        raise UsageError(f"{root} was dumped with {got}, this run uses {want}; dump again or match the flags")
    if m.get("versions") != versions:
        raise UsageError(f"{root} was dumped with other package versions ({m.get('versions')} vs {versions}); "
                         f"its pixels may differ: install requirements.txt's pins or dump again")
    return m

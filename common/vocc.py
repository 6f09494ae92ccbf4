"""The on-disk VOC-C layout that dump_voc_c.py writes and evaluate_corruptions.py reads (docs/protocol.md);
the same layout for every dataset of ``--data`` (Cityscapes-C, ADE20K-C, ...).

    <root>/manifest.json                           protocol, size, seed rule, package versions, data, preset, counts
    <root>/<corruption>/<severity>/<id>.png        corrupted RGB image, lossless PNG
    <root>/labels/<id>.png                         the label under the same protocol (palette PNG of train ids)

PNG is lossless, so an image read back from a dump is the very array ``corrupt_image`` returned. A reader
checks that a dump holds its pixels with ``check_manifest``:

    expect = {"corruption_code": code, "seed_rule": seed_rule(code), "preset": args.preset_record,
              **data_identity(args.data, data.root, data.dataset)}
    check_manifest(folder, args.protocol, args.size, corruption_versions(), **expect)
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


def label_palette(colours=None) -> np.ndarray:
    """The 256 x 3 palette of a label PNG: VOC's own (``colours`` None), else ``colours`` (a dataset's N x 3 class
    colours) with every later index, 255 = ignore among them, white."""
    if colours is None:
        return voc_palette()
    pal = np.full((256, 3), 255, np.uint8)
    pal[: len(colours)] = np.asarray(colours, np.uint8)
    return pal


def png_bytes(array: np.ndarray, palette=False) -> bytes:
    """Encode RGB (or, with ``palette``, a label as a palette PNG: True = VOC's colours, an N x 3 array = a
    dataset's class colours) with fixed settings: same bytes every time."""
    if palette is not False:  # the values are class indices: store them as they are, with the class colours
        array = np.ascontiguousarray(array, dtype=np.uint8)
        im = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        im.putpalette(label_palette(None if palette is True else palette).ravel().tolist())
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
    type) is a UsageError naming it. A manifest written before presets has no "preset" (it counts as none)."""
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
        lacking = [k for k in REQUIRED if k not in m]
        if not lacking and root_key(m.get("data")) not in m:
            lacking = [root_key(m.get("data"))]
        if lacking:   # the rest of the dump's identity, recorded since
            raise UsageError(f"{path}: no {', '.join(lacking)} (an earlier dump_voc_c.py's format); "
                             f"{manifest_fix(root)}")
        types.update({k: str for k in REQUIRED if k not in types})
        types[root_key(m["data"])] = str
        types["preset"] = (dict, type(None))
    if not isinstance(m, dict):
        what = "not a JSON object"
    else:   # size is null under --protocol native
        bad = [k for k, t in types.items() if (k not in m and k != "preset") or not isinstance(m.get(k), t)]
        if not bad and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in m["images"].values()):
            bad = ["images"]
        if not bad and isinstance(m.get("preset"), dict) and not isinstance(m["preset"].get("name"), str):
            bad = ["preset"]
        what = f"{', '.join(bad)} missing or of the wrong type" if bad else None
    if what:
        raise UsageError(f"{path}: damaged manifest ({what}); {manifest_fix(root)}")
    return m


# What makes two dumps' pixels differ, in the order a difference is reported (the sweep's run.json records the
# same fields of the dump it read, under "voc_c"). The val set's folder is "voc_root" for --data voc and
# synthetic (as every VOC-C manifest has it) and "data_root" for every other dataset; the val set is compared
# by its files' digest (data_sha256), not by the path it was read from. "preset": the preset's record
# (common/presets.py), null without --preset; compared by name, a dump without one counting as "paper" (the
# protocol of every dump made before presets), and by the whole record where both have one.
IDENTITY = ("corruption_code", "protocol", "size", "seed_rule", "data", "voc_root", "data_root", "split",
            "image_ids_sha256", "data_sha256", "preset")
ROOT_KEYS = ("voc_root", "data_root")
# Fields every manifest has (besides its root key; "preset" may be absent: none).
REQUIRED = tuple(k for k in IDENTITY if k not in ROOT_KEYS + ("preset",))


def root_key(data) -> str:
    """The manifest key of the val set's folder for ``--data data``."""
    return "voc_root" if data in ("voc", "synthetic") else "data_root"


def data_identity(data: str, root, dataset, split: str = "val") -> dict:
    """The val set's part of a dump's identity: {"data", "voc_root" | "data_root", "split", "image_ids_sha256",
    "data_sha256"}, for the split ``dataset`` of ``--data data`` under ``root`` (common.datasets.open_data's
    Data: data.root, data.dataset). Every image of the split counts, whatever --limit a run has."""
    from .results import files_sha256, ids_sha256
    ids = dataset.ids if getattr(dataset, "ids", None) is not None else \
        [os.path.splitext(os.path.basename(p))[0] for p in dataset.images]
    return {"data": data, root_key(data): os.path.abspath(root), "split": split,
            "image_ids_sha256": ids_sha256(ids), "data_sha256": files_sha256(dataset)}


def preset_name(record):
    """A preset record's name, "paper" for none (a dump or run without --preset has the paper's protocol flags
    or differs from it in a flag that is compared on its own)."""
    return record["name"] if isinstance(record, dict) else "paper"


def _differs(k, m, want) -> bool:
    from .results import same_data

    got, wanted = m.get(k), want[k]
    if k == "preset":
        return preset_name(got) != preset_name(wanted) or (isinstance(got, dict) and isinstance(wanted, dict)
                                                           and got != wanted)
    return got != wanted and not same_data(k, m, want)


def manifest_difference(m: dict, want: dict):
    """(field, manifest's value, wanted value) of the first identity field that differs, or None; only the fields
    ``want`` names (all of them from dump_voc_c.py, the data's from the sweep), ``versions`` key by key. A
    preset is reported by its name ("none" without one)."""
    for k in IDENTITY:
        if k in want and _differs(k, m, want):
            if k == "preset":
                return k, (m.get(k) or {}).get("name", "none"), (want[k] or {}).get("name", "none")
            return k, m.get(k), want[k]
    for k, v in sorted(want.get("versions", {}).items()):
        if k in m.get("versions", {}) and m["versions"][k] != v:
            return f"versions.{k}", m["versions"][k], v
    return None


def check_manifest(root, protocol: str, size: int, versions: dict, **expect) -> dict:
    """Refuse a dump made under another protocol, size, package versions, preset or from other images (its pixels
    would differ, or its conditions). ``expect``: other identity fields to compare, by name (IDENTITY):
    corruption_code, seed_rule, preset, and the val set's (``data_identity``: data, voc_root or data_root,
    split, image_ids_sha256, data_sha256)."""
    m = read_manifest(root)
    if m is None:
        raise UsageError(f"{root}: no {MANIFEST}; is this a folder written by dump_voc_c.py?")
    want = {"protocol": protocol, "size": size if protocol != "native" else None, "versions": versions, **expect}
    diff = manifest_difference(m, want)
    if diff is not None:
        field, got, wanted = diff
        hint = ("its pixels may differ: install requirements.txt's pins or dump again" if field.startswith("versions")
                else "dump again or match the flags")
        if field in ("corruption_code", "data"):
            field = "--" + field.replace("_", "-")
        elif field == "preset":
            field = "--preset"
        raise UsageError(f"{root} was dumped with {field} {json.dumps(got)[:60]}, this run has "
                         f"{json.dumps(wanted)[:60]}; {hint}")
    return m

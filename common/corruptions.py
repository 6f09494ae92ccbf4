"""The corruption registry: names, numbers, groups, and seeded, reproducible corruption of one image.

docs/protocol.md, "Corruptions". The 15 ImageNet-C corruptions keep the paper's numbers 0..14; the four
held-out extras of ``imagecorruptions`` (speckle_noise, gaussian_blur, spatter, saturate) are numbered
15..18 by us, in ``imagecorruptions``' own order, so a number means the same here as the library's
``corruption_number``. Severity 0 means "clean" everywhere in this project.

Two corruption codes (``--corruption-code``, docs/corruptions.md): "imagenet-c", the package the paper's notebook
imported (the default: its changed formulas re-written in common/imagenetc.py, the others imagecorruptions' identical
functions, under the seed rule below), and "imagecorruptions", the library called as it is. What follows describes
the library; common/imagenetc.py's functions draw from numpy's global generator only.

Reproducibility (ours; the paper's corruptions were unseeded): for image id I (the VOC file stem),
corruption C (full name) and severity S,

    seed = zlib.crc32(f"{I}|{C}|{S}".encode())
    np.random.seed(seed)
    out = imagecorruptions.corrupt(img, corruption_name=C, severity=S, **kw)   # kw = {"seed": seed}
                                                                               # for impulse_noise and
                                                                               # glass_blur, {} otherwise

``corrupt_image`` returns exactly ``out`` (see its docstring for the one exception, a 0/0 inside
spatter on tiny images). What we found in imagecorruptions-imaug 1.1.5 (read its source before
upgrading; requirements.txt pins every package that touches a pixel, and ``corruption_versions()``
goes into every manifest):

* Output: ``corrupt`` itself ends with ``np.uint8(result)``: the per-corruption functions return
  floats already clipped to [0, 255] (or a PIL image for pixelate/jpeg), and the cast *truncates*
  (254.99 -> 254), it does not round. We keep that conversion, so our pixels equal what anyone else
  calling ``imagecorruptions.corrupt`` gets. Shape: HxWx3 in, same HxWx3 out for all 19 corruptions,
  checked at every severity on 32x32, 64x64, 64x96, 97x130, 96x150, 96x160, 224x224, 375x500 and
  500x375, and at severities 1 and 5 on 40 random sizes up to 600x600; no warnings, no prints.
  tests/test_input_data.py checks every severity against the library called directly on the smallest
  inputs the protocols produce (HxW): 32x32, 32x33, 33x32, 48x32, 32x44, 32x58, 2133x32, 32x2133.
  (zoom_blur's and snow's clipped zoom, ceil(n / z) * z, is never smaller than the image, and
  frost rescales its 315x560 ... 600x900 textures to 1.1x the image before its random crop, so
  neither fails on small, large or non-square images.) The library refuses images under 32 pixels
  a side; so do we, with a ValueError.
* Randomness: everything goes through numpy's global legacy RNG (hence ``np.random.seed``) except
  impulse_noise (scikit-image's ``random_noise(rng=seed)`` -> ``np.random.default_rng(seed)``;
  unseeded it draws fresh OS entropy every call) and glass_blur (a numba-compiled pixel shuffle
  that calls ``np.random.seed(seed)`` on *numba's* own per-thread RNG; unseeded it draws a seed
  from an unseeded ``default_rng``). The ``seed`` keyword covers both. No corruption uses Python's
  ``random``, OpenCV's RNG or torch. Frost picks one of six texture files with ``np.random``.
* Global state: ``np.random.seed`` is global. ``corrupt_image`` restores numpy's global RNG state
  afterwards, so calling it does not shift the caller's own random stream (data augmentation, say),
  and holds a lock so two threads cannot interleave their seed-then-draw sequences. Numba's RNG is
  re-seeded by glass_blur on each call and is not restored.
* spatter at severities 1-3 divides by the largest "drop" value; on very small images (we saw it
  at 32x32 for about 2% of seeds, in none of 900 tries at 64x64) no drop survives the threshold, the
  division is 0/0 and the library casts NaN to uint8 (undefined behaviour; black in practice).
  ``corrupt_image`` detects that and returns what spatter gives when there are no drops.
"""
import importlib.metadata
import re
import threading
import zlib

import numpy as np

from common import imagenetc
from common.cli import UsageError

# The paper's order (its code numbered them 0..14). Same order as imagecorruptions' corruption_tuple.
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",                     # 0-2   noise
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",            # 3-6   blur
    "snow", "frost", "fog", "brightness",                                # 7-10  weather
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",     # 11-14 digital
)
# Not in the paper; numbered 15..18 in imagecorruptions' own order.
HELD_OUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS = CORRUPTIONS + HELD_OUT

SHORT_NAMES = {
    "gaussian": "gaussian_noise", "shot": "shot_noise", "impulse": "impulse_noise",
    "defocus": "defocus_blur", "glass": "glass_blur", "motion": "motion_blur", "zoom": "zoom_blur",
    "snow": "snow", "frost": "frost", "fog": "fog", "brightness": "brightness",
    "contrast": "contrast", "elastic": "elastic_transform", "pixelate": "pixelate",
    "jpeg": "jpeg_compression",
}
_SHORT_OF = {full: short for short, full in SHORT_NAMES.items()}

GROUPS = {
    "noise": CORRUPTIONS[0:3],
    "blur": CORRUPTIONS[3:7],
    "weather": CORRUPTIONS[7:11],
    "digital": CORRUPTIONS[11:15],
}

# The four the paper precomputed (dump_voc_c.py) because they were slow in the original code.
SLOW = ("glass_blur", "motion_blur", "zoom_blur", "snow")

# Keywords parse_corruptions accepts besides single corruptions.
_SETS = {"all": CORRUPTIONS, "held_out": HELD_OUT, "slow": SLOW, **GROUPS}

# Corruptions whose randomness is not (only) numpy's global RNG and that take a `seed` keyword.
_SEED_KWARG = ("impulse_noise", "glass_blur")

# Whose formulas corrupt: "imagenet-c" is hendrycks' package as the notebook imported it (the paper's numbers; its
# changed formulas re-written in common/imagenetc.py, the rest imagecorruptions' identical functions);
# "imagecorruptions" is the maintained re-implementation, called as it is. The held-out four are imagecorruptions'
# under both.
CORRUPTION_CODES = ("imagenet-c", "imagecorruptions")
DEFAULT_CODE = "imagenet-c"

MAX_SEVERITY = 5
MIN_SIDE = 32  # imagecorruptions refuses smaller images

_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- names

def _valid_names() -> str:
    parts = []
    for i, name in enumerate(ALL_CORRUPTIONS):
        short = _SHORT_OF.get(name)
        parts.append(f"{i} {name} ({short})" if short and short != name else f"{i} {name}")
    return ", ".join(parts)


def resolve_corruption(spec) -> str:
    """Full name of a corruption given as full name, short name or number 0..18 (int or digits).

    Case-insensitive. "clean" is not a corruption: severity 0 means clean. Raises UsageError
    listing every valid name otherwise.
    """
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if 0 <= spec < len(ALL_CORRUPTIONS):
            return ALL_CORRUPTIONS[int(spec)]
    elif isinstance(spec, str):
        key = spec.strip().lower()
        if key.isdigit() and int(key) < len(ALL_CORRUPTIONS):
            return ALL_CORRUPTIONS[int(key)]
        if key in ALL_CORRUPTIONS:
            return key
        if key in SHORT_NAMES:
            return SHORT_NAMES[key]
    raise UsageError(f"unknown corruption {spec!r}; valid: {_valid_names()}")


def _items(specs):
    """The non-empty items of a spec list: ``["a,b", "c"]``, ``"a"`` or ``3`` alike."""
    if isinstance(specs, (str, int, np.integer)):
        specs = [specs]
    for spec in specs:
        for item in (spec.split(",") if isinstance(spec, str) else [spec]):
            if not (isinstance(item, str) and item.strip() == ""):
                yield item


def parse_corruptions(specs) -> list:
    """Full names for a list of specs (as from ``nargs="+"``); order kept, duplicates dropped.

    Each spec is a corruption (see ``resolve_corruption``), a comma-separated list of them, or one of
    the sets: all (the paper's 15), held_out (the 4 extras), slow (glass, motion, zoom, snow), noise,
    blur, weather, digital.
    """
    out = []
    for item in _items(specs):
        key = item.strip().lower() if isinstance(item, str) else item
        if isinstance(key, str) and key in _SETS:
            names = _SETS[key]
        else:
            try:
                names = (resolve_corruption(key),)
            except UsageError:
                raise UsageError(
                    f"unknown corruption {item!r}; valid: {_valid_names()}; "
                    f"or a set: {', '.join(_SETS)}") from None
        out.extend(n for n in names if n not in out)
    if not out:
        raise UsageError("no corruption given; use e.g. 'all', a group (noise, blur, weather, "
                         "digital) or names")
    return out


def parse_severities(specs) -> list:
    """Severities as ints in 0..5 (0 = clean) from ints, digit strings or comma-separated strings.

    Order kept, duplicates dropped; anything else raises UsageError.
    """
    out = []
    for item in _items(specs):
        if isinstance(item, str):
            text = item.strip()
            if not re.fullmatch(r"[+-]?\d+", text):
                raise UsageError(f"severity {item!r} is not an integer in 0..{MAX_SEVERITY}")
            value = int(text)
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            value = int(item)
        else:
            raise UsageError(f"severity {item!r} is not an integer in 0..{MAX_SEVERITY}")
        if not 0 <= value <= MAX_SEVERITY:
            raise UsageError(f"severity {value} is outside 0..{MAX_SEVERITY} (0 = clean)")
        if value not in out:
            out.append(value)
    if not out:
        raise UsageError(f"no severity given; use integers in 0..{MAX_SEVERITY}")
    return out


def corruption_number(name) -> int:
    """0..14 in the paper's order, 15..18 for the held-out extras (imagecorruptions' numbering)."""
    return ALL_CORRUPTIONS.index(resolve_corruption(name))


def group_of(name) -> str:
    """noise / blur / weather / digital for the paper's 15; "held_out" for the 4 extras."""
    full = resolve_corruption(name)
    for group, members in GROUPS.items():
        if full in members:
            return group
    return "held_out"


# ----------------------------------------------------------------------------- corrupting

def add_code_argument(parser) -> None:
    """``--corruption-code``, the same on every script that corrupts."""
    parser.add_argument("--corruption-code", choices=CORRUPTION_CODES, default=DEFAULT_CODE,
                        help="whose corruption formulas run: imagenet-c = hendrycks' package as the paper's notebook "
                             "imported it (its elastic, frost, snow, fog and impulse noise; the paper's numbers), "
                             "imagecorruptions = the maintained re-implementation (other elastic, frost and snow). "
                             "Recorded in every output; a folder made with the other code is refused")


def corruption_seed(image_id: str, corruption: str, severity: int) -> int:
    """The per-image seed of docs/protocol.md: crc32 of "<id>|<full name>|<severity>" (0 <= seed < 2**32)."""
    return zlib.crc32(f"{image_id}|{corruption}|{severity}".encode())


def check_corruption_code(code: str) -> str:
    """``code`` if it is one of CORRUPTION_CODES, else a UsageError naming them."""
    if code not in CORRUPTION_CODES:
        raise UsageError(f"unknown corruption code {code!r}; use one of {', '.join(CORRUPTION_CODES)}")
    return code


def corrupt_image(img: np.ndarray, image_id: str, corruption, severity: int,
                  code: str = DEFAULT_CODE) -> np.ndarray:
    """Corrupt one HxWx3 uint8 RGB image reproducibly (docs/protocol.md); returns a new HxWx3 uint8 array.

    ``image_id`` is the VOC file stem (a str: "2007_000033", not an int, whose text would differ);
    ``corruption`` anything ``resolve_corruption`` accepts (the seed always uses the full name);
    severity 0 returns an unchanged copy. H and W must be at least 32 (the library's limit).
    ``code`` picks whose formulas run (module docstring): "imagenet-c", the notebook's (default), or
    "imagecorruptions".

    Under "imagecorruptions" the result is byte-for-byte ``np.random.seed(seed); imagecorruptions.corrupt(img,
    ...)`` as in the module docstring; under "imagenet-c", ``np.random.seed(seed); imagenet_c.corrupt(img, ...)``
    at 224 x 224 (common/imagenetc.py says where it computes rather than calls). One exception: when spatter's
    0/0 on a tiny image would make the library cast NaN to uint8 (undefined), we return spatter's own formula
    with no drops instead, i.e. ``np.uint8(np.clip(float32(img) / 255, 0, 1) * 255)`` (the same float32
    arithmetic and truncation the library applies to the undisturbed pixels; a few values may come out 1 lower
    than the input).
    """
    check_corruption_code(code)
    _check_image_arguments(img, image_id, severity)
    name = resolve_corruption(corruption)
    severity = int(severity)
    if severity == 0:
        return img.copy()
    return _corrupt_seeded(img, image_id, name, severity, code)


def _check_image_arguments(img, image_id, severity) -> None:
    """TypeError / ValueError unless ``image_id`` is a str, ``img`` an HxWx3 uint8 array of at least MIN_SIDE a
    side and ``severity`` an int in 0..MAX_SEVERITY."""
    if not isinstance(image_id, str):
        raise TypeError(f"image_id must be the file stem as a str, got {type(image_id).__name__}")
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
            and img.shape[2] == 3):
        raise ValueError(f"expected an HxWx3 uint8 image, got "
                         f"{getattr(img, 'shape', None)} {getattr(img, 'dtype', type(img).__name__)}")
    if img.shape[0] < MIN_SIDE or img.shape[1] < MIN_SIDE:
        raise ValueError(f"image {image_id}: imagecorruptions needs images of at least {MIN_SIDE}x{MIN_SIDE}, "
                         f"got {img.shape[1]}x{img.shape[0]} (WxH)")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) \
            or not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be an int in 0..{MAX_SEVERITY}, got {severity!r}")


def _corrupt_seeded(img: np.ndarray, image_id: str, name: str, severity: int, code: str) -> np.ndarray:
    """``corrupt_image`` for a checked image, a full corruption name and a severity in 1..5: the seed rule of
    the module docstring, numpy's global RNG restored afterwards, under the lock."""
    import imagecorruptions  # heavy (cv2, numba, scikit-image): only when pixels are needed

    seed = corruption_seed(image_id, name, severity)
    kwargs = {"seed": seed} if name in _SEED_KWARG else {}
    own = imagenetc.FUNCTIONS.get(name) if code == "imagenet-c" else None
    img = np.ascontiguousarray(img)
    with _LOCK:
        saved = np.random.get_state()
        try:
            np.random.seed(seed)
            if own is not None:
                out = np.uint8(own(img, severity))   # corrupt()'s own final cast (truncation)
            elif name == "spatter":
                # Turn the 0/0 (and the NaN -> uint8 cast after it) into an exception we can see.
                with np.errstate(invalid="raise", divide="raise"):
                    try:
                        out = imagecorruptions.corrupt(img, corruption_name=name, severity=severity,
                                                       **kwargs)
                    except FloatingPointError:
                        out = _spatter_without_drops(img)
            else:
                out = imagecorruptions.corrupt(img, corruption_name=name, severity=severity, **kwargs)
        finally:
            np.random.set_state(saved)
    # corrupt() already returns np.uint8(...) of the input's shape (checked for all 19 corruptions);
    # a change here means the library changed under us, which must not pass silently.
    if out.dtype != np.uint8 or out.shape != img.shape:
        raise RuntimeError(f"{code} {name} returned {out.shape} {out.dtype} for a "
                           f"{img.shape} uint8 image; check the installed version against "
                           f"requirements.txt")
    return out


def _spatter_without_drops(img: np.ndarray) -> np.ndarray:
    # spatter (severity 1-3 branch) with an all-zero drop mask m: x + m * colour = x, computed in
    # float32 as the library does (x = float32(img) / 255., clip, BGR<->BGRA round trip, * 255).
    x = np.asarray(img, dtype=np.float32) / 255.
    return np.uint8(np.clip(x, 0, 1) * 255)


def corruption_versions() -> dict:
    """Versions of every package that touches corrupted pixels, for manifests and results files."""
    versions = {}
    for key, dists in (("imagecorruptions-imaug", ("imagecorruptions-imaug", "imagecorruptions")),
                       ("numpy", ("numpy",)), ("scipy", ("scipy",)),
                       ("scikit-image", ("scikit-image",)),
                       ("opencv-python", ("opencv-python", "opencv-python-headless",
                                          "opencv-contrib-python", "opencv-contrib-python-headless")),
                       ("numba", ("numba",)), ("Pillow", ("Pillow", "pillow"))):
        versions[key] = None
        for dist in dists:
            try:
                versions[key] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions

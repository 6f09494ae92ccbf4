"""The notebook's corruption package, hendrycks' ``imagenet-c`` 0.0.3, run as published: the oracle for our default
corruption code.

It was written in 2018 against numpy 1.x, SciPy 1.1, scikit-image 0.14 and setuptools' ``pkg_resources``; the shims
below change nothing but the API that moved since (each says what moved), so every formula, constant and random
draw is the package's own:

* ``np.float_`` (removed in numpy 2) is ``np.float64``;
* ``np.fromstring(blob, np.uint8)`` (binary mode removed in numpy 2) reads as ``np.frombuffer``;
* ``pkg_resources.resource_filename`` (setuptools, not installed) finds the frost textures in imagecorruptions'
  copy, whose six files are byte-identical to imagenet-c's (the wheel does not ship them);
* scikit-image's ``gaussian(..., multichannel=True)`` became ``channel_axis=-1``;
* scikit-image's ``random_noise`` (impulse_noise): the notebook pinned scikit-image 0.17.2, whose salt-and-pepper
  drew ``np.random.choice`` twice from numpy's global generator (skimage/util/noise.py at v0.17.2); today's draws
  from a generator of its own. The shim is that 0.17.2 code path.

Motion blur and snow call ImageMagick through Wand. ``load()`` returns None when Wand or ImageMagick's library is
missing; tests skip then, except in CI (``CI`` set), where .ci/run installs both and a missing one is a failure.
"""
import os
import sys
import types

import numpy as np

_MODULE = None


def _frost_folder():
    import imagecorruptions
    return os.path.join(os.path.dirname(imagecorruptions.__file__), "frost")


def _random_noise_0172(image, mode="gaussian", seed=None, clip=True, **kwargs):
    # scikit-image 0.17.2, mode 's&p' only (the one imagenet-c uses), with its defaults.
    assert mode == "s&p", mode
    if seed is not None:
        np.random.seed(seed=seed)
    low_clip = -1. if image.min() < 0 else 0.
    p, q = kwargs.get("amount", 0.05), kwargs.get("salt_vs_pepper", 0.5)
    out = image.copy()
    flipped = np.random.choice([True, False], size=image.shape, p=[p, 1 - p])
    salted = np.random.choice([True, False], size=image.shape, p=[q, 1 - q])
    out[flipped & salted] = 1
    out[flipped & ~salted] = low_clip
    return np.clip(out, low_clip, 1.0) if clip else out


def load():
    """The shimmed ``imagenet_c`` module, or None where Wand / ImageMagick is missing."""
    global _MODULE
    if _MODULE is not None:
        return _MODULE
    try:
        import wand.image  # noqa: F401  (loads ImageMagick's library, or raises ImportError)
    except ImportError:
        return None
    if not hasattr(np, "float_"):
        np.float_ = np.float64
    if "pkg_resources" not in sys.modules:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, name: os.path.join(_frost_folder(), os.path.basename(name))
        sys.modules["pkg_resources"] = shim
    import imagenet_c
    import imagenet_c.corruptions as corruptions
    from skimage.filters import gaussian as skimage_gaussian

    def gaussian(image, sigma=1, multichannel=None, **kw):
        if multichannel:
            kw["channel_axis"] = -1
        return skimage_gaussian(image, sigma=sigma, **kw)

    numpy_shim = types.ModuleType("numpy_2018")
    numpy_shim.__dict__.update(np.__dict__)
    numpy_shim.fromstring = lambda data, dtype: np.frombuffer(data, dtype)
    sk_shim = types.SimpleNamespace(util=types.SimpleNamespace(random_noise=_random_noise_0172),
                                    color=corruptions.sk.color)
    corruptions.gaussian = gaussian
    corruptions.np = numpy_shim
    corruptions.sk = sk_shim
    _MODULE = imagenet_c
    return imagenet_c


def corrupt(img, corruption, severity, seed):
    """The notebook's call under our seed rule: ``np.random.seed(seed); imagenet_c.corrupt(img, severity, name)``.

    glass_blur's pixel shuffle draws ``np.random.randint`` in a Python loop (seconds an image)."""
    module = load()
    np.random.seed(seed)
    return module.corrupt(img.copy(), severity=severity, corruption_name=corruption)

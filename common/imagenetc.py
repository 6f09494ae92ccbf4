"""The notebook's corruptions: hendrycks' ``imagenet-c`` formulas where ``imagecorruptions`` changed them.

The paper's table was measured with ``imagenet-c`` 0.0.3 (hendrycks/robustness ``ImageNet-C/imagenet_c``), called
as ``corrupt(np.array(img_224), severity, corruption_number)``. ``imagecorruptions`` re-implemented that package; at
224 x 224 and under one ``np.random.seed`` it gives the same pixels for gaussian, shot, defocus, glass, zoom,
brightness, contrast, pixelate and jpeg, and its motion blur is within a grey level of ImageMagick's. For the rest it
computes something else (docs/protocol.md, "The notebook's code against imagecorruptions"): this module writes
those five again from the published formulas, in the same order of random draws and the same float arithmetic, so
that under the same seed they give imagenet-c's pixels:

* ``impulse_noise``: scikit-image 0.17.2's salt-and-pepper (the notebook's requirements.txt pins it): two
  ``np.random.choice`` draws from numpy's global generator. Today's scikit-image draws from a generator of its own.
* ``fog``: the plasma map in float64 (``np.float_``); imagecorruptions builds it in float32 (1 grey level apart).
* ``frost``: ``randint(5)`` over frost1-5 (frost6 is never drawn), the texture at its own scale, read by OpenCV
  (BGR, flipped to RGB after the crop), cropped at ``randint(0, H_tex - H)``, ``randint(0, W_tex - W)``.
* ``snow``: the snow layer zoomed and trimmed about its centre, truncated to uint8 (the notebook round-trips it
  through an 8-bit PNG into ImageMagick's MotionBlurImage, whose 8-bit output truncates), then blurred.
  ImageMagick's blur itself is imagecorruptions' re-implementation (we do not depend on ImageMagick).
* ``elastic_transform``: ImageNet-C's own, a random affine warp plus a large elastic field (constants in pixels,
  ``244 * (...)``); imagecorruptions replaced it with a small field.
* ``pixelate``: both resizes with Pillow's BOX filter (imagecorruptions enlarges with NEAREST; identical at 224).

Every function takes an HxWx3 uint8 array and returns floats in [0, 255] (``corrupt_image`` applies the package's
final ``np.uint8``, which truncates). Other sizes than 224: imagenet-c assumed 224 x 224 everywhere; here each formula
is generalised per axis, and gives imagenet-c's pixels at 224 (docs/corruptions.md, "Other sizes than 224 x 224",
lists the rule for each).
"""
import os

import numpy as np

# The constants of imagenet-c 0.0.3, per severity 1..5.
IMPULSE_AMOUNT = (0.03, 0.06, 0.09, 0.17, 0.27)
FOG = ((1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4))                     # (strength, wibble decay)
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))            # (image, texture) weights
FROST_TEXTURES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")   # randint(5): no frost6
SNOW = ((0.1, 0.3, 3, 0.5, 10, 4, 0.8),       # (mean, sd, zoom, threshold, blur radius, blur sigma, image weight)
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))
# (alpha, sigma, affine jitter) in pixels; the source's comment: "244 should have been 224".
ELASTIC = ((244 * 2, 244 * 0.7, 244 * 0.1),
           (244 * 2, 244 * 0.08, 244 * 0.2),
           (244 * 0.05, 244 * 0.01, 244 * 0.02),
           (244 * 0.07, 244 * 0.01, 244 * 0.02),
           (244 * 0.12, 244 * 0.01, 244 * 0.02))
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)
# The size every constant above was chosen for.
BASE_SIDE = 224


def impulse_noise(x, severity):
    amount = IMPULSE_AMOUNT[severity - 1]
    x = x / 255.
    # scikit-image 0.17.2, random_noise(mode="s&p", amount, salt_vs_pepper=0.5): which pixels flip, then which of
    # those turn white; both from numpy's global generator, in this order.
    flipped = np.random.choice([True, False], size=x.shape, p=[amount, 1 - amount])
    salted = np.random.choice([True, False], size=x.shape, p=[0.5, 0.5])
    out = x.copy()
    out[flipped & salted] = 1
    out[flipped & ~salted] = 0
    return np.clip(out, 0, 1) * 255


def plasma_fractal(mapsize: int, wibbledecay: float) -> np.ndarray:
    """A mapsize x mapsize float64 height map in [0, 1] by the diamond-square algorithm (mapsize a power of 2).

    The random draws, their order and the float64 arithmetic are imagenet-c's, so a seeded call gives its map."""
    assert mapsize & (mapsize - 1) == 0
    heights = np.empty((mapsize, mapsize), dtype=np.float64)
    heights[0, 0] = 0
    step, wibble = mapsize, 100.

    def jittered_mean(total):
        return total / 4 + wibble * np.random.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        # squares: each cell's centre from its four corners
        corners = heights[0:mapsize:step, 0:mapsize:step]
        total = corners + np.roll(corners, shift=-1, axis=0)
        total += np.roll(total, shift=-1, axis=1)
        heights[half:mapsize:step, half:mapsize:step] = jittered_mean(total)
        # diamonds: each edge midpoint from the two centres and two corners beside it
        centres = heights[half:mapsize:step, half:mapsize:step]
        corners = heights[0:mapsize:step, 0:mapsize:step]
        total = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1))
        heights[0:mapsize:step, half:mapsize:step] = jittered_mean(total)
        total = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0))
        heights[half:mapsize:step, 0:mapsize:step] = jittered_mean(total)
        step //= 2
        wibble /= wibbledecay
    heights -= heights.min()
    return heights / heights.max()


def fog(x, severity):
    strength, decay = FOG[severity - 1]
    h, w = x.shape[:2]
    # imagenet-c draws a 256 map and keeps its top-left 224 x 224; a larger image gets the next power of 2.
    mapsize = 256 if max(h, w) <= 256 else 1 << (max(h, w) - 1).bit_length()
    x = x / 255.
    top = x.max()
    x += strength * plasma_fractal(mapsize, decay)[:h, :w][..., np.newaxis]
    return np.clip(x * top / (top + strength), 0, 1) * 255


def frost_texture(index: int) -> np.ndarray:
    """Texture ``index`` (0..4 = frost1..frost5) as OpenCV reads it: BGR uint8. The files are imagecorruptions' copy,
    byte-identical to imagenet-c's."""
    import cv2
    import imagecorruptions

    path = os.path.join(os.path.dirname(imagecorruptions.__file__), "frost", FROST_TEXTURES[index])
    texture = cv2.imread(path)
    if texture is None:
        raise RuntimeError(f"cannot read the frost texture {path}; reinstall imagecorruptions-imaug")
    return texture


def frost(x, severity):
    import cv2

    image_weight, frost_weight = FROST[severity - 1]
    texture = frost_texture(np.random.randint(5))
    h, w = x.shape[:2]
    th, tw = texture.shape[:2]
    if th <= h or tw <= w:
        # The texture does not cover the image at its own scale (never at 224: the smallest is 315 x 560).
        # Enlarge it as imagecorruptions does, to 1.1x what covers the image, bicubic.
        scale = max(h / th, w / tw) * 1.1
        texture = cv2.resize(texture, (int(np.ceil(tw * scale)), int(np.ceil(th * scale))),
                             interpolation=cv2.INTER_CUBIC)
        th, tw = texture.shape[:2]
    top, left = np.random.randint(0, th - h), np.random.randint(0, tw - w)
    texture = texture[top:top + h, left:left + w][..., [2, 1, 0]]
    return np.clip(image_weight * x + frost_weight * texture, 0, 255)


def zoom_about_centre(layer, factor):
    """imagenet-c's clipped_zoom, per axis: crop the centre 1/factor of each side, zoom it bilinearly (SciPy, order 1)
    and trim the result about its centre to the input size."""
    from scipy.ndimage import zoom

    h, w = layer.shape[:2]
    ch, cw = int(np.ceil(h / float(factor))), int(np.ceil(w / float(factor)))
    top, left = (h - ch) // 2, (w - cw) // 2
    out = zoom(layer[top:top + ch, left:left + cw], (factor, factor, 1), order=1)
    top, left = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[top:top + h, left:left + w]


def snow(x, severity):
    import cv2
    from imagecorruptions.corruptions import _motion_blur

    mean, sd, factor, threshold, radius, sigma, weight = SNOW[severity - 1]
    x = np.asarray(x, dtype=np.float32) / 255.
    h, w = x.shape[:2]
    layer = np.random.normal(size=(h, w), loc=mean, scale=sd)
    layer = zoom_about_centre(layer[..., np.newaxis], factor)
    layer[layer < threshold] = 0
    # The notebook hands ImageMagick an 8-bit PNG: the layer truncated to uint8 ...
    layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8)
    blurred = _motion_blur(layer.astype(np.float32), radius=radius, sigma=sigma,
                           angle=np.random.uniform(-135, -45))
    # ... and reads back its 8-bit PNG, in which the blurred values come out truncated (measured against
    # ImageMagick 6.9: floor agrees on 99.8% of pixels, rounding on 56%).
    layer = np.clip(np.floor(blurred), 0, 255).astype(np.uint8)[..., np.newaxis] / 255.
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(h, w, 1)
    x = weight * x + (1 - weight) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def elastic_transform(x, severity):
    import cv2
    from scipy.ndimage import map_coordinates
    from skimage.filters import gaussian

    # Other sizes than 224: the pixel constants scale with the short side (1 exactly at 224).
    scale = min(x.shape[:2]) / BASE_SIDE
    alpha, sigma, jitter = (v * scale for v in ELASTIC[severity - 1])
    image = np.asarray(x, dtype=np.float32) / 255.
    shape = image.shape
    size = shape[:2]
    # Random affine: three points around the centre, each moved by up to `jitter` pixels.
    centre = np.float32(size) // 2
    half = min(size) // 3
    src = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    dst = src + np.random.uniform(-jitter, jitter, size=src.shape).astype(np.float32)
    image = cv2.warpAffine(image, cv2.getAffineTransform(src, dst), size[::-1], borderMode=cv2.BORDER_REFLECT_101)
    # Elastic field: uniform noise smoothed by a Gaussian of `sigma` pixels, times `alpha`.
    dx = (gaussian(np.random.uniform(-1, 1, size=size), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (gaussian(np.random.uniform(-1, 1, size=size), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    cols, rows, chans = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    coords = (np.reshape(rows + dy[..., np.newaxis], (-1, 1)), np.reshape(cols + dx[..., np.newaxis], (-1, 1)),
              np.reshape(chans, (-1, 1)))
    return np.clip(map_coordinates(image, coords, order=1, mode="reflect").reshape(shape), 0, 1) * 255


def pixelate(x, severity):
    from PIL import Image

    factor = PIXELATE[severity - 1]
    h, w = x.shape[:2]
    small = Image.fromarray(x).resize((int(w * factor), int(h * factor)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX), dtype=np.float64)


# The corruptions this module computes; every other one is imagecorruptions' function (same pixels).
FUNCTIONS = {"impulse_noise": impulse_noise, "fog": fog, "frost": frost, "snow": snow,
             "elastic_transform": elastic_transform, "pixelate": pixelate}

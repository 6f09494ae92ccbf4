"""Constants of PASCAL VOC 2012 shared by every script (docs/protocol.md, "Data"), and the colours of every figure."""
import numpy as np

CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
NUM_CLASSES = 21
IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def voc_palette() -> np.ndarray:
    """The standard bit-interleaved VOC colormap as a (256, 3) uint8 array.

    Class c gets, for each of its bits from the lowest, one bit of R, G and B placed from the
    top bit down: 1 -> (128,0,0), 2 -> (0,128,0), 3 -> (128,128,0), ... 255 -> (224,224,192).
    """
    pal = np.zeros((256, 3), dtype=np.uint8)
    for c in range(256):
        r = g = b = 0
        v = c
        for shift in range(7, -1, -1):
            r |= (v & 1) << shift
            g |= ((v >> 1) & 1) << shift
            b |= ((v >> 2) & 1) << shift
            v >>= 3
        pal[c] = (r, g, b)
    return pal


# docs/protocol.md: vermillion, sky blue, grey (Wong's colour-blind-safe palette), as 0..1 RGB for matplotlib.
MODEL_COLOURS = {"baseline": (213 / 255, 94 / 255, 0.0), "scribe": (86 / 255, 180 / 255, 233 / 255),
                 "ibe": (0.5, 0.5, 0.5)}


def colorize(label: np.ndarray) -> np.ndarray:
    """HxW class indices -> HxWx3 uint8 VOC colours; anything above 20 (i.e. 255, "ignore") is white."""
    pal = voc_palette().copy()
    pal[21:] = 255
    return pal[np.asarray(label, dtype=np.uint8)]

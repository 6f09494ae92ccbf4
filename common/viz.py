"""What the figures and the video share: label colouring, the colour-blind palette, batched prediction."""
import numpy as np
import torch

from .constants import voc_palette
from .data import normalise_uint8
from .logits import channel_argmax

# PROTOCOL.md: vermillion, sky blue, grey (Wong's colour-blind-safe palette), as 0..1 RGB for matplotlib.
MODEL_COLOURS = {"baseline": (213 / 255, 94 / 255, 0.0), "scribe": (86 / 255, 180 / 255, 233 / 255),
                 "ibe": (0.5, 0.5, 0.5)}


def colorize(label: np.ndarray) -> np.ndarray:
    """HxW class indices -> HxWx3 uint8 VOC colours; anything above 20 (i.e. 255, "ignore") is white."""
    pal = voc_palette().copy()
    pal[21:] = 255
    return pal[np.asarray(label, dtype=np.uint8)]


@torch.inference_mode()
def predict(model, images: np.ndarray, device="cpu", batch_size: int = 16) -> np.ndarray:
    """uint8 NxHxWx3 images (same size) -> uint8 NxHxW argmax predictions, in batches."""
    out = []
    for s in range(0, len(images), batch_size):
        x = normalise_uint8(torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).to(device))
        out.append(channel_argmax(model(x)).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], dtype=np.uint8)

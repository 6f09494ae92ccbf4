"""Full-resolution inference: the whole image in one forward, or a sliding window whose logits are averaged.

    logits = whole_image_logits(model, x)                                      # == model(x)
    logits = sliding_window_logits(model, x, crop=(1024, 1024), stride=(768, 768), num_classes=19)

``x`` is a normalised B x 3 x H x W batch; both return B x C x H x W float logits at the input size. A model may
return a tensor or a dict with ``"out"`` (torchvision's segmentation models).

The sliding window lays its crops as mmsegmentation's ``EncoderDecoder.slide_inference`` does (the
Cityscapes protocol of SegFormer and most recent work: 1024 x 1024 crops at stride 768 on 2048 x 1024):
``h_grids = max(H - crop_h + stride_h - 1, 0) // stride_h + 1`` rows (likewise columns), crop (i, j) starting
at ``(i * stride_h, j * stride_w)`` and moved back so that it ends flush with the border when it would pass it;
each crop's logits are added into the full-size map and the sum is divided by the number of crops that cover
each pixel. One difference, on purpose: where the image is smaller than the crop, mmsegmentation runs the model
on the smaller image; here the crop is padded (right and bottom, with ``pad_value``, 0 = the mean colour after
normalisation) to the full crop size and the logits of the padding are dropped, so that a model that needs a
fixed input size (a ViT's position embeddings) runs too. ``pad_value=None`` gives mmsegmentation's behaviour.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _logits(model, x):
    out = model(x)
    if isinstance(out, dict):
        out = out["out"]
    return out


def _pair(v, name):
    if isinstance(v, int):
        v = (v, v)
    h, w = (int(a) for a in v)
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {v}")
    return h, w


@torch.no_grad()
def whole_image_logits(model, x: torch.Tensor) -> torch.Tensor:
    """The logits of the whole image in one forward, at the input size (mmsegmentation's ``mode="whole"``).

    A model whose output is smaller (logits at a stride) is resized bilinearly to the input, as toolkits do.
    """
    out = _logits(model, x)
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


def window_starts(size: int, crop: int, stride: int) -> list:
    """The start offsets of the crops along one axis (mmsegmentation's grid, the last crop flush with the end)."""
    grids = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(k * stride + crop, size) - crop, 0) for k in range(grids)]


@torch.no_grad()
def sliding_window_logits(model, x: torch.Tensor, crop, stride, num_classes: int,
                          pad_value=0.0, batch_crops: int = 1) -> torch.Tensor:
    """Logits of ``x`` (B x 3 x H x W) from overlapping crops, averaged where they overlap (module docstring).

    ``crop`` and ``stride`` are ints or (h, w); ``num_classes`` is checked against the model's output.
    ``batch_crops`` crops of one image go through the model together (faster on a GPU, same numbers up to the
    model's batch-size dependence: none in eval mode). Accumulates in float32 whatever the model's dtype.
    """
    ch, cw = _pair(crop, "crop")
    sh, sw = _pair(stride, "stride")
    if sh > ch or sw > cw:
        raise ValueError(f"stride {stride} larger than crop {crop} would leave pixels without a crop")
    b, _, h, w = x.shape
    boxes = [(y, xx, min(y + ch, h), min(xx + cw, w))
             for y in window_starts(h, ch, sh) for xx in window_starts(w, cw, sw)]
    total = x.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
    for first in range(0, len(boxes), max(1, batch_crops)):
        group = boxes[first:first + max(1, batch_crops)]
        crops = []
        for y1, x1, y2, x2 in group:
            patch = x[:, :, y1:y2, x1:x2]
            if pad_value is not None and (y2 - y1 < ch or x2 - x1 < cw):
                patch = F.pad(patch, (0, cw - (x2 - x1), 0, ch - (y2 - y1)), value=float(pad_value))
            crops.append(patch)
        same = all(c.shape == crops[0].shape for c in crops)
        outs = torch.split(whole_image_logits(model, torch.cat(crops)), b) if same \
            else [whole_image_logits(model, c) for c in crops]
        for (y1, x1, y2, x2), out in zip(group, outs):
            if out.shape[1] != num_classes:
                raise ValueError(f"the model returned {out.shape[1]} channels, expected num_classes={num_classes}")
            total[:, :, y1:y2, x1:x2] += out[:, :, : y2 - y1, : x2 - x1].float()
            count[:, :, y1:y2, x1:x2] += 1
    return total / count


class SlidingWindow(nn.Module):
    """``model`` run as a sliding window: ``SlidingWindow(model, crop, stride, K)(x)`` is
    ``sliding_window_logits(model, x, crop, stride, K)``, so that every caller of ``model(x)`` (the sweep, the
    temperature fit) uses the window without knowing it."""

    def __init__(self, model, crop, stride, num_classes: int, batch_crops: int = 1):
        super().__init__()
        self.model, self.crop, self.stride = model, _pair(crop, "crop"), _pair(stride, "stride")
        self.num_classes, self.batch_crops = int(num_classes), int(batch_crops)

    def forward(self, x):
        return sliding_window_logits(self.model, x, self.crop, self.stride, self.num_classes,
                                     batch_crops=self.batch_crops)


def with_inference(model, inference: dict, num_classes: int):
    """``model`` under an inference mode (common/presets.py ``parse_inference``): itself for "whole", wrapped in
    ``SlidingWindow`` for "slide"."""
    if inference["mode"] == "whole":
        return model
    return SlidingWindow(model, inference["crop"], inference["stride"], num_classes)

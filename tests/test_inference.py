"""Whole-image and sliding-window inference (common/inference.py) against model(x) and a loop over the crops
written here independently."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from common.inference import sliding_window_logits, whole_image_logits, window_starts
from common.models import build_model


class PositionModel(nn.Module):
    """Logits that depend on where a pixel sits inside its crop: a 3x3 conv (zero padding at the crop's border)
    plus a ramp across the crop's width and height. Averaging overlapping crops therefore changes the result,
    and a crop placed one pixel off, or a wrong divisor, shows."""

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 3, padding=1)

    def forward(self, x):
        h, w = x.shape[-2:]
        ramp = torch.linspace(0, 1, w)[None, None, None, :] + 2 * torch.linspace(0, 1, h)[None, None, :, None]
        return self.conv(x) + ramp


def starts_by_hand(size, crop, stride):
    """Every `stride` from 0 while a whole crop fits, then one crop flush with the end if pixels are left."""
    if size <= crop:
        return [0]
    out = list(range(0, size - crop + 1, stride))
    if out[-1] + crop < size:
        out.append(size - crop)
    return out


def loop_over_crops(model, x, crop, stride, classes, pad=0.0):
    """The sliding window written out: every crop through the model (padded to the crop size when the image is
    smaller), its logits added where it lies, the sum divided by the number of crops over each pixel (numpy)."""
    _, _, h, w = x.shape
    total = np.zeros((x.shape[0], classes, h, w))
    count = np.zeros((h, w))
    for top in starts_by_hand(h, crop[0], stride[0]):
        for left in starts_by_hand(w, crop[1], stride[1]):
            patch = x[:, :, top:top + crop[0], left:left + crop[1]]
            ph, pw = patch.shape[-2:]
            if pad is not None and (ph < crop[0] or pw < crop[1]):
                full = torch.full((x.shape[0], 3, crop[0], crop[1]), pad)
                full[:, :, :ph, :pw] = patch
                patch = full
            with torch.no_grad():
                out = model(patch).numpy()[:, :, :ph, :pw]
            total[:, :, top:top + ph, left:left + pw] += out
            count[top:top + ph, left:left + pw] += 1
    return total / count


def test_window_starts_match_mmsegmentation_on_cityscapes():
    # SegFormer's Cityscapes test: 1024 x 1024 crops at stride 768 on 2048 x 1024 -> columns at 0, 768, 1024.
    assert window_starts(2048, 1024, 768) == [0, 768, 1024]
    assert window_starts(1024, 1024, 768) == [0]
    assert window_starts(500, 1024, 768) == [0]
    for size, crop, stride in [(100, 40, 30), (101, 40, 30), (70, 40, 30), (97, 32, 16), (33, 32, 1)]:
        assert window_starts(size, crop, stride) == starts_by_hand(size, crop, stride)


@pytest.mark.parametrize("h,w,crop,stride", [(37, 53, (16, 24), (10, 13)), (32, 64, (32, 32), (16, 24)),
                                             (20, 45, (32, 32), (16, 16)), (12, 10, (32, 32), (24, 24))])
def test_sliding_window_equals_a_loop_over_the_crops(h, w, crop, stride):
    model = PositionModel().eval()
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    got = sliding_window_logits(model, x, crop, stride, num_classes=3)
    assert got.shape == (2, 3, h, w)
    np.testing.assert_allclose(got.numpy(), loop_over_crops(model, x, crop, stride, 3), rtol=0, atol=1e-5)
    batched = sliding_window_logits(model, x, crop, stride, num_classes=3, batch_crops=4)
    np.testing.assert_allclose(batched.numpy(), got.numpy(), rtol=0, atol=1e-5)


def test_overlaps_are_averaged_not_summed():
    """A model that outputs ones: the average over however many crops cover a pixel is one everywhere."""
    ones = lambda x: torch.ones(x.shape[0], 2, *x.shape[-2:])
    got = sliding_window_logits(ones, torch.zeros(1, 3, 50, 70), (20, 30), (7, 11), num_classes=2)
    assert torch.equal(got, torch.ones(1, 2, 50, 70))


def test_overlap_average_by_hand():
    """One row of three crops of width 4 at stride 2 over width 8: columns 0-3, 2-5, 4-7. A model that outputs
    the crop's left column index everywhere gives (0), (0), (0+2)/2, (0+2)/2, (2+4)/2, (2+4)/2, (4), (4)."""
    model = lambda x: x[:, :1, :, :1].expand(-1, 1, *x.shape[-2:]).clone()
    x = torch.arange(8.0).expand(1, 3, 4, 8)
    got = sliding_window_logits(model, x, (4, 4), (2, 2), num_classes=1)
    assert got[0, 0, 0].tolist() == [0, 0, 1, 1, 3, 3, 4, 4]


def test_small_images_are_padded_or_passed_as_they_are():
    model = PositionModel().eval()
    x = torch.randn(1, 3, 12, 20)
    padded = torch.zeros(1, 3, 32, 32)
    padded[:, :, :12, :20] = x
    with torch.no_grad():
        expected = model(padded)[:, :, :12, :20]
        plain = model(x)
    np.testing.assert_allclose(sliding_window_logits(model, x, 32, 24, 3).numpy(), expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(sliding_window_logits(model, x, 32, 24, 3, pad_value=None).numpy(), plain.numpy(),
                               atol=1e-6)


def test_whole_image_is_model_of_x():
    model = build_model("ibe", backbone="resnet18", head_channels=8).eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        expected = model(x)
    assert torch.equal(whole_image_logits(model, x), expected)
    # torchvision-style models return a dict
    assert torch.equal(whole_image_logits(lambda t: {"out": model(t)}, x), expected)
    # a single crop covering the whole image is the whole image
    assert torch.allclose(sliding_window_logits(model, x, (48, 64), (48, 64), 21), expected, atol=1e-6)


def test_bad_arguments():
    model = PositionModel().eval()
    with pytest.raises(ValueError, match="expected num_classes=5"):
        sliding_window_logits(model, torch.zeros(1, 3, 8, 8), 4, 4, num_classes=5)
    with pytest.raises(ValueError, match="stride .* larger than crop"):
        sliding_window_logits(model, torch.zeros(1, 3, 8, 8), 4, 6, num_classes=3)

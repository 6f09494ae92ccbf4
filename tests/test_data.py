"""The training transform against independent oracles: Pillow's whole-image resize + numpy pad and crop
for the geometry, torchvision's functional colour ops for the jitter."""
import os
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from common.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from common.data import (TrainTransform, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation,
                         train_transform)


def _photo(w, h, seed=0):
    """A smooth random colour image with fine detail, and a label of blocks with a 255 band."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).copy()
    img[::7] = rng.integers(0, 256, img[::7].shape, dtype=np.uint8)   # detail an antialias filter must see
    label = np.zeros((h, w), np.uint8)
    for k in range(1, 6):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        label[y:y + rng.integers(10, h // 2), x:x + rng.integers(10, w // 2)] = k
    label[h // 2: h // 2 + 3] = IGNORE_INDEX
    return Image.fromarray(img), Image.fromarray(label, mode="L")


def _oracle_crop(img, target, p, c):
    """Resize the whole image, pad right/bottom (0 / 255), crop: the transform's definition."""
    new_w, new_h = p["size"]
    full = np.asarray(img.resize((new_w, new_h), Image.BILINEAR))
    lab = np.asarray(target.resize((new_w, new_h), Image.NEAREST))
    ph, pw = max(new_h, c), max(new_w, c)
    image = np.zeros((ph, pw, 3), np.uint8)
    label = np.full((ph, pw), IGNORE_INDEX, np.uint8)
    image[:new_h, :new_w], label[:new_h, :new_w] = full, lab
    t, l = p["top"], p["left"]
    return image[t:t + c, l:l + c], label[t:t + c, l:l + c]


@pytest.mark.parametrize("w,h,short", [(500, 375, 448), (500, 375, 300), (500, 375, 112), (375, 500, 150),
                                       (333, 333, 224), (500, 375, 224)])
def test_crop_equals_resize_whole_image_then_pad_and_crop(w, h, short):
    img, target = _photo(w, h, seed=short)
    tf = TrainTransform(224)
    for seed in range(3):
        torch.manual_seed(seed)
        p = tf.get_params(w, h)
        scale = short / min(w, h)   # force the scale under test, keep the drawn offsets valid
        size = (short if w <= h else round(w * scale), short if h < w else round(h * scale))
        p.update(size=size, top=min(p["top"], max(size[1], 224) - 224), left=min(p["left"], max(size[0], 224) - 224))
        got_i, got_l = tf.crop(img, target, p)
        want_i, want_l = _oracle_crop(img, target, p, 224)
        assert got_i.shape == (224, 224, 3) and got_l.shape == (224, 224)
        diff = np.abs(got_i.astype(int) - want_i.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01   # float rounding of the box, nothing more
        assert (got_l != want_l).mean() < 0.001
        assert set(np.unique(got_l)) <= set(range(6)) | {IGNORE_INDEX}


def test_params_follow_the_protocol_ranges():
    tf = TrainTransform(224)
    torch.manual_seed(0)
    shorts, hues = [], []
    for _ in range(400):
        p = tf.get_params(500, 375)
        w, h = p["size"]
        shorts.append(h)
        assert w == int(500 * h / 375)   # the notebook truncates the long side (docs/protocol.md)
        q = tf.get_params(375, 500)["size"]
        assert q[1] == int(500 * q[0] / 375) and 112 <= q[0] <= 448
        assert 0 <= p["top"] <= max(h, 224) - 224 and 0 <= p["left"] <= max(w, 224) - 224
        assert sorted(p["order"]) == [0, 1, 2, 3]
        b, c, s, hue = p["factors"]
        assert 0.7 <= b <= 1.3 and 0.7 <= c <= 1.3 and 0.7 <= s <= 1.3 and -0.1 <= hue <= 0.1
        hues.append(hue)
    assert min(shorts) >= 112 and max(shorts) <= 448 and min(shorts) < 140 and max(shorts) > 420
    assert min(hues) < -0.08 and max(hues) > 0.08
    torch.manual_seed(5)
    first = tf.get_params(500, 375)
    torch.manual_seed(5)
    assert tf.get_params(500, 375) == first   # torch's generator drives every draw


def _tv(fn, rgb, factor):
    out = fn(torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), factor)
    return out.permute(1, 2, 0).numpy().astype(int)


@pytest.mark.parametrize("ours,theirs,factors,tol", [
    (adjust_brightness, TF.adjust_brightness, (0.7, 1.0, 1.29), 0),
    (adjust_contrast, TF.adjust_contrast, (0.7, 1.0, 1.3), 1),
    (adjust_saturation, TF.adjust_saturation, (0.7, 1.0, 1.3), 1),
    (adjust_hue, TF.adjust_hue, (-0.5, -0.1, -0.03, 0.0, 0.05, 0.1, 0.5), 1),
])
def test_colour_ops_match_torchvision(ours, theirs, factors, tol):
    rgb = np.asarray(_photo(160, 120, seed=3)[0]).copy()
    rgb[:10, :10] = 0
    rgb[10:20, :10] = 255
    for f in factors:
        got = ours(rgb, f).astype(int)
        want = _tv(theirs, rgb, f)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= tol, (ours.__name__, f)
        if f not in (0.0, 1.0):
            assert np.abs(got - rgb).max() > 10   # the op did something


def test_hue_shift_of_half_a_turn_swaps_complementary_colours():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]]], np.uint8)
    out = adjust_hue(rgb, 0.5)
    np.testing.assert_array_equal(out, [[[0, 255, 255], [255, 0, 255], [255, 255, 0], [128, 128, 128]]])


def test_call_normalises_and_pads_label_with_ignore():
    img, target = _photo(200, 150, seed=1)   # smaller than the crop for most scales: padding shows up
    tf = train_transform(224)
    torch.manual_seed(1)
    p = tf.get_params(200, 150)
    torch.manual_seed(1)
    x, y = tf(img, target)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert y.shape == (224, 224) and y.dtype == torch.int64
    w, h = p["size"]
    if h < 224:
        assert (y[h:] == IGNORE_INDEX).all()
    if w < 224:
        assert (y[:, w:] == IGNORE_INDEX).all()
    # Normalisation against its formula, on the jittered crop the same draw gives.
    rgb = tf.colour(tf.crop(img, target, p)[0], p)
    want = (torch.from_numpy(rgb).permute(2, 0, 1).double() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(x.double(), want, atol=1e-5)


LOADER_AFTER_OPENCV_POOL = """
import cv2, numpy as np, torch
from common.data import single_thread_opencv
big = np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
cv2.GaussianBlur(big, (31, 31), 5)          # the parent has used OpenCV's thread pool
single_thread_opencv()

class ThreadCount(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        cv2.GaussianBlur(big[:300, :300], (5, 5), 1)
        return cv2.getNumThreads()

print(list(torch.utils.data.DataLoader(ThreadCount(), batch_size=None, num_workers=1)), cv2.getNumThreads())
"""


def test_loader_workers_run_opencv_on_one_thread_without_deadlock():
    # In a subprocess with a timeout: the deadlock this guards against (cv2.setNumThreads inside a forked
    # worker after the parent used OpenCV's pool) would otherwise hang the test suite.
    import subprocess
    import sys

    from helpers import ROOT

    r = subprocess.run([sys.executable, "-c", LOADER_AFTER_OPENCV_POOL], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[1,", "1]", "1"]


def test_normalise_uint8_against_the_formula():
    # The one ImageNet normalisation of the project (training crops, sweep batches, video frames):
    # (x / 255 - mean) / std in float64 by hand, NCHW and contiguous.
    from common.data import normalise_uint8
    x = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (3, 9, 11, 3), dtype=np.uint8))
    x[0, 0, 0] = 0
    x[0, 0, 1] = 255
    got = normalise_uint8(x)
    want = (x.permute(0, 3, 1, 2).double() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert got.shape == (3, 3, 9, 11) and got.dtype == torch.float32 and got.is_contiguous()
    assert torch.allclose(got.double(), want, rtol=0, atol=1e-6)


def _photos():
    """Real photographs (scikit-image ships them) in both orientations, an odd size, and a square one,
    each with a label map of blocks, 255 borders included."""
    import skimage.data
    out = []
    for name, crop in (("chelsea", None), ("coffee", (slice(0, 397), slice(0, 263))), ("astronaut", None),
                       ("rocket", (slice(3, 427), slice(17, 600)))):
        rgb = getattr(skimage.data, name)()
        if crop:
            rgb = rgb[crop]
        h, w = rgb.shape[:2]
        yy, xx = np.mgrid[:h, :w]
        label = ((yy // 37 + xx // 53) % 21).astype(np.uint8)
        label[(yy % 37 < 2) | (xx % 53 < 2)] = IGNORE_INDEX
        # VOC's labels are palette PNGs, SBD's come from .mat files as mode "L": Pillow treats them apart.
        target = Image.fromarray(label, mode="L")
        out.append((name, Image.fromarray(rgb), target.convert("P") if len(out) % 2 else target))
    return out


@pytest.mark.parametrize("name,img,target", _photos(), ids=[p[0] for p in _photos()])
def test_paper_and_shortside_geometry_equal_pillow_called_directly(name, img, target):
    from common.data import paper_resize, shortside_resize, val_transform
    image, label = paper_resize(img, target, 224)
    np.testing.assert_array_equal(image, np.asarray(img.resize((224, 224), Image.BILINEAR)))
    np.testing.assert_array_equal(label, np.asarray(target.resize((224, 224), Image.NEAREST)))
    # FixScaleResize: short side 224, long side int(long * 224 / short), Pillow bilinear / nearest.
    w, h = img.size
    size = (int(w * 224 / h), 224) if w > h else (224, int(h * 224 / w))
    image, label = shortside_resize(img, target, 224)
    np.testing.assert_array_equal(image, np.asarray(img.resize(size, Image.BILINEAR)))
    np.testing.assert_array_equal(label, np.asarray(target.resize(size, Image.NEAREST)))
    # Validation while training is the same geometry, normalised by formula.
    x, y = val_transform(224)(img, target)
    np.testing.assert_array_equal(y.numpy(), np.asarray(target.resize(size, Image.NEAREST)))
    want = (np.asarray(img.resize(size, Image.BILINEAR)).transpose(2, 0, 1) / 255.0
            - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(x.numpy(), want, atol=1e-5)


def test_eval_sample_protocols_on_the_synthetic_set(tiny_data):
    from common.data import eval_sample, voc_dataset
    root = tiny_data
    val = voc_dataset(os.path.join(root, "voc"), "val")
    for i in range(len(val)):
        img, target = val[i]
        w, h = img.size
        for protocol, size in (("paper", (64, 64)), ("shortside", (int(w * 64 / h), 64) if w > h else
                                                                     (64, int(h * 64 / w)))):
            _, image, label = eval_sample(val, i, protocol, 64)
            np.testing.assert_array_equal(image, np.asarray(img.convert("RGB").resize(size, Image.BILINEAR)))
            np.testing.assert_array_equal(label, np.asarray(target.resize(size, Image.NEAREST)))
            assert image.flags.writeable

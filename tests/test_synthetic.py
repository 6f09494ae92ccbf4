"""Tests of common/synthetic.py: the generated dataset is read by torchvision's own VOC and SBD loaders,
its labels obey the VOC/SBD conventions (checked with independent numpy code), and generation is
deterministic, idempotent and safe against foreign folders, leftovers and concurrent callers."""
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.io
from PIL import Image
from torchvision.datasets import SBDataset, VOCSegmentation

from common import synthetic
from common.constants import voc_palette
from common.cli import UsageError
from helpers import ROOT

SMALL = dict(n_voc_train=12, n_sbd=12, n_val=8, min_side=64, max_side=128, seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "data"
    voc, sbd = synthetic.ensure_synthetic(root, quiet=True, **SMALL)
    return root, voc, sbd


def _lines(path):
    with open(path) as f:
        return [x.strip() for x in f if x.strip()]


def _voc_ids(voc, split):
    return _lines(os.path.join(voc, "VOCdevkit", "VOC2012", "ImageSets", "Segmentation", split + ".txt"))


def _tree_digest(root):
    """{relative path: sha256} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _shifted_pairs(a, d):
    """All pairs (a[p], a[q]) with q - p = (dy, dx), |dy|, |dx| <= d, as two flat arrays."""
    h, w = a.shape
    firsts, seconds = [], []
    for dy in range(0, d + 1):
        for dx in range(-d, d + 1):
            if (dy, dx) <= (0, 0):
                continue
            p = a[0:h - dy, max(0, -dx):w - max(0, dx)]
            q = a[dy:h, max(0, dx):w - max(0, -dx)]
            firsts.append(p.ravel())
            seconds.append(q.ravel())
    return np.concatenate(firsts), np.concatenate(seconds)


def _np_edge(seg):
    """Pixels with a 4-neighbour (inside the image) of another class, by plain array shifts."""
    e = np.zeros(seg.shape, bool)
    diff_v = seg[1:] != seg[:-1]
    diff_h = seg[:, 1:] != seg[:, :-1]
    e[1:] |= diff_v
    e[:-1] |= diff_v
    e[:, 1:] |= diff_h
    e[:, :-1] |= diff_h
    return e


def _np_band(seg, r):
    """Pixels with another class within Chebyshev distance r, by plain array shifts."""
    h, w = seg.shape
    band = np.zeros(seg.shape, bool)
    pad = np.pad(seg, r, mode="edge")
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            band |= pad[r + dy:r + dy + h, r + dx:r + dx + w] != seg
    return band


def test_torchvision_loaders_read_both_parts(small):
    _, voc, sbd = small
    for split, n in (("train", SMALL["n_voc_train"]), ("val", SMALL["n_val"])):
        ds = VOCSegmentation(voc, year="2012", image_set=split)
        assert len(ds) == len(_voc_ids(voc, split)) == n
        img, lab = ds[n - 1]
        assert img.mode == "RGB" and lab.mode == "P" and img.size == lab.size
    assert _voc_ids(voc, "trainval") == _voc_ids(voc, "train") + _voc_ids(voc, "val")
    seg_ds = SBDataset(sbd, image_set="train_noval", mode="segmentation")
    assert len(seg_ds) == len(_lines(os.path.join(sbd, "train_noval.txt"))) == SMALL["n_sbd"]
    assert sorted(_lines(os.path.join(sbd, "train.txt")) + _lines(os.path.join(sbd, "val.txt"))) == \
        sorted(_lines(os.path.join(sbd, "train_noval.txt")))
    bnd_ds = SBDataset(sbd, image_set="train_noval", mode="boundaries")
    for i in range(len(seg_ds)):
        img, seg = seg_ds[i]
        _, bnd = bnd_ds[i]
        seg = np.asarray(seg)
        assert img.size == (seg.shape[1], seg.shape[0])
        assert bnd.shape == (20,) + seg.shape
        for k in range(1, 21):  # a class has boundary pixels iff it is present
            assert bnd[k - 1].any() == (seg == k).any(), (i, k)


def test_voc_labels_palette_values_and_ignore_band(small):
    _, voc, _ = small
    base = os.path.join(voc, "VOCdevkit", "VOC2012")
    pal = voc_palette()
    for split in ("train", "val"):
        for name in _voc_ids(voc, split):
            lab_img = Image.open(os.path.join(base, "SegmentationClass", name + ".png"))
            assert lab_img.mode == "P"
            assert np.array_equal(np.array(lab_img.getpalette()[:768], np.uint8).reshape(256, 3), pal)
            lab = np.asarray(lab_img)
            assert set(np.unique(lab).tolist()) <= set(range(21)) | {255}
            assert (lab == 255).any() and (lab < 255).any()
            r = synthetic.ignore_radius(min(lab.shape))
            assert r in (1, 2)
            # The band separates classes: two labelled pixels closer than 2r (Chebyshev) never differ,
            # since each one's whole r-neighbourhood has its class.
            a, b = _shifted_pairs(lab, 2 * r)
            keep = (a != 255) & (b != 255)
            assert np.array_equal(a[keep], b[keep]), name
            # ... and it is a thin band along class changes: nearly every 255 pixel has two different
            # labelled classes within 2r + 2 (the rest sit in slivers that the band swallowed whole).
            ys, xs = np.nonzero(lab == 255)
            d = 2 * r + 2
            ok = [len(set(np.unique(lab[max(0, y - d):y + d + 1, max(0, x - d):x + d + 1]).tolist()) - {255}) >= 2
                  for y, x in zip(ys, xs)]
            assert np.mean(ok) >= 0.97, (name, np.mean(ok))
            # No band along the image border: a border row/column is 255 only where the band crosses it.
            assert not (lab[0] == 255).all() and not (lab[:, 0] == 255).all()


def test_voc_band_equals_independent_dilation_of_class_boundaries(small):
    _, _, sbd = small
    for name in _lines(os.path.join(sbd, "train_noval.txt"))[:6]:
        seg = scipy.io.loadmat(os.path.join(sbd, "cls", name + ".mat"))["GTcls"][0]["Segmentation"][0]
        r = synthetic.ignore_radius(min(seg.shape))
        expected = np.where(_np_band(seg, r), 255, seg)
        assert np.array_equal(synthetic.voc_label(seg), expected), name


def test_sbd_mat_structure(small):
    _, _, sbd = small
    for name in _lines(os.path.join(sbd, "train_noval.txt")):
        gt = scipy.io.loadmat(os.path.join(sbd, "cls", name + ".mat"))["GTcls"][0]
        seg = gt["Segmentation"][0]
        assert seg.dtype == np.uint8 and seg.max() <= 20 and (seg > 0).any()  # no 255 in SBD
        present = sorted(set(np.unique(seg).tolist()) - {0})
        assert gt["CategoriesPresent"][0].ravel().tolist() == present
        cells = gt["Boundaries"][0]
        assert cells.shape == (20, 1)
        edge = _np_edge(seg)
        for k in range(1, 21):
            assert np.array_equal(cells[k - 1][0].toarray().astype(bool), edge & (seg == k)), (name, k)


def test_sizes_orientations_and_ids(small):
    _, voc, sbd = small
    base = os.path.join(voc, "VOCdevkit", "VOC2012")
    train, val, sb = _voc_ids(voc, "train"), _voc_ids(voc, "val"), _lines(os.path.join(sbd, "train_noval.txt"))
    assert not (set(train) & set(val)) and not (set(train) & set(sb)) and not (set(val) & set(sb))
    assert len(set(train + val + sb)) == len(train + val + sb)
    assert all(re.fullmatch(r"\d{4}_\d{6}", i) for i in train + val + sb)
    shapes = []
    for name in train + val:
        img = Image.open(os.path.join(base, "JPEGImages", name + ".jpg"))
        lab = Image.open(os.path.join(base, "SegmentationClass", name + ".png"))
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == lab.size
        shapes.append(img.size)
    for name in sb:
        img = Image.open(os.path.join(sbd, "img", name + ".jpg"))
        seg = scipy.io.loadmat(os.path.join(sbd, "cls", name + ".mat"))["GTcls"][0]["Segmentation"][0]
        assert img.size == (seg.shape[1], seg.shape[0])
        shapes.append(img.size)
    assert min(min(s) for s in shapes) >= SMALL["min_side"]
    assert max(max(s) for s in shapes) <= SMALL["max_side"]
    assert any(w > h for w, h in shapes) and any(h > w for w, h in shapes)


def test_every_class_in_train_and_val(tmp_path):
    voc, sbd = synthetic.ensure_synthetic(tmp_path / "d", n_voc_train=20, n_sbd=1, n_val=20, max_side=96,
                                          quiet=True)
    base = os.path.join(voc, "VOCdevkit", "VOC2012", "SegmentationClass")
    for split in ("train", "val"):
        seen = set()
        for name in _voc_ids(voc, split):
            seen |= set(np.unique(np.asarray(Image.open(os.path.join(base, name + ".png")))).tolist())
        assert seen - {255} == set(range(21)), split


def test_deterministic_and_fast_path(tmp_path, small, monkeypatch):
    root, _, _ = small
    other = tmp_path / "again"
    # scipy's savemat writes time.asctime() into every .mat header; the files must not depend on it.
    monkeypatch.setattr(time, "asctime", lambda *a: "Mon Jan  1 00:00:00 1990")
    synthetic.ensure_synthetic(other, quiet=True, **SMALL)
    first = _tree_digest(root)
    assert len(first) == 2 * (SMALL["n_voc_train"] + SMALL["n_val"] + SMALL["n_sbd"]) + 7  # + 6 lists, stamp
    assert _tree_digest(other) == first
    # A second call with the same arguments touches nothing.
    before = {p: os.stat(os.path.join(other, p)).st_mtime_ns for p in first}
    synthetic.ensure_synthetic(other, quiet=True, **SMALL)
    assert {p: os.stat(os.path.join(other, p)).st_mtime_ns for p in first} == before
    # Another seed gives other pixels.
    third = tmp_path / "seed4"
    synthetic.ensure_synthetic(third, quiet=True, **dict(SMALL, seed=4))
    assert _tree_digest(third) != first


def test_other_arguments_regenerate_and_unset_ones_keep_what_is_there(tmp_path):
    root = tmp_path / "d"
    synthetic.ensure_synthetic(root, n_voc_train=3, n_sbd=2, n_val=2, quiet=True)
    voc, _ = synthetic.ensure_synthetic(root, n_voc_train=5, quiet=True)  # others kept: 2, 2
    assert len(_voc_ids(voc, "train")) == 5 and len(_voc_ids(voc, "val")) == 2
    assert sorted(os.listdir(tmp_path)) == ["d"]  # no temporary or moved-aside folders left
    # No arguments (what train.py passes): the dataset there is used as it is.
    stamp = root / synthetic.STAMP
    before = stamp.stat().st_mtime_ns
    synthetic.ensure_synthetic(root, quiet=True)
    assert stamp.stat().st_mtime_ns == before
    # A dataset from an older generator is redrawn at its own sizes.
    old = json.loads(stamp.read_text())
    stamp.write_text(json.dumps(dict(old, generator="synthetic-voc-0")))
    synthetic.ensure_synthetic(root, quiet=True)
    assert json.loads(stamp.read_text()) == old and len(_voc_ids(voc, "train")) == 5


def test_foreign_folder_is_refused_and_untouched(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("precious")
    with pytest.raises(UsageError, match=re.escape(str(root))):
        synthetic.ensure_synthetic(root, n_voc_train=2, n_sbd=2, n_val=2, quiet=True)
    assert os.listdir(root) == ["notes.txt"] and (root / "notes.txt").read_text() == "precious"
    afile = tmp_path / "afile"
    afile.write_text("precious")
    with pytest.raises(UsageError, match="not a synthetic dataset"):
        synthetic.ensure_synthetic(afile, n_voc_train=2, n_sbd=2, n_val=2, quiet=True)
    assert afile.read_text() == "precious"
    with pytest.raises(UsageError):
        synthetic.ensure_synthetic(tmp_path / "x", min_side=100, max_side=80, quiet=True)


def test_leftover_temp_dirs_do_not_break_next_call(tmp_path):
    # What generations killed half-way leave: temp siblings with partial content, one from long ago.
    for name, age in (("d.tmp-123-old", 7200), ("d.tmp-456-new", 0)):
        junk = tmp_path / name / "voc" / "VOCdevkit"
        junk.mkdir(parents=True)
        (junk / "half.jpg").write_bytes(b"\xff\xd8")
        t = time.time() - age
        os.utime(tmp_path / name, (t, t))
    voc, _ = synthetic.ensure_synthetic(tmp_path / "d", n_voc_train=2, n_sbd=2, n_val=2, quiet=True)
    assert len(VOCSegmentation(voc, image_set="train")) == 2
    # The stale one is cleaned up; the recent one might belong to a live process and stays.
    assert sorted(os.listdir(tmp_path)) == ["d", "d.tmp-456-new"]


@pytest.mark.slow
def test_two_processes_at_once_and_cli(tmp_path):
    root = tmp_path / "d"
    cmd = [sys.executable, "-m", "common.synthetic", "--root", str(root), "--n-voc-train", "10",
           "--n-sbd", "10", "--n-val", "5", "--quiet"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert len(VOCSegmentation(str(root / "voc"), image_set="val")) == 5
    assert sorted(os.listdir(tmp_path)) == ["d"]
    ref = tmp_path / "ref"
    synthetic.ensure_synthetic(ref, n_voc_train=10, n_sbd=10, n_val=5, quiet=True)
    assert _tree_digest(root) == _tree_digest(ref)
    out = subprocess.run([sys.executable, "-m", "common.synthetic", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--root", "--n-voc-train", "--n-sbd", "--n-val", "--min-side", "--max-side", "--seed", "--quiet"):
        assert flag in out
    bad = subprocess.run(cmd[:4] + [str(tmp_path / "e"), "--min-side", "8"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")

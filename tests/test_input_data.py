"""Input data through the real command lines: split files in every valid shape, images of any size, names that
become paths, damaged checkpoints. docs/reliability.md, "Input data", lists each case and what the user sees."""
import io
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import dump_voc_c
import evaluate_corruptions
import make_video
import train
from common.checkpoint import load_model
from common.constants import IGNORE_INDEX
from common import imagenetc
from common.corruptions import ALL_CORRUPTIONS, MAX_SEVERITY, corrupt_image, corruption_seed
from common.data import (ShortSideTransform, TrainTransform, eval_sample, read_split, sbd_dataset,
                         voc_dataset)
from common.cli import UsageError
from helpers import TINY_TRAIN, cli, one_error_line, refused, run_script, run_tiny_train, tiny_checkpoint

SPLIT = os.path.join("VOCdevkit", "VOC2012", "ImageSets", "Segmentation")
# The smallest sources a VOC-style tree can hold, as (width, height), and one very elongated each way.
SMALL = [(1, 1), (2, 3), (7, 5), (31, 17), (3, 200), (200, 3)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_data, tiny_ckpt):
    """A folder for this module's trees beside ``synthetic`` (the shared tiny dataset) and ``good.pt``."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "synthetic").symlink_to(tiny_data, target_is_directory=True)
    shutil.copy(tiny_ckpt("ibe", 0), d / "good.pt")
    return d


def voc_ids(world, split):
    with open(world / "synthetic" / "voc" / SPLIT / f"{split}.txt") as fh:
        return fh.read().split()


def voc_tree(world, name, val=None, train_split=None, images=()):
    """A copy of the synthetic VOC layout with extra images ``(id, width, height)`` (JPEG + palette PNG label)
    and the val / train split files replaced by the given bytes."""
    root = world / name
    shutil.copytree(world / "synthetic" / "voc", root)
    base = root / "VOCdevkit" / "VOC2012"
    palette = Image.open(next((base / "SegmentationClass").iterdir())).getpalette()
    for k, (image_id, w, h) in enumerate(images):
        rng = np.random.default_rng(k)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{image_id}.jpg",
                                                                               quality=95)
        label = np.zeros((h, w), np.uint8)
        label[h // 2:, :] = 15
        label[:, : w // 3] = IGNORE_INDEX
        png = Image.fromarray(label, mode="P")
        png.putpalette(palette)
        png.save(base / "SegmentationClass" / f"{image_id}.png")
    for split, text in (("val", val), ("train", train_split)):
        if text is not None:
            (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_bytes(text)
    return root


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


# ------------------------------------------------------------------------------------------------- split files

MESSY = [
    (b"a\r\nb\r\nc\r\n", ["a", "b", "c"]),                     # Windows line endings
    (b"a\rb\rc", ["a", "b", "c"]),                              # old Mac line endings, no final newline
    (b"a  \nb\t\n c \n", ["a", "b", "c"]),                      # spaces and tabs around ids
    (b"\n\na\n\n\nb\n\n", ["a", "b"]),                          # blank lines anywhere
    (b"\xef\xbb\xbfa\r\nb\r\n", ["a", "b"]),                    # UTF-8 byte-order mark (Windows editors)
    (b"2007_000033\n2007_000042", ["2007_000033", "2007_000042"]),
]


@pytest.mark.parametrize("text,ids", MESSY)
def test_split_files_in_every_valid_shape_give_their_ids(tmp_path, text, ids, capsys):
    (tmp_path / "val.txt").write_bytes(text)
    assert read_split(str(tmp_path / "val.txt")) == ids
    assert capsys.readouterr().err == ""


def test_duplicated_ids_are_used_once_with_one_warning(tmp_path, capsys):
    (tmp_path / "val.txt").write_bytes(b"b\na\nb\r\nc\na\nb\n")
    assert read_split(str(tmp_path / "val.txt")) == ["b", "a", "c"]   # first occurrences, in order
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "val.txt") in err[0] and "3 duplicate" in err[0] and "b, a" in err[0]


@pytest.mark.parametrize("text,needles", [
    (b"", ["lists no image ids"]),
    (b"\r\n  \n\t\n", ["lists no image ids"]),
    (b"\xff\xfea\x00\r\x00\n\x00", ["not UTF-8"]),                       # UTF-16, as Notepad's "Unicode"
    (b"a\nb\n../../escaped\n", ["line 3", "'../../escaped'"]),
    (b"a\n/etc/passwd\n", ["line 2", "/etc/passwd"]),
    (b"a\r\n.hidden\r\n", ["line 2", ".hidden"]),
])
def test_split_files_that_cannot_work_are_one_clear_error(tmp_path, text, needles):
    (tmp_path / "val.txt").write_bytes(text)
    with pytest.raises(UsageError) as e:
        read_split(str(tmp_path / "val.txt"))
    for needle in [str(tmp_path / "val.txt"), *needles]:
        assert needle in str(e.value)


def messy(ids, dup):
    """The same ids as a Windows editor with a careless hand would leave them: BOM, CRLF, blanks, spaces, a repeat."""
    lines = [ids[0] + "  ", "", *ids[1:], dup, "\t"]
    return b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n\r\n"


def test_evaluate_and_dump_on_a_messy_split_equal_a_clean_one(world, tmp_path, capsys):
    ids = voc_ids(world, "val")
    root = voc_tree(world, "messy-val", val=messy(ids, ids[0]))
    ev = ["--checkpoints", world / "good.pt", "--data", "voc", "--size", "32", "--workers", "0",
          "--corruptions", "jpeg", "--severities", "0", "1"]
    assert run_script(evaluate_corruptions, *ev, "--voc-root", world / "synthetic" / "voc",
                      "--out", tmp_path / "a") == 0
    capsys.readouterr()
    assert run_script(evaluate_corruptions, *ev, "--voc-root", root, "--out", tmp_path / "b") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val.txt" in err[0] and ids[0] in err[0], err   # the duplicate, once
    # Same images, same numbers: the rows differ only in the folders they name.
    a = evaluate_corruptions.read_metrics(tmp_path / "a" / "metrics.jsonl")
    b = evaluate_corruptions.read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [(r["images"], r["miou"], r["iou"], r["distance"]) for r in a] == \
        [(r["images"], r["miou"], r["iou"], r["distance"]) for r in b] and a[0]["images"] == len(ids)
    z = np.load(tmp_path / "b" / "confusion" / "ibe" / "clean_0.npz")
    assert list(z["image_ids"]) == ids
    # dump_voc_c.py writes exactly one label and one PNG per id.
    dump = ["--data", "voc", "--voc-root", root, "--corruptions", "jpeg", "--severities", "1", "--size", "32",
            "--out", tmp_path / "vocc"]
    assert run_script(dump_voc_c, *dump) == 0
    assert files_under(tmp_path / "vocc" / "labels") == sorted(f"{i}.png" for i in ids)
    assert files_under(tmp_path / "vocc" / "jpeg_compression" / "1") == sorted(f"{i}.png" for i in ids)


def test_train_on_messy_voc_and_sbd_splits(world, tmp_path, capsys):
    train_ids, sbd_ids = voc_ids(world, "train"), open(world / "synthetic" / "sbd" / "train_noval.txt").read().split()
    root = voc_tree(world, "messy-train", train_split=messy(train_ids, train_ids[-1]),
                    val=messy(voc_ids(world, "val"), voc_ids(world, "val")[1]))
    sbd = tmp_path / "sbd"
    shutil.copytree(world / "synthetic" / "sbd", sbd)
    (sbd / "train_noval.txt").write_bytes(messy(sbd_ids, sbd_ids[0]))
    assert sbd_dataset(str(sbd)).images == [str(sbd / "img" / f"{i}.jpg") for i in sbd_ids]
    capsys.readouterr()
    args = TINY_TRAIN + ["--data", "voc", "--voc-root", root, "--sbd-root", sbd, "--pretrained-backbone", "none",
                         "--model", "ibe", "--epochs", "1", "--batch-size", "2", "--out", tmp_path / "runs"]
    assert run_script(train, *args) == 0
    out = capsys.readouterr()
    assert f"train {len(train_ids) + len(sbd_ids)} images" in out.out and f"val {len(voc_ids(world, 'val'))}" in out.out
    warnings = [line for line in out.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3 and all("duplicate" in w for w in warnings), warnings   # train, train_noval, val


def test_empty_split_and_path_in_split_through_the_command_lines(world, tmp_path, capsys):
    empty = voc_tree(world, "empty-val", val=b"\r\n\r\n")
    assert run_script(dump_voc_c, "--data", "voc", "--voc-root", empty, "--corruptions", "jpeg", "--severities", "1",
                      "--size", "32", "--out", tmp_path / "vocc") == 2
    line = one_error_line(capsys, warnings=True)
    assert "val.txt" in line and "no image ids" in line and not (tmp_path / "vocc").exists()
    # An id that climbs out of the folder: refused before anything is written, anywhere.
    ids = voc_ids(world, "val")
    evil = voc_tree(world, "evil-val", val="\n".join([ids[0], "../../../escaped_image"]).encode())
    before = files_under(world)
    assert run_script(evaluate_corruptions, "--checkpoints", world / "good.pt", "--data", "voc", "--voc-root", evil,
                      "--size", "32", "--workers", "0", "--corruptions", "jpeg", "--severities", "1",
                      "--save-predictions", tmp_path / "pred", "--out", tmp_path / "out") == 2
    line = one_error_line(capsys, warnings=True)
    assert "val.txt, line 2" in line and "escaped_image" in line
    assert files_under(world) == before and files_under(tmp_path) == []


# -------------------------------------------------------------------------------------------------- image sizes

def library_corrupt(img, image_id, name, severity):
    """The oracle: imagecorruptions itself under docs/protocol.md's seed rule (no wrapper of ours)."""
    import imagecorruptions

    seed = corruption_seed(image_id, name, severity)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with np.errstate(invalid="raise", divide="raise"):
            return imagecorruptions.corrupt(img, corruption_name=name, severity=severity,
                                            **({"seed": seed} if name in ("impulse_noise", "glass_blur") else {}))
    except FloatingPointError:   # spatter's 0/0 without drops: corrupt_image's documented exception
        return np.uint8(np.clip(np.float32(img) / 255., 0, 1) * 255)
    finally:
        np.random.set_state(state)


def protocol_shapes(size=32):
    """Every HxW the corruptions get from the SMALL sources: "paper" gives size x size, "shortside" keeps the
    aspect (short side ``size``, long side truncated), "native" takes only images of 32 or more a side (its
    smallest, square and elongated)."""
    shapes = {(size, size), (32, 33), (33, 32)}
    for w, h in SMALL:
        shapes.add((size, int(w * size / h)) if w > h else (int(h * size / w), size))
    return sorted(shapes)


def test_protocol_shapes_are_the_documented_numbers():
    # By hand: 2x3 -> 32x48, 7x5 -> 44x32, 31x17 -> 58x32 (int(31 * 32 / 17) = 58), 3x200 -> 32x2133.
    assert protocol_shapes() == [(32, 32), (32, 33), (32, 44), (32, 58), (32, 2133), (33, 32), (48, 32), (2133, 32)]


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_every_corruption_at_the_smallest_sizes_equals_the_library(name):
    rng = np.random.default_rng(ALL_CORRUPTIONS.index(name))
    for shape in protocol_shapes():
        img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        for severity in range(1, MAX_SEVERITY + 1):
            want = library_corrupt(img, "2007_000033", name, severity)
            got = corrupt_image(img, "2007_000033", name, severity, code="imagecorruptions")
            assert got.shape == img.shape and got.dtype == np.uint8, (shape, severity)
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {severity} {shape}")
            # The notebook's code: its own formulas generalised to any size (common/imagenetc.py); the rest is the
            # library's function under the same seed.
            got = corrupt_image(img, "2007_000033", name, severity, code="imagenet-c")
            assert got.shape == img.shape and got.dtype == np.uint8, (shape, severity)
            if name not in imagenetc.FUNCTIONS:
                np.testing.assert_array_equal(got, want, err_msg=f"{name} {severity} {shape}")


def test_corruption_below_the_minimum_names_the_image():
    with pytest.raises(ValueError, match=r"image 2007_000033: .*at least 32x32, got 17x31"):
        corrupt_image(np.zeros((31, 17, 3), np.uint8), "2007_000033", "jpeg", 1)


@pytest.fixture(scope="module")
def small_tree(world):
    images = [(f"small_{w}x{h}", w, h) for w, h in SMALL] + [("min_32x32", 32, 32), ("min_32x45", 32, 45)]
    ids = voc_ids(world, "val") + [i for i, _, _ in images]
    return voc_tree(world, "small", val="\n".join(ids).encode(), train_split="\n".join(ids).encode(), images=images)


def test_eval_sample_at_every_size_under_each_protocol(small_tree):
    ds = voc_dataset(str(small_tree), "val")
    for index, path in enumerate(ds.images):
        img, target = ds[index]
        w, h = img.size
        image_id, image, label = eval_sample(ds, index, "paper", 32)
        assert image_id == os.path.basename(path)[:-4]
        np.testing.assert_array_equal(image, np.asarray(img.resize((32, 32), Image.BILINEAR)))
        np.testing.assert_array_equal(label, np.asarray(target.resize((32, 32), Image.NEAREST)))
        _, image, label = eval_sample(ds, index, "shortside", 32)
        want = (32, int(h * 32 / w)) if w <= h else (int(w * 32 / h), 32)
        assert image.shape == (want[1], want[0], 3) and label.shape == (want[1], want[0])
        if min(w, h) >= 32:
            _, image, label = eval_sample(ds, index, "native")
            np.testing.assert_array_equal(image, np.asarray(img))
            np.testing.assert_array_equal(label, np.asarray(target))
        else:
            with pytest.raises(UsageError, match=rf"{path} is {w}x{h}: .*at least 32x32.*remove {image_id} from "):
                eval_sample(ds, index, "native")


def test_native_protocol_refuses_a_small_image_before_writing(small_tree, tmp_path, capsys, tiny_ckpt):
    ev = ["--checkpoints", shutil.copy(tiny_ckpt("baseline", 0), tmp_path / "m.pt"), "--data", "voc", "--voc-root",
          small_tree, "--workers", "0", "--severities", "0", "5", "--corruptions", "all", "held_out"]
    assert run_script(evaluate_corruptions, *ev, "--protocol", "native", "--save-predictions", tmp_path / "pred",
                      "--out", tmp_path / "native") == 2
    line = one_error_line(capsys, warnings=True)
    assert "small_1x1.jpg is 1x1" in line and "at least 32x32" in line and "--protocol paper or shortside" in line
    assert [f for f in files_under(tmp_path) if f != "m.pt" and not f.endswith(".lock")] == []
    assert run_script(dump_voc_c, "--data", "voc", "--voc-root", small_tree, "--protocol", "native", "--corruptions",
                      "jpeg", "--severities", "1", "--out", tmp_path / "vocc") == 2
    assert "small_1x1.jpg is 1x1" in one_error_line(capsys, warnings=True) and not (tmp_path / "vocc").exists()
    # The other protocols take every image: all 19 corruptions at severity 5 on the 32x32 inputs of "paper"; on
    # the up to 32x2133 ones of "shortside" one or two of each group (every one of them: the test above).
    for protocol, corruptions in (("paper", ALL_CORRUPTIONS),
                                  ("shortside", ["impulse_noise", "glass_blur", "motion_blur", "snow", "frost",
                                                 "elastic_transform", "pixelate", "spatter"])):
        # (this tree's train split lists val images: no temperature fit, which refuses that)
        args = ev[:-2] + list(corruptions) + ["--protocol", protocol, "--size", "32", "--out", tmp_path / protocol,
                                              "--calibration-images", "0"]
        assert run_script(evaluate_corruptions, *args) == 0, capsys.readouterr().err[-2000:]
        rows = evaluate_corruptions.read_metrics(tmp_path / protocol / "metrics.jsonl")
        assert len(rows) == 1 + len(corruptions) and {r["images"] for r in rows} == {len(SMALL) + 5}
        assert all(0 <= r["miou"] <= 1 for r in rows)


def oracle_crop(img, target, p, c):
    """Resize the whole image, pad right/bottom (0 / 255), crop: the transform's definition (as test_data.py)."""
    new_w, new_h = p["size"]
    full = np.asarray(img.resize((new_w, new_h), Image.BILINEAR))
    lab = np.asarray(target.resize((new_w, new_h), Image.NEAREST))
    image = np.zeros((max(new_h, c), max(new_w, c), 3), np.uint8)
    label = np.full(image.shape[:2], IGNORE_INDEX, np.uint8)
    image[:new_h, :new_w], label[:new_h, :new_w] = full, lab
    t, left = p["top"], p["left"]
    return image[t:t + c, left:left + c], label[t:t + c, left:left + c]


@pytest.mark.parametrize("w,h", SMALL)
def test_training_crops_of_the_smallest_images(w, h):
    rng = np.random.default_rng(w * 1000 + h)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    target = Image.fromarray(rng.choice(np.array([0, 7, 15, IGNORE_INDEX], np.uint8), (h, w)), mode="L")
    for crop in (32, 48):
        tf = TrainTransform(crop)
        for seed in range(4):
            torch.manual_seed(seed)
            p = tf.get_params(w, h)
            got_i, got_l = tf.crop(img, target, p)
            want_i, want_l = oracle_crop(img, target, p, crop)
            assert got_i.shape == (crop, crop, 3) and got_l.shape == (crop, crop)
            assert np.abs(got_i.astype(int) - want_i.astype(int)).max() <= 1
            assert (got_l != want_l).mean() < 0.01
            assert set(np.unique(got_l)) <= {0, 7, 15, IGNORE_INDEX}
            x, y = tf(img, target)
            assert x.shape == (3, crop, crop) and x.dtype == torch.float32 and torch.isfinite(x).all()
        # Validation while training: short side ``crop``, long side truncated, as "shortside".
        x, y = ShortSideTransform(crop)(img, target)
        assert tuple(y.shape) == ((int(h * crop / w), crop) if w <= h else (crop, int(w * crop / h)))


def test_train_with_the_smallest_images_in_both_splits(small_tree, tmp_path, capsys):
    args = TINY_TRAIN + ["--data", "voc", "--voc-root", small_tree, "--sbd-root", tmp_path / "sbd",
                         "--pretrained-backbone", "none", "--model", "scribe", "--epochs", "1", "--crop-size", "32",
                         "--out", tmp_path / "runs"]
    shutil.copytree(small_tree.parent / "synthetic" / "sbd", tmp_path / "sbd")
    assert run_script(train, *args) == 0, capsys.readouterr().err[-2000:]
    assert (tmp_path / "runs" / "scribe" / "checkpoint.pt").exists()


# ------------------------------------------------------------------------------------- names that become paths

def test_checkpoint_name_that_climbs_out_writes_nothing_anywhere(world, tmp_path, capsys):
    evil = tiny_checkpoint(tmp_path / "evil.pt", "ibe", 0, name="../../escaped_model")
    before = files_under(tmp_path.parent)
    line = refused(capsys, evaluate_corruptions, "--checkpoints", evil, "--data", "synthetic", "--synthetic-root",
                   world / "synthetic", "--size", "32", "--workers", "0", "--corruptions", "jpeg", "--severities",
                   "0", "1", "--out", tmp_path / "a" / "b" / "out")
    assert f"checkpoint {evil}" in line and "'../../escaped_model'" in line
    assert files_under(tmp_path.parent) == before


def test_train_name_must_be_a_plain_name(world, tmp_path):
    with pytest.raises(UsageError, match=r"--name: the name '\.\./x'"):
        run_tiny_train(str(world / "synthetic"), tmp_path / "runs", "--model", "ibe", "--name", "../x")
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------- damaged checkpoints

@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """A real train.py checkpoint (one epoch of the tiny model), the source of every damaged copy."""
    out = tmp_path_factory.mktemp("trained")
    run_tiny_train(str(world / "synthetic"), out, "--model", "ibe", "--epochs", "1")
    return out / "ibe" / "checkpoint.pt"


def damaged(source, case):
    """The bytes of checkpoint ``source`` damaged in one way, and words its error message must hold."""
    good = source.read_bytes()
    ck = torch.load(source, map_location="cpu", weights_only=True)

    def saved(obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    def config(**kw):
        return saved({**ck, "model_config": {**ck["model_config"], **kw}})

    def npy():
        buf = io.BytesIO()
        np.save(buf, np.zeros(3))
        return buf.getvalue()

    cases = {   # built on demand: each is a full copy of the weights
        "truncated": (lambda: good[: len(good) // 2], "truncated"),
        "zero bytes": (lambda: b"", "empty"),
        "text file": (lambda: b"not a checkpoint\n" * 20, "unreadable"),
        "numpy file": (npy, "unreadable"),
        "bare state dict": (lambda: saved(ck["model"]), "no model_config"),
        "no model": (lambda: saved({k: v for k, v in ck.items() if k != "model"}), "no model_config"),
        "model is a list": (lambda: saved({**ck, "model": [1, 2]}), "expected two dicts"),
        "no ibe_placement": (lambda: saved({**ck, "model_config": {k: v for k, v in ck["model_config"].items()
                                                                 if k != "ibe_placement"}}), "no ibe_placement"),
        "unknown kind": (lambda: config(kind="unet"), "unknown model kind 'unet'"),
        "unknown arch": (lambda: config(arch="fcn"), "unknown --arch 'fcn'"),
        "unknown backbone": (lambda: config(backbone="resnet9"), "unknown --backbone 'resnet9'"),
        "head_channels as text": (lambda: config(head_channels="8"), "describes no model"),
        "config asks for other weights": (lambda: config(pretrained_backbone="/etc/passwd"),
                                          "does not know (pretrained_backbone"),
        "shapes do not fit the config": (lambda: config(head_channels=16), "size mismatch"),
        "float16 weights": (lambda: saved({**ck, "model": {k: v.half() if v.is_floating_point() else v
                                                           for k, v in ck["model"].items()}}), "torch.float16"),
        "stored name climbs out": (lambda: saved({**ck, "name": "../../escaped_model"}), "escaped_model"),
    }
    make, needle = cases[case]
    return make(), needle


CASES = ["truncated", "zero bytes", "text file", "numpy file", "bare state dict", "no model", "model is a list",
         "no ibe_placement", "unknown kind", "unknown arch", "unknown backbone", "head_channels as text", "config asks for other weights",
         "shapes do not fit the config", "float16 weights", "stored name climbs out"]


@pytest.mark.parametrize("case", CASES)
def test_damaged_checkpoint_is_one_line_through_evaluate_and_make_video(world, tmp_path, case, capsys):
    data, needle = damaged(world / "good.pt", case)   # as train.py writes it, less the optimizer state
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data)
    with pytest.raises(UsageError, match=re.escape(needle)):
        load_model(str(bad))
    ev = ["--checkpoints", bad, "--data", "synthetic", "--synthetic-root", world / "synthetic",
          "--size", "32", "--workers", "0", "--corruptions", "jpeg", "--severities", "1", "--out", tmp_path / "out"]
    vid = ["--synthetic", "--frames", "2", "--size", "32", "--device", "cpu", "--baseline", bad,
           "--robust", world / "good.pt", "--out", tmp_path / "demo.mp4"]
    for module, argv in ((evaluate_corruptions, ev), (make_video, vid)):
        assert run_script(module, *argv) == 2
        line = one_error_line(capsys, warnings=True)
        assert f"checkpoint {bad}" in line and needle in line, line
        if case != "stored name climbs out":
            assert "train.py" in line, line   # what to do: the command that rewrites it
    assert bad.read_bytes() == data and files_under(tmp_path) == ["bad.pt"]


RESUME_CASES = {"truncated": "truncated", "zero bytes": "empty", "text file": "unreadable",
                "bare state dict": "no model_config", "stored name climbs out": "escaped_model",
                "no optimizer": "has no optimizer", "weights of another shape": "size mismatch",
                "optimizer of another model": "cannot resume", "settings of another run": "--backbone resnet9",
                "settings not recorded": "records no --crop-size"}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_damaged_checkpoint_is_one_line_through_train_resume(world, trained, tmp_path, case, capsys):
    ck = torch.load(trained, map_location="cpu", weights_only=True)
    first = next(iter(ck["model"]))
    variants = {
        "no optimizer": {k: v for k, v in ck.items() if k != "optimizer"},
        "weights of another shape": {**ck, "model": {**ck["model"], first: torch.zeros(3, 3)}},
        "optimizer of another model": {**ck, "optimizer": {**ck["optimizer"], "param_groups": []}},
        "settings of another run": {**ck, "args": {**ck["args"], "backbone": "resnet9"}},
        "settings not recorded": {**ck, "args": {k: v for k, v in ck["args"].items() if k != "crop_size"}},
    }
    path = tmp_path / "runs" / "ibe" / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    if case in variants:
        torch.save(variants[case], path)
    else:
        path.write_bytes(damaged(trained, case)[0])
    data = path.read_bytes()
    args = TINY_TRAIN + ["--synthetic-root", world / "synthetic", "--model", "ibe", "--epochs", "1", "--resume",
                         "--out", tmp_path / "runs"]
    assert run_script(train, *args) == 2
    line = one_error_line(capsys, warnings=True)
    assert str(path) in line and RESUME_CASES[case] in line, line
    assert path.read_bytes() == data and files_under(tmp_path / "runs") == ["ibe/checkpoint.pt"]


def test_a_damaged_checkpoint_through_the_real_command_line(world, trained, tmp_path):
    # Exit status and the absence of a traceback as a user's shell sees them (evaluate_corruptions.py's: in
    # test_error_lines.py).
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(damaged(trained, "truncated")[0])
    r = cli("make_video.py", "--synthetic", "--frames", "2", "--size", "32", "--baseline", str(bad),
            "--robust", str(world / "good.pt"), "--out", str(tmp_path / "demo.mp4"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert str(bad) in lines[0] and "train.py" in lines[0]
    assert files_under(tmp_path) == ["truncated.pt"]

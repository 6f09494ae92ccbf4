"""The dataset adapters (common/datasets) end to end on synthetic data in each real layout
(common/synthetic_layouts), their label mappings against the published definitions typed here by hand, and
their refusals."""
import os
import re
import shutil

import numpy as np
import pytest
import torchvision
from PIL import Image

from common.cli import UsageError
from common.datasets import DATASETS, check_structure, dataset_spec
from common.datasets import acdc, ade20k, cityscapes
from common.synthetic_layouts import ensure_layout

# --------------------------------------------------------------------------------------------------
# The published definitions, typed from the sources (not from the code under test).

# cityscapesScripts, cityscapesscripts/helpers/labels.py: (id, name, trainId) of some rows, void ones included.
CITYSCAPES_ROWS = [
    (0, "unlabeled", 255), (1, "ego vehicle", 255), (2, "rectification border", 255), (3, "out of roi", 255),
    (4, "static", 255), (5, "dynamic", 255), (6, "ground", 255), (7, "road", 0), (8, "sidewalk", 1),
    (9, "parking", 255), (10, "rail track", 255), (11, "building", 2), (12, "wall", 3), (13, "fence", 4),
    (14, "guard rail", 255), (15, "bridge", 255), (16, "tunnel", 255), (17, "pole", 5), (18, "polegroup", 255),
    (19, "traffic light", 6), (20, "traffic sign", 7), (21, "vegetation", 8), (22, "terrain", 9), (23, "sky", 10),
    (24, "person", 11), (25, "rider", 12), (26, "car", 13), (27, "truck", 14), (28, "bus", 15),
    (29, "caravan", 255), (30, "trailer", 255), (31, "train", 16), (32, "motorcycle", 17), (33, "bicycle", 18),
]
CITYSCAPES_19 = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                 "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                 "bicycle"]
# objectInfo150.csv (CSAILVision/sceneparsing): (Idx, first name of the "Name" column) of some rows.
ADE_ROWS = [(1, "wall"), (2, "building"), (3, "sky"), (4, "floor"), (13, "person"), (21, "car"),
            (45, "chest of drawers"),
            (57, "pool table"), (91, "airplane"), (117, "minibike"), (128, "bicycle"), (137, "traffic light"),
            (142, "crt screen"), (150, "flag")]


def cityscapes_oracle(raw):
    """labelIds -> trainIds from the typed table above."""
    table = {i: t for i, _, t in CITYSCAPES_ROWS}
    out = np.full(raw.shape, 255, np.uint8)
    for i, t in table.items():
        out[raw == i] = t
    return out


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The four synthetic layouts at their defaults (2 train, 3 val images), made once for this module."""
    base = tmp_path_factory.mktemp("layouts")
    return {name: ensure_layout(name, base / name, quiet=True) for name in ("cityscapes", "ade20k", "acdc", "folder")}


def _pixels(path):
    return np.asarray(Image.open(path))


# --------------------------------------------------------------------------------------------------
# Label definitions


def test_cityscapes_table_is_the_published_one():
    assert cityscapes.label_to_train_id(np.array([i for i, _, _ in CITYSCAPES_ROWS])).tolist() == \
        [t for _, _, t in CITYSCAPES_ROWS]
    assert list(cityscapes.CLASSES) == CITYSCAPES_19
    plate = [row for row in cityscapes.LABELS if row[0] == "license plate"]
    assert len(plate) == 1 and plate[0][1] == -1 and plate[0][2] == -1   # no id in the ground truth: never read
    assert len(cityscapes.LABELS) == 35
    # ids 34..255 are not Cityscapes labels: ignored by the map, refused by the loader (test below)
    assert (cityscapes.label_to_train_id(np.arange(34, 256)) == 255).all()
    assert not cityscapes.VALID_IDS[34:].any() and cityscapes.VALID_IDS[:34].all()


def test_cityscapes_table_matches_torchvisions_copy():
    """torchvision ships its own copy of the same table: every row, colours included."""
    ours = {(name, i, t, tuple(colour)) for name, i, t, colour in cityscapes.LABELS}
    theirs = {(c.name, c.id, c.train_id, tuple(c.color)) for c in torchvision.datasets.Cityscapes.classes}
    assert ours == theirs


def test_cityscapes_palette_is_the_train_id_colours():
    spec = DATASETS["cityscapes"]
    assert spec.palette.shape == (19, 3) and spec.palette.dtype == np.uint8
    assert spec.palette[0].tolist() == [128, 64, 128]     # road
    assert spec.palette[13].tolist() == [0, 0, 142]       # car
    assert spec.palette[18].tolist() == [119, 11, 32]     # bicycle
    assert spec.colorize(np.array([[255, 10]])).tolist() == [[[255, 255, 255], [70, 130, 180]]]


def test_ade20k_names_and_shift():
    assert len(ade20k.CLASSES) == 150 and len(set(ade20k.CLASSES)) == 150
    for idx, name in ADE_ROWS:
        assert ade20k.CLASSES[idx - 1] == name, idx
    mapped = ade20k.raw_to_train_id(np.arange(151))
    assert mapped[0] == 255 and mapped[1:].tolist() == list(range(150))
    assert DATASETS["ade20k"].palette.shape == (150, 3)


def test_specs():
    assert [DATASETS[n].num_classes for n in ("voc", "cityscapes", "ade20k", "acdc")] == [21, 19, 150, 19]
    assert [DATASETS[n].has_background for n in ("voc", "cityscapes", "ade20k", "acdc")] == [True, False, False, False]
    assert all(DATASETS[n].ignore_index == 255 for n in DATASETS)
    assert DATASETS["voc"].palette[1].tolist() == [128, 0, 0]   # VOC's class 1, aeroplane
    with pytest.raises(UsageError, match="expected one of voc, cityscapes, ade20k, acdc, folder"):
        dataset_spec("kitti")


# --------------------------------------------------------------------------------------------------
# End to end on the synthetic layouts


def test_cityscapes_end_to_end(layouts):
    root = layouts["cityscapes"]
    ds = dataset_spec("cityscapes").eval_dataset(root, "val")
    assert isinstance(ds, torchvision.datasets.Cityscapes)
    # the files, found independently
    stems = sorted(n[: -len("_leftImg8bit.png")] for _, _, files in os.walk(os.path.join(root, "leftImg8bit", "val"))
                   for n in files)
    assert ds.ids == stems and len(stems) == 3
    assert all(re.fullmatch(r"[a-z]+_\d{6}_\d{6}", i) for i in ds.ids)
    seen = set()
    for k, i in enumerate(ds.ids):
        city = i.split("_")[0]
        img, label = ds[k]
        assert img.mode == "RGB" and label.mode == "L"
        raw = _pixels(os.path.join(root, "gtFine", "val", city, f"{i}_gtFine_labelIds.png"))
        assert np.array_equal(np.asarray(label), cityscapes_oracle(raw))
        assert np.array_equal(np.asarray(img), _pixels(os.path.join(root, "leftImg8bit", "val", city,
                                                                    f"{i}_leftImg8bit.png")))
        seen |= set(np.unique(raw).tolist())
    # the synthetic labels hold ids that map to 255 and ids that map to classes
    assert seen & {0, 1, 4, 9, 14} and seen & {7, 11, 23, 26}
    assert len(dataset_spec("cityscapes").eval_dataset(root, "train")) == 2


def test_ade20k_end_to_end(layouts):
    root = layouts["ade20k"]
    ds = dataset_spec("ade20k").eval_dataset(root, "val")
    base = os.path.join(root, "ADEChallengeData2016")
    assert ds.ids == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]
    sizes = set()
    for k, i in enumerate(ds.ids):
        img, label = ds[k]
        raw = _pixels(os.path.join(base, "annotations", "validation", i + ".png")).astype(int)
        assert (raw == 0).any()
        expected = np.where(raw == 0, 255, raw - 1)
        assert np.array_equal(np.asarray(label), expected)
        assert np.array_equal(np.asarray(img), _pixels(os.path.join(base, "images", "validation", i + ".jpg")))
        sizes.add(img.size)
    assert len(sizes) > 1   # ADE20K's sizes vary
    # the ADEChallengeData2016 folder itself is accepted as the root too
    assert dataset_spec("ade20k").eval_dataset(base, "train").ids == ["ADE_train_00000001", "ADE_train_00000002"]


def test_acdc_end_to_end_per_condition(layouts):
    root = layouts["acdc"]
    spec = dataset_spec("acdc")
    everything = spec.eval_dataset(root, "val")
    assert len(everything) == 12 and everything.conditions == ["fog"] * 3 + ["night"] * 3 + ["rain"] * 3 + ["snow"] * 3
    night = spec.eval_dataset(root, "val", conditions="night")
    assert night.conditions == ["night"] * 3 and everything.indices("night") == [3, 4, 5]
    for k, i in enumerate(night.ids):
        assert re.fullmatch(r"GOPR\d{4}_frame_\d{6}", i)
        img, label = night[k]
        seq = i.split("_frame_")[0]
        raw = _pixels(os.path.join(root, "gt", "night", "val", seq, f"{i}_gt_labelIds.png"))
        assert np.array_equal(np.asarray(label), cityscapes_oracle(raw))
        assert np.array_equal(np.asarray(img), _pixels(os.path.join(root, "rgb_anon", "night", "val", seq,
                                                                    f"{i}_rgb_anon.png")))
    assert spec.eval_dataset(root, "val", conditions=["snow", "fog"]).conditions == ["fog"] * 3 + ["snow"] * 3
    with pytest.raises(UsageError, match="expected one or more of fog, night, rain, snow"):
        spec.eval_dataset(root, "val", conditions="dusk")


def test_folder_end_to_end(layouts):
    root = layouts["folder"]
    spec = dataset_spec("folder", root)
    assert spec.classes == ("background", "disc", "square", "bar", "ring", "cross") and spec.has_background
    assert spec.palette[1].tolist() == [230, 60, 40]   # from palette.txt
    ds = spec.eval_dataset(root, "val")
    assert ds.ids == ["val_0000", "val_0001", "val_0002"]
    for k, i in enumerate(ds.ids):
        _, label = ds[k]
        assert np.array_equal(np.asarray(label), _pixels(os.path.join(root, "labels", i + ".png")))
    check_structure(spec, "scribe")   # a background class: allowed


def test_voc_adapter_is_torchvisions_voc(tiny_data):
    root = os.path.join(tiny_data, "voc")
    ds = dataset_spec("voc").eval_dataset(root, "val")
    tv = torchvision.datasets.VOCSegmentation(root, year="2012", image_set="val")
    with open(os.path.join(root, "VOCdevkit", "VOC2012", "ImageSets", "Segmentation", "val.txt")) as f:
        assert ds.ids == f.read().split()
    assert len(ds) == len(tv) == 3
    for k in range(len(ds)):
        (img, label), (img_tv, label_tv) = ds[k], tv[k]
        assert np.array_equal(np.asarray(img), np.asarray(img_tv.convert("RGB")))
        assert np.array_equal(np.asarray(label), np.asarray(label_tv))


# --------------------------------------------------------------------------------------------------
# Structures and refusals


@pytest.mark.parametrize("name", ["cityscapes", "ade20k", "acdc"])
@pytest.mark.parametrize("kind", ["ibe", "scribe"])
def test_background_structures_refused_without_background(name, kind):
    with pytest.raises(UsageError) as e:
        check_structure(dataset_spec(name), kind)
    msg = str(e.value)
    assert "\n" not in msg and "background" in msg and "--model baseline" in msg
    check_structure(dataset_spec(name), "baseline")
    check_structure(dataset_spec("voc"), kind)


def test_folder_without_background_refuses_ibe(tmp_path, layouts):
    root = tmp_path / "f"
    shutil.copytree(layouts["folder"], root)
    (root / "classes.txt").write_text("road\ncar\nsky\nperson\ntree\nsign\n")
    spec = dataset_spec("folder", str(root))
    assert not spec.has_background
    with pytest.raises(UsageError, match="needs a background class"):
        check_structure(spec, "ibe")


def test_missing_roots_are_one_line(tmp_path):
    for name in ("cityscapes", "ade20k", "acdc"):
        with pytest.raises(UsageError, match="missing .*expected") as e:
            dataset_spec(name).eval_dataset(str(tmp_path), "val")
        assert "\n" not in str(e.value) and "synthetic_layouts" in str(e.value)
    with pytest.raises(UsageError, match="unknown split 'test'"):
        dataset_spec("cityscapes").eval_dataset(str(tmp_path), "test")
    with pytest.raises(UsageError, match="not a folder"):
        dataset_spec("folder", str(tmp_path / "nowhere"))


def _cityscapes_copy(tmp_path, layouts):
    root = tmp_path / "cs"
    shutil.copytree(layouts["cityscapes"], root)
    val = dataset_spec("cityscapes").eval_dataset(str(root), "val")
    return root, val.images[0], val.targets[0][0]


def test_bad_cityscapes_labels_are_refused_naming_the_file(tmp_path, layouts):
    root, image, label = _cityscapes_copy(tmp_path, layouts)
    raw = _pixels(label).copy()
    spec = dataset_spec("cityscapes")
    # a labelTrainIds file put where the labelIds belong: 255 is not a labelId
    Image.fromarray(cityscapes_oracle(raw)).save(label)
    with pytest.raises(UsageError, match=r"label .*gtFine_labelIds.png holds values \[255\]"):
        spec.eval_dataset(str(root), "val")[0]
    # the colour visualisation
    Image.fromarray(np.stack([raw] * 3, -1)).save(label)
    with pytest.raises(UsageError, match="single-channel"):
        spec.eval_dataset(str(root), "val")[0]
    # a label of another size
    Image.fromarray(raw[:, :-1].copy()).save(label)
    with pytest.raises(UsageError, match="must match"):
        spec.eval_dataset(str(root), "val")[0]
    # a truncated image
    data = open(image, "rb").read()
    Image.fromarray(raw).save(label)
    with open(image, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(UsageError, match="cannot read image .*leftImg8bit.png"):
        spec.eval_dataset(str(root), "val")[0]
    # no label at all
    os.remove(label)
    with pytest.raises(UsageError, match="no labelIds file"):
        spec.eval_dataset(str(root), "val")


def test_ade20k_value_above_150_refused(tmp_path, layouts):
    root = tmp_path / "ade"
    shutil.copytree(layouts["ade20k"], root)
    ds = dataset_spec("ade20k").eval_dataset(str(root), "val")
    raw = _pixels(ds.targets[1]).copy()
    raw[0, 0] = 151
    Image.fromarray(raw).save(ds.targets[1])
    ds[0]
    with pytest.raises(UsageError, match=r"holds values \[151\] that are not ADE20K class ids \(expected 0..150\)"):
        ds[1]


def test_folder_bad_files(tmp_path, layouts):
    root = tmp_path / "f"
    shutil.copytree(layouts["folder"], root)
    (root / "classes.txt").write_text("background\n\ncar\n")
    with pytest.raises(UsageError, match="line 2 is blank"):
        dataset_spec("folder", str(root))
    (root / "classes.txt").write_text("background\ncar\ncar\n")
    with pytest.raises(UsageError, match="'car' twice"):
        dataset_spec("folder", str(root))
    (root / "classes.txt").write_text("background\ncar\n")
    with pytest.raises(UsageError, match="palette file .*expected 2 lines"):
        dataset_spec("folder", str(root))
    os.remove(root / "palette.txt")
    spec = dataset_spec("folder", str(root))
    assert spec.palette.tolist() == [[128, 0, 0], [0, 128, 0]]   # generated: VOC colours of indices 1, 2
    with pytest.raises(UsageError, match=r"holds values \[.*\] that are not folder class ids"):
        spec.eval_dataset(str(root), "val")[0]   # labels hold classes 2..5, which this classes.txt lacks


# --------------------------------------------------------------------------------------------------
# The synthetic layouts themselves


def test_synthetic_layouts_are_deterministic_and_written_once(tmp_path):
    a = ensure_layout("acdc", tmp_path / "a", n_train=1, n_val=1, quiet=True)
    b = ensure_layout("acdc", tmp_path / "b", n_train=1, n_val=1, quiet=True)
    files = sorted(os.path.relpath(os.path.join(d, n), a) for d, _, ns in os.walk(a) for n in ns)
    assert files == sorted(os.path.relpath(os.path.join(d, n), b) for d, _, ns in os.walk(b) for n in ns)
    for rel in files:
        assert open(os.path.join(a, rel), "rb").read() == open(os.path.join(b, rel), "rb").read(), rel
    stamp = os.path.join(a, "synthetic.json")
    before = os.stat(stamp).st_mtime_ns
    ensure_layout("acdc", tmp_path / "a", n_train=1, n_val=1, quiet=True)
    assert os.stat(stamp).st_mtime_ns == before                     # same arguments: nothing rewritten
    ensure_layout("acdc", tmp_path / "a", n_train=1, n_val=2, quiet=True)
    assert len(dataset_spec("acdc").eval_dataset(a, "val", conditions="fog")) == 2   # other arguments: replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UsageError, match="is not a synthetic dataset"):
        ensure_layout("cityscapes", tmp_path / "mine", quiet=True)
    with pytest.raises(UsageError, match="sizes >= 32"):
        ensure_layout("cityscapes", tmp_path / "c", height=16, quiet=True)


def test_the_evaluation_protocols_take_the_new_datasets(layouts):
    """common.data.eval_sample (what the sweep corrupts and scores) on a Cityscapes item: the id without the
    _leftImg8bit suffix (it seeds the corruption), the native pixels, and the paper's 224 x 224 resize of the
    mapped label (Pillow's nearest on the raw label, then the typed map: nearest resampling commutes with it)."""
    from common.data import eval_sample
    root = layouts["cityscapes"]
    ds = dataset_spec("cityscapes").eval_dataset(root, "val")
    raw_path = os.path.join(root, "gtFine", "val", "frankfurt", "frankfurt_000000_000019_gtFine_labelIds.png")
    name, image, label = eval_sample(ds, 0, "native")
    assert name == "frankfurt_000000_000019"
    assert image.shape == (32, 64, 3) and np.array_equal(label, cityscapes_oracle(_pixels(raw_path)))
    name, image, label = eval_sample(ds, 0, "paper", 224)
    resized = np.asarray(Image.open(raw_path).resize((224, 224), Image.NEAREST))
    assert image.shape == (224, 224, 3) and np.array_equal(label, cityscapes_oracle(resized))

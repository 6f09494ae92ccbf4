"""dump_voc_c.py: pixels equal imagecorruptions.corrupt under the seed rule; resumable; parallel = serial."""
import glob
import hashlib
import io
import json
import os
import zlib

import imagecorruptions
import numpy as np
import pytest
from PIL import Image

import dump_voc_c
from common.corruptions import CORRUPTIONS
from common.data import eval_sample, voc_dataset
from common.vocc import png_bytes
from helpers import cli, refused, run_script

SIZE = 40


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


def dump(data, out, *extra):
    args = dump_voc_c.get_args_parser().parse_args(
        ["--data", "synthetic", "--synthetic-root", data, "--out", str(out), "--size", str(SIZE), *extra])
    return dump_voc_c.main(args)


def tree(root):
    return {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, fs in os.walk(root) for f in fs if f.endswith(".png")}


def test_imagecorruptions_code_equals_imagecorruptions_directly(data, tmp_path):
    dump(data, tmp_path, "--corruptions", "all", "--limit", "2", "--corruption-code", "imagecorruptions")
    ds = voc_dataset(os.path.join(data, "voc"), "val")
    for index in range(2):
        image_id, image, label = eval_sample(ds, index, "paper", SIZE)
        # The label is the nearest-resized VOC label, stored losslessly.
        assert np.array_equal(np.array(Image.open(tmp_path / "labels" / f"{image_id}.png")), label)
        for c in CORRUPTIONS:
            for s in range(1, 6):
                # The oracle: docs/protocol.md's seed rule applied to the library by hand.
                seed = zlib.crc32(f"{image_id}|{c}|{s}".encode())
                np.random.seed(seed)
                kw = {"seed": seed} if c in ("impulse_noise", "glass_blur") else {}
                want = np.uint8(imagecorruptions.corrupt(image.copy(), corruption_name=c, severity=s, **kw))
                path = tmp_path / c / str(s) / f"{image_id}.png"
                got = np.array(Image.open(path))
                assert np.array_equal(got, want), (c, s)
                assert path.read_bytes() == png_bytes(want), (c, s)


def test_two_workers_equal_one_and_resume_repairs_torn_files(data, tmp_path):
    dump(data, tmp_path / "w1", "--corruptions", "motion", "snow", "--severities", "1", "4", "--workers", "1")
    dump(data, tmp_path / "w2", "--corruptions", "motion", "snow", "--severities", "1", "4", "--workers", "2")
    a, b = tree(tmp_path / "w1"), tree(tmp_path / "w2")
    assert a == b and len(a) == 3 * 4 + 3
    # A torn file (as a kill mid-write would leave under a temp name... or a damaged disk) is redone;
    # intact files are not rewritten.
    victim = tmp_path / "w1" / "snow" / "4" / sorted(os.listdir(tmp_path / "w1" / "snow" / "4"))[0]
    victim.write_bytes(victim.read_bytes()[:50])
    keep = tmp_path / "w1" / "motion_blur" / "1" / sorted(os.listdir(tmp_path / "w1" / "motion_blur" / "1"))[0]
    mtime = keep.stat().st_mtime_ns
    dump(data, tmp_path / "w1", "--corruptions", "motion", "snow", "--severities", "1", "4")
    assert tree(tmp_path / "w1") == b
    assert keep.stat().st_mtime_ns == mtime


def test_all_corruptions_with_several_workers_finish_and_equal_one_worker(data, tmp_path):
    # The script's own docstring command. Image 0 runs in this process and uses OpenCV's thread pool; workers forked
    # after that used to deadlock in cv2.setNumThreads and the dump never finished. A hang fails here as a timeout.
    flags = ["--data", "synthetic", "--synthetic-root", data, "--size", str(SIZE), "--corruptions", "all"]
    run = cli("dump_voc_c.py", *flags, "--workers", "3", "--out", str(tmp_path / "w3"), timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    dump(data, tmp_path / "w1", "--corruptions", "all")
    a = tree(tmp_path / "w3")
    assert a == tree(tmp_path / "w1") and len(a) == 3 * (15 * 5 + 1)


def test_verify_passes_and_catches_a_changed_file(data, tmp_path, capsys):
    dump(data, tmp_path, "--corruptions", "gaussian", "--severities", "2")
    verify = ["--data", "synthetic", "--synthetic-root", data, "--out", tmp_path, "--size", SIZE,
              "--corruptions", "gaussian", "--severities", "2", "--verify"]
    capsys.readouterr()
    assert run_script(dump_voc_c, *verify) == 0
    assert "3 of 3" in capsys.readouterr().out
    f = next((tmp_path / "gaussian_noise" / "2").iterdir())
    arr = np.array(Image.open(f))
    arr[0, 0] ^= 1
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    f.write_bytes(buf.getvalue())
    assert run_script(dump_voc_c, *verify) == 1     # the exit status of `python dump_voc_c.py --verify`
    assert "MISMATCH" in capsys.readouterr().err


def test_manifest_records_protocol_and_refuses_another(data, tmp_path, capsys):
    dump(data, tmp_path, "--corruptions", "jpeg", "--severities", "1", "--limit", "1")
    import json
    m = json.load(open(tmp_path / "manifest.json"))
    assert m["protocol"] == "paper" and m["size"] == SIZE and m["images"] == {"jpeg_compression/1": 1}
    assert m["versions"]["imagecorruptions-imaug"] and "crc32" in m["seed_rule"]
    assert "size" in refused(capsys, dump_voc_c, "--data", "synthetic", "--synthetic-root", data, "--out", tmp_path,
                             "--size", "64", "--corruptions", "jpeg", "--severities", "1")


@pytest.mark.parametrize("flags,needle", [
    (["--corruptions", "rain"], "rain"),
    (["--severities", "7"], "7"),
    (["--severities", "0"], "clean"),
    (["--workers", "0"], "--workers"),
])
def test_bad_flags_are_one_line_exit_2(data, tmp_path, flags, needle, capsys):
    assert needle in refused(capsys, dump_voc_c, "--data", "synthetic", "--synthetic-root", data,
                             "--out", tmp_path / "o", *flags)
    assert not os.path.exists(tmp_path / "o" / "manifest.json")


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 13, 3), (40, 40, 3), (224, 224, 3)])
def test_png_encoder_is_lossless_for_two_independent_decoders(shape):
    import cv2

    from common.vocc import rgb_png
    rng = np.random.default_rng(shape[1])
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    a[0] = 255                                  # extremes next to each other: the up filter wraps mod 256
    a[-1, ::2] = 0
    data = rgb_png(a)
    assert data == rgb_png(a.copy())            # the same bytes for the same pixels
    assert np.array_equal(np.array(Image.open(io.BytesIO(data))), a)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(bgr[..., ::-1], a)
    Image.open(io.BytesIO(data)).verify()       # chunk CRCs
    with pytest.raises(ValueError):
        rgb_png(a.astype(np.float32))


# ------------------------------------------------------------------------------ other datasets, presets

IMAGENET_C_15 = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                 "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                 "jpeg_compression"]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Small synthetic Cityscapes (64 x 32), ADE20K (32..72 px a side) and ACDC in their real layouts."""
    from common.synthetic_layouts import ensure_layout
    base = tmp_path_factory.mktemp("layouts")
    return {"cityscapes": ensure_layout("cityscapes", base / "cityscapes", width=64, height=32, quiet=True),
            "ade20k": ensure_layout("ade20k", base / "ade20k", quiet=True),
            "acdc": ensure_layout("acdc", base / "acdc", quiet=True)}


def dump_data(layouts, name, out, *extra):
    args = dump_voc_c.get_args_parser().parse_args(
        ["--data", name, f"--{name}-root", layouts[name], "--out", str(out), *map(str, extra)])
    return dump_voc_c.main(args)


def library_corrupt(image, image_id, c, s):
    """docs/protocol.md's seed rule applied to imagecorruptions by hand (--corruption-code imagecorruptions)."""
    seed = zlib.crc32(f"{image_id}|{c}|{s}".encode())
    np.random.seed(seed)
    kw = {"seed": seed} if c in ("impulse_noise", "glass_blur") else {}
    return np.uint8(imagecorruptions.corrupt(image.copy(), corruption_name=c, severity=s, **kw))


def conditions_on_disk(out):
    return {(c, int(s)) for c in os.listdir(out) if os.path.isdir(os.path.join(out, c)) and c != "labels"
            for s in os.listdir(os.path.join(out, c))}


def test_cityscapes_dump_is_the_library_on_the_full_size_image(layouts, tmp_path):
    # --protocol native: the very PNG under leftImg8bit, at its own 64 x 32, corrupted; ids without the suffix.
    conditions = [("glass_blur", 2), ("gaussian_noise", 3), ("contrast", 5)]
    assert dump_data(layouts, "cityscapes", tmp_path, "--protocol", "native", "--corruption-code", "imagecorruptions",
                     "--corruptions", "glass_blur", "gaussian_noise", "contrast", "--severities", "2", "3", "5") == 0
    images = sorted(glob.glob(os.path.join(layouts["cityscapes"], "leftImg8bit", "val", "*", "*_leftImg8bit.png")))
    table = {i: t for _, i, t, _ in cityscapes_labels() if i >= 0}
    assert len(images) == 3
    for path in images:
        image_id = os.path.basename(path)[: -len("_leftImg8bit.png")]          # frankfurt_000000_000019
        image = np.array(Image.open(path).convert("RGB"))
        assert image.shape == (32, 64, 3)
        for c, s in [(c, s) for c, _ in conditions for s in (2, 3, 5)]:
            got = np.array(Image.open(tmp_path / c / str(s) / f"{image_id}.png"))
            assert np.array_equal(got, library_corrupt(image, image_id, c, s)), (image_id, c, s)
        # The label: labelIds mapped to train ids by the table, by hand; drawn in Cityscapes' colours.
        city = os.path.basename(os.path.dirname(path))
        raw = np.array(Image.open(os.path.join(layouts["cityscapes"], "gtFine", "val", city,
                                               image_id + "_gtFine_labelIds.png")))
        want = np.vectorize(lambda v: table[int(v)] if table[int(v)] >= 0 else 255)(raw).astype(np.uint8)
        dumped = Image.open(tmp_path / "labels" / f"{image_id}.png")
        assert np.array_equal(np.array(dumped), want)
        assert dumped.getpalette()[:6] == [128, 64, 128, 244, 35, 232]           # road, sidewalk
    m = json.load(open(tmp_path / "manifest.json"))
    assert (m["data"], m["data_root"], m["split"], m["protocol"], m["size"], m["preset"]) == \
        ("cityscapes", layouts["cityscapes"], "val", "native", None, None)
    ids = sorted(os.path.basename(p)[: -len("_leftImg8bit.png")] for p in images)
    assert m["image_ids_sha256"] == hashlib.sha256("\n".join(ids).encode()).hexdigest()
    assert "voc_root" not in m


def cityscapes_labels():
    from common.datasets.cityscapes import LABELS
    return LABELS


def keep_ratio_by_hand(w, h, short_edge):
    # mmcv.rescale_size with scale (4 S, S) and keep_ratio: the largest factor with long side <= 4 S and short side
    # <= S; each side int(x * factor + 0.5).
    factor = min(4 * short_edge / max(w, h), short_edge / min(w, h))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def test_ade20k_keep_ratio_dump_is_pillow_resize_then_the_library(layouts, tmp_path):
    assert dump_data(layouts, "ade20k", tmp_path, "--protocol", "keep_ratio", "--size", "40", "--corruption-code",
                     "imagecorruptions", "--corruptions", "glass_blur", "fog", "--severities", "3") == 0
    images = sorted(glob.glob(os.path.join(layouts["ade20k"], "ADEChallengeData2016", "images", "validation", "*.jpg")))
    sizes = set()
    for path in images:
        image_id = os.path.splitext(os.path.basename(path))[0]                    # ADE_val_00000001
        with Image.open(path) as im:
            w, h = keep_ratio_by_hand(*im.size, 40)
            sizes.add(im.size)
            image = np.array(im.convert("RGB").resize((w, h), Image.BILINEAR))
        for c in ("glass_blur", "fog"):
            got = np.array(Image.open(tmp_path / c / "3" / f"{image_id}.png"))
            assert got.shape == (h, w, 3) and min(w, h) == 40
            assert np.array_equal(got, library_corrupt(image, image_id, c, 3)), (image_id, c)
        raw = Image.open(path.replace("images", "annotations").replace(".jpg", ".png"))
        raw = np.array(raw.resize((w, h), Image.NEAREST)).astype(int)
        assert np.array_equal(np.array(Image.open(tmp_path / "labels" / f"{image_id}.png")),
                              np.where(raw == 0, 255, raw - 1))
    assert len(sizes) == len(images) > 1        # images of several sizes, each resized by its own factor
    m = json.load(open(tmp_path / "manifest.json"))
    assert (m["data"], m["protocol"], m["size"], m["images"]) == ("ade20k", "keep_ratio", 40,
                                                                  {"fog/3": 3, "glass_blur/3": 3})


def test_segformer_preset_dumps_exactly_the_conditions_of_its_source(layouts, tmp_path):
    # SegFormer's Table 6 (issue 71): Kamann & Rother's 16 corruptions, the 4 noises at severities 1-3, the rest 1-5.
    blur = ["motion_blur", "defocus_blur", "glass_blur", "gaussian_blur"]
    noise = ["gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise"]
    rest = blur + ["brightness", "contrast", "saturate", "jpeg_compression", "snow", "spatter", "fog", "frost"]
    want = {(c, s) for c in noise for s in (1, 2, 3)} | {(c, s) for c in rest for s in range(1, 6)}
    assert len(want) == 72
    assert dump_data(layouts, "cityscapes", tmp_path, "--preset", "segformer-cityscapes-c", "--limit", "1") == 0
    assert conditions_on_disk(tmp_path) == want
    assert not os.path.exists(tmp_path / "gaussian_noise" / "4")
    m = json.load(open(tmp_path / "manifest.json"))
    assert set(m["images"]) == {f"{c}/{s}" for c, s in want} and set(m["images"].values()) == {1}
    assert (m["protocol"], m["size"], m["preset"]["name"]) == ("native", None, "segformer-cityscapes-c")
    assert np.array(Image.open(next((tmp_path / "fog" / "5").iterdir()))).shape == (32, 64, 3)   # native size


def test_ade20k_preset_sets_the_15_corruptions_at_severity_3_and_mmsegs_resize(layouts):
    args = dump_voc_c.get_args_parser().parse_args(["--data", "ade20k", "--ade20k-root", layouts["ade20k"],
                                                    "--preset", "semsegbench-ade20k-c"])
    conditions = dump_voc_c.check_dump_args(args)
    assert sorted(conditions) == sorted((c, 3) for c in IMAGENET_C_15)
    assert (args.protocol, args.size) == ("keep_ratio", 512)      # mmsegmentation's ADE20K test scale (2048, 512)


def test_acdc_dump_covers_the_chosen_conditions_val_images(layouts, tmp_path):
    assert dump_data(layouts, "acdc", tmp_path, "--acdc-conditions", "fog,snow", "--protocol", "native",
                     "--corruptions", "contrast", "--severities", "1") == 0
    want = {os.path.basename(p)[: -len("_rgb_anon.png")] for cond in ("fog", "snow")
            for p in glob.glob(os.path.join(layouts["acdc"], "rgb_anon", cond, "val", "*", "*_rgb_anon.png"))}
    assert len(want) == 6
    assert {p[:-4] for p in os.listdir(tmp_path / "contrast" / "1")} == want == \
        {p[:-4] for p in os.listdir(tmp_path / "labels")}


def test_a_dump_is_refused_for_another_dataset_or_preset_in_one_line(layouts, tmp_path, capsys):
    out = tmp_path / "csc"
    assert dump_data(layouts, "cityscapes", out, "--preset", "segformer-cityscapes-c", "--limit", "1") == 0
    before = tree(out)
    line = refused(capsys, dump_voc_c, "--data", "ade20k", "--ade20k-root", layouts["ade20k"], "--out", out,
                   "--protocol", "native", "--corruptions", "fog")
    assert "--data cityscapes" in line and "--data ade20k" in line
    line = refused(capsys, dump_voc_c, "--data", "cityscapes", "--cityscapes-root", layouts["cityscapes"], "--out",
                   out, "--preset", "kamann-rother-cityscapes-c", "--limit", "1")
    assert "--preset segformer-cityscapes-c" in line and "kamann-rother-cityscapes-c" in line
    assert tree(out) == before and not any(n.startswith("ade") for n in os.listdir(out))
    # A preset of another dataset, and a protocol flag beside a preset: refused before anything is written.
    line = refused(capsys, dump_voc_c, "--data", "ade20k", "--ade20k-root", layouts["ade20k"], "--out",
                   tmp_path / "new", "--preset", "segformer-cityscapes-c")
    assert "cityscapes protocol" in line and "--data is ade20k" in line
    line = refused(capsys, dump_voc_c, "--data", "cityscapes", "--cityscapes-root", layouts["cityscapes"], "--out",
                   tmp_path / "new", "--preset", "segformer-cityscapes-c", "--size", "512")
    assert "--size is fixed by --preset" in line
    assert not os.path.exists(tmp_path / "new")


def test_check_manifest_as_the_sweep_calls_it(layouts, tmp_path):
    # evaluate_corruptions.py's check of --voc-c: the dump's data and preset against the run's.
    from common import vocc
    from common.cli import UsageError
    from common.corruptions import corruption_versions
    from common.datasets import dataset_spec
    from common.presets import PRESETS

    out = tmp_path / "csc"
    assert dump_data(layouts, "cityscapes", out, "--preset", "segformer-cityscapes-c", "--limit", "1") == 0

    def check(name, root, preset, protocol="native", size=None):
        ds = dataset_spec(name).eval_dataset(root, "val")
        expect = {"corruption_code": "imagenet-c", "seed_rule": vocc.seed_rule("imagenet-c"), "preset": preset,
                  **vocc.data_identity(name, root, ds)}
        return vocc.check_manifest(out, protocol, size, corruption_versions(), **expect)

    segformer = PRESETS["segformer-cityscapes-c"].record()
    assert check("cityscapes", layouts["cityscapes"], segformer)["data"] == "cityscapes"
    link = tmp_path / "elsewhere"                      # the same files through another path: the same val set
    os.symlink(layouts["cityscapes"], link)
    check("cityscapes", str(link), segformer)
    with pytest.raises(UsageError, match="--data .cityscapes., this run has .ade20k."):
        check("ade20k", layouts["ade20k"], segformer)
    with pytest.raises(UsageError, match="--preset .segformer-cityscapes-c., this run has .kamann"):
        check("cityscapes", layouts["cityscapes"], PRESETS["kamann-rother-cityscapes-c"].record())
    with pytest.raises(UsageError, match="--preset .segformer-cityscapes-c., this run has .none."):
        check("cityscapes", layouts["cityscapes"], None)


def test_voc_manifest_keeps_its_fields_and_one_from_before_presets_is_still_read(data, tmp_path, capsys):
    from common import vocc
    dump(data, tmp_path, "--corruptions", "jpeg", "--severities", "1", "--limit", "1")
    m = json.load(open(tmp_path / "manifest.json"))
    assert list(m) == ["protocol", "size", "corruption_code", "seed_rule", "versions", "data", "voc_root", "split",
                       "image_ids_sha256", "data_sha256", "preset", "png", "images", "git_commit"]
    assert m["preset"] is None and m["voc_root"] == os.path.join(data, "voc")
    # Its labels keep the VOC colormap (PASCAL's devkit: the bits of the index interleaved into R, G, B).
    cmap = []
    for i in range(256):
        r = g = b = 0
        for j in range(8):
            r |= ((i >> (3 * j)) & 1) << (7 - j)
            g |= ((i >> (3 * j + 1)) & 1) << (7 - j)
            b |= ((i >> (3 * j + 2)) & 1) << (7 - j)
        cmap += [r, g, b]
    assert Image.open(next((tmp_path / "labels").iterdir())).getpalette() == cmap
    # A VOC-C dump made before presets (no "preset") is the paper protocol's: resumed, and accepted by the sweep's
    # check with or without --preset paper; its digest is results.files_sha256's, as before.
    del m["preset"]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    dump(data, tmp_path, "--corruptions", "jpeg", "--severities", "1", "--limit", "1")
    from common.presets import PRESETS
    from common.results import files_sha256
    ds = voc_dataset(os.path.join(data, "voc"), "val")
    assert m["data_sha256"] == files_sha256(ds)
    for preset in (None, PRESETS["paper"].record()):
        vocc.check_manifest(tmp_path, "paper", SIZE, m["versions"], preset=preset, data_sha256=m["data_sha256"])

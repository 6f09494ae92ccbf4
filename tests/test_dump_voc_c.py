"""dump_voc_c.py: pixels equal imagecorruptions.corrupt under the seed rule; resumable; parallel = serial."""
import hashlib
import io
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

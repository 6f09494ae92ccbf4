"""make_video.py: frame counts and rates of real encodes (decoded back with PyAV), the schedule against
hand-computed boundaries (the notebook's n // 13), the notebook's frame geometry against Pillow and
corrupt_image, the tile layout and captions, the seed rule, and bad input -> exit 2."""
import os
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest

import make_video as mv
from common import synthetic_clip, video
from common.constants import voc_palette
from common.corruptions import corrupt_image
from common.datasets import DATASETS, dataset_record, spec_from_record
from helpers import ROOT, refused, run_script

VOC = DATASETS["voc"]
SIZE = "64"  # the --size geometry: models see 112x64 frames, a few ms per frame with the tiny test models
GREY = 200   # the test clip's background: bright, so the red captions stand out after H.264


@pytest.fixture(scope="module")
def ckpts(tiny_ckpt):
    return tiny_ckpt("baseline", 1), tiny_ckpt("scribe", 2)


def write_clip(path, n=20, fps=24, w=320, h=180):
    """A bright grey clip with a dark square drifting along the bottom (away from the labels)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": "10"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.full((h, w, 3), GREY, np.uint8)
            img[h - 50:h - 10, 40 + 5 * i:80 + 5 * i] = 30
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return str(path)


def decode(path):
    """(RGB frames, average rate, codec name) of a video file."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return frames, s.average_rate, s.codec_context.name


def run(ckpts, *extra):
    args = mv.get_args_parser().parse_args(["--baseline", ckpts[0], "--robust", ckpts[1], "--size", SIZE,
                                            "--batch-size", "8", "--device", "cpu", *extra])
    return mv.main(args)


def leftovers(folder):
    return [f for f in os.listdir(folder) if ".tmp-" in f]


# ---------------------------------------------------------------------------------------------- end to end

def test_synthetic_cli(ckpts, tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert run_script(mv, "--synthetic", "--frames", "26", "--fps", "30", "--baseline", ckpts[0],
                      "--robust", ckpts[1], "--size", SIZE, "--device", "cpu", "--out", out) == 0
    stdout = capsys.readouterr().out
    assert "shot_noise, severity 2" in stdout and "elastic_transform, severity 3" in stdout  # schedule
    assert "wrote" in stdout and "26 frames" in stdout and "frames/s" in stdout
    frames, rate, codec = decode(out)
    assert len(frames) == 26 and frames[0].shape == (540, 960, 3)
    assert rate == 30 and codec == "h264"
    assert leftovers(tmp_path) == []


def test_video_input(ckpts, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4")
    out = tmp_path / "out.mp4"
    assert run(ckpts, "--video", clip, "--corruptions", "shot_noise", "impulse", "--out", str(out)) == 0
    frames, rate, _ = decode(out)
    assert len(frames) == 20 and all(f.shape == (540, 960, 3) for f in frames)
    assert rate == 24  # the input's rate (not --fps's default of 25)
    # 3 segments over 20 frames, the notebook's split: switch = 20 // 3 = 6 -> clean 0-5, shot 6-11, and
    # impulse 12-19 (12-17 and the 20 % 3 = 2 leftover frames).
    assert [mv.segment_of(i, 20, 3) for i in range(20)] == [0] * 6 + [1] * 6 + [2] * 8
    below = slice(60, 200)  # tile rows under the captions, above the moving square
    _, fill, (dx, dy) = video.caption_patch("Corruption: None")
    x0, y0 = video.CAPTION_XY[0] + dx, video.CAPTION_XY[1] + dy
    w_none, w_shot = fill.shape[1], video.caption_patch("Corruption: shot_noise")[1].shape[1]
    red = lambda a: ((a[..., 0] > 170) & (a[..., 1] < 90) & (a[..., 2] < 90)).mean()  # noqa: E731
    for i in range(20):
        f = frames[i].astype(np.float32)
        tl, tr = f[:270, :480], f[:270, 480:]
        diff = np.abs(tl[below, 20:460] - tr[below, 20:460]).mean()
        if i < 6:
            assert diff < 1, (i, diff)    # clean: the two tiles show the same frame
        else:
            assert diff > 5, (i, diff)    # noise: the corrupted tile differs (shot ~20, impulse ~9 seen)
        # Captions: red letters on the corrupted tile and both prediction tiles, none on the original.
        assert red(frames[i][y0:y0 + fill.shape[0], 480 + x0:480 + x0 + w_none]) > 0.05, i
        assert red(frames[i][270 + y0:270 + y0 + fill.shape[0], x0:x0 + 60]) > 0.05, i
        assert red(frames[i][:60, :480]) == 0, i
        assert tl[below, 20:460].mean() > GREY - 10
    # The top-right caption follows the segment: "Corruption: shot_noise" is longer than "Corruption: None",
    # so just right of the latter the clean frame shows image, the shot-noise frame letters.
    strip = (slice(y0, y0 + fill.shape[0]), slice(480 + x0 + w_none + 4, 480 + x0 + w_shot - 4))
    assert red(frames[3][strip]) == 0
    assert red(frames[8][strip]) > 0.05


@pytest.mark.slow
def test_kill_leaves_no_partial_output(ckpts, tmp_path):
    out = tmp_path / "demo.mp4"
    proc = subprocess.Popen([sys.executable, "make_video.py", "--synthetic", "--frames", "5000", "--baseline",
                             ckpts[0], "--robust", ckpts[1], "--size", SIZE, "--device", "cpu", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not leftovers(tmp_path) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert leftovers(tmp_path), "the temporary video never appeared"
        time.sleep(1.0)  # let it encode a few frames
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert not out.exists() and leftovers(tmp_path) == []


def test_codec_fallback(ckpts, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mv, "CODECS", (("no_such_encoder", {}, None),) + mv.CODECS[1:])
    out = tmp_path / "demo.mp4"
    assert run(ckpts, "--synthetic", "--frames", "3", "--corruptions", "shot", "--out", str(out)) == 0
    assert "no no_such_encoder encoder; encoding with mpeg4" in capsys.readouterr().out
    frames, rate, codec = decode(out)
    assert len(frames) == 3 and codec == "mpeg4" and rate == 25


@pytest.mark.parametrize("case", ["missing", "empty", "text", "checkpoint", "corruption"])
def test_bad_input_exits_2(ckpts, tmp_path, case, capsys):
    video = tmp_path / "input.mp4"
    if case == "empty":
        video.write_bytes(b"")
    elif case == "text":
        video.write_text("this is not a video\n")
    args = ["--video", str(video)] if case in ("missing", "empty", "text") else ["--synthetic", "--frames", "2"]
    base = str(tmp_path / "none.pt") if case == "checkpoint" else ckpts[0]
    extra = ["--corruptions", "shot", "no_such_corruption"] if case == "corruption" else []
    out = tmp_path / "out.mp4"
    # As a shell sees it (exit status 2, nothing else on stderr): test_input_data.py's damaged checkpoint.
    line = refused(capsys, mv, *args, "--baseline", base, "--robust", ckpts[1], "--out", out, *extra)
    named = {"missing": str(video), "empty": str(video), "text": str(video), "checkpoint": "--baseline",
             "corruption": "no_such_corruption"}[case]
    assert named in line
    assert not out.exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- parts

def test_schedule():
    expected = [("clean", 0), ("shot_noise", 2), ("impulse_noise", 2), ("defocus_blur", 2), ("glass_blur", 2),
                ("motion_blur", 2), ("zoom_blur", 2), ("snow", 2), ("fog", 2), ("brightness", 2),
                ("contrast", 2), ("elastic_transform", 3), ("pixelate", 2)]  # 1..13 of the paper, no frost (8)
    assert mv.build_schedule() == expected
    assert mv.build_schedule(["shot", "12"], 4) == [("clean", 0), ("shot_noise", 4), ("elastic_transform", 4)]
    # 26 frames: two per segment; 130: ten.
    assert [mv.segment_of(i, 26, 13) for i in range(26)] == [i // 2 for i in range(26)]
    assert mv.segment_starts(130, 13) == list(range(0, 131, 10))
    # 20 frames, by hand: switch = 20 // 13 = 1, so frames 0..11 one per segment, and 12..19 all in the last.
    assert mv.segment_starts(20, 13) == list(range(13)) + [20]
    assert [mv.segment_of(i, 20, 13) for i in range(20)] == list(range(12)) + [12] * 8
    # 300 frames: switch 23; segment j = frames 23 j .. 23 j + 22, and the 300 - 299 = 1 leftover in the last.
    assert mv.segment_starts(300, 13) == [23 * j for j in range(13)] + [300]
    lengths = np.bincount([mv.segment_of(i, 300, 13) for i in range(300)], minlength=13)
    assert lengths.tolist() == [23] * 12 + [24]
    # Fewer frames than segments: one frame each, the later segments get none.
    assert [mv.segment_of(i, 5, 13) for i in range(5)] == [0, 1, 2, 3, 4]
    assert mv.segment_starts(5, 13) == [0, 1, 2, 3, 4] + [5] * 9
    with pytest.raises(mv.UsageError):
        mv.build_schedule(None, 0)


def test_frames_follow_the_seed_rule():
    frames = [synthetic_clip.SyntheticClip(0).frame(i) for i in (10, 11, 12)]
    schedule = [("clean", 0), ("shot_noise", 2), ("glass_blur", 3)]
    conds, originals, corrupted = mv.prepare_batch(frames, 10, 15, schedule, (112, 64))
    assert conds == [schedule[2]] * 3 and originals.shape == (3, 64, 112, 3)
    for k in range(3):
        assert np.array_equal(corrupted[k], corrupt_image(originals[k], f"frame{10 + k:06d}", "glass_blur", 3))
    conds, originals, corrupted = mv.prepare_batch(frames[:1], 0, 15, schedule, (112, 64))
    assert conds == [("clean", 0)] and np.array_equal(originals, corrupted)


def test_notebook_geometry_against_pillow_and_corrupt_image():
    # The notebook's cells 55/57 by hand with Pillow: 480x270 (bicubic, Pillow 7.2's default), 224x224
    # (bilinear), corrupt_image with the frame's id, back to 480x270 (bilinear); the original tile 480x270 bilinear.
    from PIL import Image
    frames = [synthetic_clip.SyntheticClip(1).frame(i) for i in (4, 5)]
    schedule = [("clean", 0), ("brightness", 2)]
    conds, originals, corrupted = mv.prepare_batch(frames, 4, 8, schedule, None)   # switch 4: both in segment 1
    assert conds == [("brightness", 2)] * 2
    assert originals.shape == corrupted.shape == (2, 270, 480, 3)
    for k, f in enumerate(frames):
        im = Image.fromarray(f)
        small = np.array(im.resize((480, 270), Image.BICUBIC).resize((224, 224), Image.BILINEAR))
        want = np.array(Image.fromarray(corrupt_image(small, f"frame{4 + k:06d}", "brightness", 2))
                        .resize((480, 270), Image.BILINEAR))
        np.testing.assert_array_equal(corrupted[k], want)
        np.testing.assert_array_equal(originals[k], np.array(im.resize((480, 270), Image.BILINEAR)))
    # The clean segment takes the same round trip, uncorrupted.
    conds, originals, corrupted = mv.prepare_batch(frames[:1], 0, 8, schedule, None)
    im = Image.fromarray(frames[0])
    want = im.resize((480, 270), Image.BICUBIC).resize((224, 224), Image.BILINEAR).resize((480, 270), Image.BILINEAR)
    assert conds == [("clean", 0)] and np.array_equal(corrupted[0], np.array(want))
    assert not np.array_equal(corrupted[0], originals[0])   # the 224 squash blurs it
    # Composed at 960x540 with the tiles unscaled: tile pixels are these arrays (away from the captions).
    p = np.zeros((270, 480), np.uint8)
    frame = mv.compose(originals[0], corrupted[0], p, p, ("", "Corruption: None", "Theirs", "Ours"), VOC)
    np.testing.assert_array_equal(frame[100:270, :480], originals[0][100:])
    np.testing.assert_array_equal(frame[100:270, 480:], corrupted[0][100:])


def test_compose_layout_and_captions():
    h, w = 64, 112
    a, b = np.full((h, w, 3), (200, 200, 200), np.uint8), np.full((h, w, 3), (40, 200, 40), np.uint8)
    p1, p15 = np.full((h, w), 1, np.uint8), np.full((h, w), 15, np.uint8)
    labels = ("", mv.condition_label("shot_noise", 2), "Theirs", "Ours")
    assert labels[1] == "Corruption: shot_noise" and mv.condition_label("clean", 0) == "Corruption: None"
    frame = mv.compose(a, b, p1, p15, labels, VOC)
    assert frame.shape == (540, 960, 3) and frame.dtype == np.uint8
    pal = voc_palette()
    for (ty, tx), colour in zip(((0, 0), (0, 480), (270, 0), (270, 480)), ((200, 200, 200), (40, 200, 40),
                                                                            pal[1], pal[15])):
        assert (frame[ty + 150, tx + 240] == colour).all()
    # Captions: the baseline of each text starts at (20, 30) of its tile (the notebook's (500, 30), (20, 300),
    # (500, 300)); red letters in a black outline; the original tile carries none.
    assert (frame[:100, 20:460] == 200).all()   # (112x64 is letterboxed by a few columns)
    for (ty, tx), text in zip(((0, 480), (270, 0), (270, 480)), labels[1:]):
        outline, fill, (dx, dy) = video.caption_patch(text)
        assert dy < 0 < dy + fill.shape[0] and dx <= 0      # the text sits above its baseline, from x = 20
        y0, x0 = ty + 30 + dy, tx + 20 + dx
        box = frame[y0:y0 + fill.shape[0], x0:x0 + fill.shape[1]].astype(int)
        letters, rim = fill[..., 0] == 1, (outline[..., 0] == 1) & (fill[..., 0] == 0)
        assert letters.sum() > 30 and rim.sum() > 30
        assert (box[letters] == (255, 0, 0)).all() and (box[rim] == 0).all()
        outside = np.ones(frame.shape[:2], bool)
        outside[y0:y0 + fill.shape[0], x0:x0 + fill.shape[1]] = False
        tile = outside[ty:ty + 270, tx:tx + 480]
        assert not ((frame[ty:ty + 270, tx:tx + 480] == (255, 0, 0)).all(-1) & tile).any()
    assert (video.caption_patch("Corruption: None")[1].shape[1]
            < video.caption_patch("Corruption: shot_noise")[1].shape[1])


def test_synthetic_clip_is_deterministic_and_moves():
    f0, f1 = synthetic_clip.SyntheticClip(3).frame(7), synthetic_clip.SyntheticClip(3).frame(7)
    assert np.array_equal(f0, f1) and f0.shape == (mv.SYNTH_H, mv.SYNTH_W, 3)
    assert np.abs(f0.astype(int) - synthetic_clip.SyntheticClip(3).frame(20)).mean() > 2


def with_dataset(src, dest, record):
    """A copy of checkpoint ``src`` carrying ``record`` as its "dataset" (what train.py stores)."""
    import torch
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    ckpt["dataset"] = record
    torch.save(ckpt, dest)
    return str(dest)


# 21 classes (the tiny models' outputs) with another palette: class c drawn (10 c, 255 - 10 c, 77).
OTHER = {"name": "other", "classes": [f"c{i}" for i in range(21)], "has_background": True, "ignore_index": 255,
         "palette": [[10 * c, 255 - 10 * c, 77] for c in range(21)]}


def test_predictions_are_drawn_in_the_checkpoints_palette(ckpts, tmp_path, capsys):
    spec = spec_from_record(OTHER)
    p = np.array([[0, 3], [20, 255]], np.uint8).repeat(135, 0).repeat(240, 1)
    frame = mv.compose(np.zeros((270, 480, 3), np.uint8), np.zeros((270, 480, 3), np.uint8), p, p,
                       ("", "", "", ""), spec)
    for (y, x), c in (((60, 100), 0), ((60, 300), 3), ((200, 100), 20)):    # both prediction tiles
        for x0 in (0, 480):
            assert (frame[270 + y, x0 + x] == OTHER["palette"][c]).all(), (y, x0 + x, c)
    assert (frame[270 + 200, 480 + 300] == 255).all()     # 255: white
    # End to end: both checkpoints record OTHER; the video's prediction tiles hold its colours, not VOC's.
    pair = [with_dataset(c, tmp_path / f"{k}.pt", OTHER) for k, c in enumerate(ckpts)]
    out = tmp_path / "other.mp4"
    assert run(pair, "--synthetic", "--frames", "3", "--out", str(out)) == 0
    assert "classes of other)" in capsys.readouterr().out
    frames, _, _ = decode(out)
    tile = frames[1][270 + 20:540 - 20, 20:460].reshape(-1, 3).astype(int)
    other = np.array(OTHER["palette"])
    near = lambda pal: (np.abs(tile[:, None] - pal[None]).max(-1) <= 12).any(1).mean()  # noqa: E731 (H.264)
    assert near(other) > 0.9 and near(voc_palette()[:21].astype(int)) < 0.5
    # No record: VOC, said so; two datasets: refused.
    assert run(ckpts, "--synthetic", "--frames", "1", "--out", str(tmp_path / "voc.mp4")) == 0
    assert "no record in the checkpoint: VOC assumed" in capsys.readouterr().out
    voc = with_dataset(ckpts[1], tmp_path / "voc.pt", dataset_record(VOC))
    line = refused(capsys, mv, "--baseline", pair[0], "--robust", voc, "--synthetic", "--frames", "1",
                   "--size", SIZE, "--device", "cpu", "--out", tmp_path / "mixed.mp4")
    assert "predicts the 21 classes of other, --robust" in line and "the 21 of voc" in line
    assert not (tmp_path / "mixed.mp4").exists()


def test_a_cityscapes_checkpoint_is_drawn_in_its_19_colours(tmp_path, capsys):
    from common.checkpoint import save_random_checkpoint
    record = dataset_record(DATASETS["cityscapes"])
    raw = save_random_checkpoint(tmp_path / "raw.pt", "baseline", 4, backbone="resnet18", head_channels=8,
                                 num_classes=19)
    ckpt = with_dataset(raw, tmp_path / "cs.pt", record)
    out = tmp_path / "cs.mp4"
    assert run((ckpt, ckpt), "--synthetic", "--frames", "2", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "classes of cityscapes)" in printed and "note: the --synthetic clip draws the synthetic VOC" in printed
    frames, _, _ = decode(out)
    tile = frames[0][270 + 20:540 - 20, 20:460].reshape(-1, 3).astype(int)
    cs = np.array(record["palette"])
    assert (np.abs(tile[:, None] - cs[None]).max(-1) <= 12).any(1).mean() > 0.9     # H.264: near its colours

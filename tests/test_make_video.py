"""make_video.py: frame counts and rates of real encodes (decoded back with PyAV), the schedule against
hand-computed boundaries, the tile layout and labels, the seed rule, and bad input -> exit 2."""
import os
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest

import make_video as mv
from common.constants import voc_palette
from common.corruptions import corrupt_image
from helpers import ROOT, refused, run_script

SIZE = "64"  # models see 112x64 frames: a few ms per frame with the tiny ResNet-18 checkpoints
GREY = 200   # the test clip's background: bright, so the dark label boxes stand out after H.264


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
    # 3 segments over 20 frames: starts ceil(j * 20 / 3) = 0, 7, 14 -> clean 0-6, shot 7-13, impulse 14-19.
    x0, y0 = mv.LABEL_MARGIN, mv.LABEL_MARGIN
    h_box, w_clean = mv.label_patch("clean").shape[:2]
    w_shot = mv.label_patch("shot_noise, severity 2").shape[1]
    below = slice(y0 + h_box + 10, 200)  # tile rows under the labels, above the moving square
    for i in range(20):
        f = frames[i].astype(np.float32)
        tl, tr = f[:270, :480], f[:270, 480:]
        diff = np.abs(tl[below, 20:460] - tr[below, 20:460]).mean()
        if i < 7:
            assert diff < 1, (i, diff)    # clean: the two tiles show the same frame (0.01 seen)
        else:
            assert diff > 5, (i, diff)    # noise: the corrupted tile differs (shot ~20, impulse ~9 seen)
        # Labels: a dark box with white text where the clip is bright grey.
        box = tl[y0:y0 + h_box, x0:x0 + w_clean]
        assert box.mean() < 110 and box.max() > 180, (i, box.mean(), box.max())
        assert tl[below, 20:460].mean() > GREY - 10
    # The top-right label follows the segment: its box is longer for "shot_noise, severity 2" than for
    # "clean", so just right of the "clean" box the clean frame shows image, the shot-noise frame the box.
    strip = (slice(y0 + 2, y0 + h_box - 2), slice(480 + x0 + w_clean + 4, 480 + x0 + w_shot - 4))
    assert frames[3][strip].mean() > GREY - 20
    assert frames[10][strip].mean() < 110


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
    # As a shell sees it (exit status 2, nothing else on stderr): test_inputs.py's damaged checkpoint.
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
    # 20 frames, by hand: segment j starts at ceil(20 j / 13).
    starts = [0, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 17, 19, 20]
    assert mv.segment_starts(20, 13) == starts
    by_hand = [j for j in range(13) for _ in range(starts[j + 1] - starts[j])]
    assert [mv.segment_of(i, 20, 13) for i in range(20)] == by_hand
    for n in range(13, 300):  # "split evenly": every frame in a segment, lengths differ by at most one
        lengths = np.bincount([mv.segment_of(i, n, 13) for i in range(n)], minlength=13)
        assert lengths.sum() == n and lengths.max() - lengths.min() <= 1
    with pytest.raises(mv.UsageError):
        mv.build_schedule(None, 0)


def test_frames_follow_the_seed_rule():
    frames = [mv.SyntheticClip(0).frame(i) for i in (10, 11, 12)]
    schedule = [("clean", 0), ("shot_noise", 2), ("glass_blur", 3)]
    conds, originals, corrupted = mv.prepare_batch(frames, 10, 15, schedule, (112, 64))
    assert conds == [schedule[2]] * 3 and originals.shape == (3, 64, 112, 3)
    for k in range(3):
        assert np.array_equal(corrupted[k], corrupt_image(originals[k], f"frame{10 + k:06d}", "glass_blur", 3))
    conds, originals, corrupted = mv.prepare_batch(frames[:1], 0, 15, schedule, (112, 64))
    assert conds == [("clean", 0)] and np.array_equal(originals, corrupted)


def test_compose_layout_and_labels():
    h, w = 64, 112
    a, b = np.full((h, w, 3), (200, 40, 40), np.uint8), np.full((h, w, 3), (40, 200, 40), np.uint8)
    p1, p15 = np.full((h, w), 1, np.uint8), np.full((h, w), 15, np.uint8)
    labels = ("original", "shot_noise, severity 2", "baseline", "SCrIBE")
    frame = mv.compose(a, b, p1, p15, labels)
    assert frame.shape == (540, 960, 3) and frame.dtype == np.uint8
    pal = voc_palette()
    for (ty, tx), colour in zip(((0, 0), (0, 480), (270, 0), (270, 480)), ((200, 40, 40), (40, 200, 40),
                                                                            pal[1], pal[15])):
        assert (frame[ty + 150, tx + 240] == colour).all()
    for (ty, tx), text in zip(((0, 0), (0, 480), (270, 0), (270, 480)), labels):
        ph, pw = mv.label_patch(text).shape[:2]
        box = frame[ty + mv.LABEL_MARGIN:ty + mv.LABEL_MARGIN + ph, tx + mv.LABEL_MARGIN:tx + mv.LABEL_MARGIN + pw]
        assert (box.min(axis=2) > 240).any()         # white text
        assert (box.max(axis=2) < 60).mean() > 0.5   # on a dark box
    assert mv.label_patch("clean").shape[1] < mv.label_patch("shot_noise, severity 2").shape[1]


def test_synthetic_clip_is_deterministic_and_moves():
    f0, f1 = mv.SyntheticClip(3).frame(7), mv.SyntheticClip(3).frame(7)
    assert np.array_equal(f0, f1) and f0.shape == (mv.SYNTH_H, mv.SYNTH_W, 3)
    assert np.abs(f0.astype(int) - mv.SyntheticClip(3).frame(20)).mean() > 2

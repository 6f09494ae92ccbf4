"""The paper's demo video: a clip run through a baseline and a robust (SCrIBE) model under corruptions.

    python make_video.py --video clip.mp4 --baseline runs/baseline/checkpoint.pt --robust runs/scribe/checkpoint.pt \
        --out demo.mp4
    python make_video.py --synthetic --baseline runs/baseline/checkpoint.pt --robust runs/scribe/checkpoint.pt \
        --out demo.mp4                       # 130 generated frames of moving synthetic-VOC shapes

writes ``--out`` (H.264 ``libx264``, yuv420p; ``mpeg4`` where this PyAV build lacks libx264), one output
frame per input frame at the input's frame rate (its stream's average rate; ``--fps`` for --synthetic).
Each frame is 960x540, four 480x270 tiles (docs/protocol.md, "Figures and video"), captioned as the notebook's:

    original                     | corrupted, "Corruption: <name>" ("Corruption: None" when clean)
    baseline prediction, "Theirs" | robust (SCrIBE) prediction, "Ours"          (the dataset's palette)

The predictions are coloured in the palette of the checkpoints' dataset: ``ckpt["dataset"]``, the
``common.datasets.dataset_record`` train.py stores (Cityscapes' 19 colours, ADE20K's 150, VOC's 21). A checkpoint
without that key (VOC checkpoints made before train.py recorded it) and a torchvision:, hf: or module:factory spec
count as VOC (21 outputs; a spec of another class count is refused by common/model_specs.py's check): the one
default. Two models of different datasets are refused.

What is the notebook's (cells 55-59 of ICIP2020_OnTheStructuresOfRepresentation_LehmanTemelAlRegib.ipynb):
- Geometry. Each frame is resized to 480 x 270 (Pillow's default filter, bicubic in the notebook's Pillow 7.2),
  squashed to 224 x 224 (bilinear), corrupted, and resized back to 270 x 480 (bilinear); that array is what both
  models see and the corrupted tile. The original tile is the frame resized to 270 rows (bilinear; 480 x 270 for
  16:9 input; other aspects are squashed to 480 x 270 here, where the notebook's concatenation would fail). The
  clean segment takes the same round trip through 224 x 224, uncorrupted.
- Schedule. ``switch = n_frames // 13``: frame i is in segment ``i // switch``: clean, then the paper's
  corruptions 1..13 skipping frost (shot_noise ... pixelate) at severity 2, elastic_transform at 3. The
  ``n_frames % 13`` leftover frames keep the last corruption (docs/protocol.md; the notebook's loop itself would
  have moved them on to jpeg_compression at severity 2). ``--corruptions`` / ``--severity`` replace the list /
  set one severity for all; the split is then ``n_frames // (1 + len(corruptions))``. The schedule is printed.
- Captions at (20, 30) px in their tiles, red on a black outline, in DejaVu Sans Bold (matplotlib's default
  font, which the notebook's text used), 20 px high as the notebook's 3 pt at 960 dpi were at 1920 x 1080.
What is ours: the notebook drew each frame with matplotlib into a 1920 x 1080 figure and wrote it at 30 fps and
18000 kb/s with FFmpeg. Its 1920 x 1080 frames are the same 960 x 540 image scaled 2x, so we write the 960 x 540
frames themselves, composed with numpy rather than a matplotlib figure each (bench.py's video group renders the
same frames both ways into the same encoder: BENCHMARKS.md, Decisions), with libx264 at crf 18 (close to
lossless for the palette colours and 1-px class edges) and at the input's own frame rate (the notebook's 30 fps
changes a 25 fps clip's speed). Corruptions follow the project's seeded rule,
``corrupt_image(frame224, image_id=f"frame{index:06d}", corruption, severity)``, so every run gives the same
pixels. ``--size N`` selects the older, faster geometry: short side N, aspect kept (both sides rounded to a
multiple of 8), corrupted at that size, and the model-sized arrays scaled to fit the tiles.

The two models take most of a frame's time, more in the default geometry than under ``--size 224``; composing
and encoding are a small part (figures: BENCHMARKS.md, Decisions). The composed frames are the same on every
run; the encoded bytes are not (this libx264 build varied between runs even single-threaded): decoded frames of
two runs differ by ~0.5 grey levels on average, mostly in the noisy tiles.

The video is written to ``<out stem>.tmp-<pid><ext>`` and renamed at the end: an interrupted run leaves
no partial ``--out``. Bad input (unreadable video, missing checkpoint, unknown corruption) ends with one
``error:`` line on stderr and exit status 2.

This file holds the schedule, the input, the encoder and the loop; the frame itself (tiles, the notebook's
geometry, captions) is common/video.py's, the --synthetic clip common/synthetic_clip.py's.
"""
import argparse
import json
import os
import sys
import time
from fractions import Fraction

import av
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from common import model_specs
from common.cli import UsageError, add_device_arguments, check_at_least, run_cli, write_problem
from common.checkpoint import read_checkpoint
from common.datasets import DATASETS, spec_from_record
from common.corruptions import (CORRUPTIONS, DEFAULT_CODE, MAX_SEVERITY, MIN_SIDE, add_code_argument, corrupt_image,
                                parse_corruptions)
from common.device import resolve_device, use_device
from common.models import predict
from common.folders import git_commit
from common.synthetic_clip import SYNTH_H, SYNTH_W, synthetic_frames
from common.video import (FRAME_H, FRAME_W, NOTEBOOK_SQUARE, OURS, THEIRS, TILE_H, TILE_W, compose, condition_label,
                          model_size, notebook_frame)

CLEAN = "clean"
# docs/protocol.md: "clean, then corruptions 1..13 skipping frost" in the paper's numbering (0 gaussian_noise
# and 14 jpeg_compression are not in the video; frost, 8, is skipped).
DEFAULT_CORRUPTIONS = tuple(CORRUPTIONS[i] for i in range(1, 14) if i != 8)
DEFAULT_SEVERITY = 2
SEVERITY_OVERRIDES = {"elastic_transform": 3}  # severity 2 of elastic is barely visible at video size

# Encoders in order of preference: (PyAV codec name, stream options, bit rate). crf 18 keeps the palette
# colours and 1-px class edges of the prediction tiles close to lossless; preset veryfast encodes 960x540 in
# well under medium's time at about the same size (BENCHMARKS.md, Decisions). mpeg4 has no crf, so a bit rate.
CODECS = (("libx264", {"crf": "18", "preset": "veryfast"}, None),
          ("mpeg4", {}, 6_000_000))


# ---------------------------------------------------------------------------------------------- schedule

def build_schedule(corruptions=None, severity=None):
    """[(corruption, severity), ...]: ("clean", 0) first, then each corruption at its severity."""
    try:
        names = DEFAULT_CORRUPTIONS if corruptions is None else parse_corruptions(corruptions)
    except UsageError as e:
        raise UsageError(f"--corruptions: {e}") from None
    if severity is not None and not 1 <= severity <= MAX_SEVERITY:
        raise UsageError(f"--severity {severity}: must be in 1..{MAX_SEVERITY} (the clean segment is always first)")
    return [(CLEAN, 0)] + [(c, severity if severity is not None else SEVERITY_OVERRIDES.get(c, DEFAULT_SEVERITY))
                           for c in names]


def segment_of(index: int, n_frames: int, n_segments: int) -> int:
    """Segment of frame ``index``: the notebook's ``index // switch`` with ``switch = N // K``; the N % K
    leftover frames stay in the last segment. Under K frames (switch 0) frame i is in segment i."""
    switch = n_frames // n_segments
    return min(index // switch if switch else index, n_segments - 1)


def segment_starts(n_frames: int, n_segments: int) -> list:
    """First frame of each segment plus N at the end: j * (N // K) for j = 0..K-1 (the inverse of segment_of)."""
    switch = n_frames // n_segments
    return [min(j * switch if switch else j, n_frames) for j in range(n_segments)] + [n_frames]


def print_schedule(schedule, n_frames, fps):
    starts = segment_starts(n_frames, len(schedule))
    k = len(schedule)
    print(f"schedule: {n_frames} frames in {k} segments of {n_frames // k} (n_frames // {k}, as the notebook split)"
          + (f"; the last also keeps the {n_frames % k} leftover frame(s)" if n_frames >= k and n_frames % k else ""))
    for j, (c, s) in enumerate(schedule):
        a, b = starts[j], starts[j + 1]
        when = f"{a / fps:6.2f}s" if fps else ""
        print(f"  {j:2d}  frames {a:5d}-{b - 1:5d} ({b - a:4d})  {when}  {c}" + (f", severity {s}" if s else ""))
    if n_frames < len(schedule):
        print(f"warning: {n_frames} frames for {len(schedule)} segments; "
              f"{len(schedule) - n_frames} segment(s) get no frame (use more frames or fewer --corruptions)")


# ---------------------------------------------------------------------------------------------- inputs

def probe_video(path):
    """(frame count, frame rate, (width, height)) of the first video stream; UsageError if unusable.

    Frames are counted by decoding, since container headers' counts are missing (mkv, webm, streams) or
    approximate, and the schedule needs the exact number. Decoding also proves the file is a video
    before anything is written.
    """
    if not os.path.isfile(path):
        raise UsageError(f"--video {path}: no such file; pass a video file PyAV/FFmpeg can read")
    if os.path.getsize(path) == 0:
        raise UsageError(f"--video {path}: the file is empty; pass a video file PyAV/FFmpeg can read")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise UsageError(f"--video {path}: has no video stream (audio only?); pass a video file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            n, size = 0, None
            for frame in container.decode(stream):
                size = size or (frame.width, frame.height)
                n += 1
    except av.error.FFmpegError as e:
        raise UsageError(f"--video {path}: not a video PyAV can decode ({e.strerror or type(e).__name__}); "
                         f"pass a video file (mp4, mkv, webm, avi, ...)") from None
    if n == 0:
        raise UsageError(f"--video {path}: the video stream has no frames; pass another video")
    if not rate or rate <= 0:
        print(f"warning: --video {path} states no frame rate; writing at 25 fps")
        rate = Fraction(25)
    return n, Fraction(rate), size


def video_frames(path):
    """Yield the first video stream's frames as HxWx3 uint8 RGB arrays."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


# ---------------------------------------------------------------------------------------------- output

def pick_codec():
    """(name, options, bit rate) of the first encoder in CODECS this PyAV build has."""
    for name, options, bit_rate in CODECS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # av raises UnknownCodecError (a ValueError) or FFmpegError, by version
            continue
        if name != CODECS[0][0]:
            print(f"note: this PyAV build has no {CODECS[0][0]} encoder; encoding with {name} instead")
        return name, options, bit_rate
    raise UsageError(f"this PyAV build has none of the encoders {[c[0] for c in CODECS]}; install PyAV "
                     f"from PyPI (its wheels include libx264)")


def temp_path(out):
    stem, ext = os.path.splitext(out)
    return f"{stem}.tmp-{os.getpid()}{ext}"


def open_output(path, fps, codec, shown=None):
    """Open ``path`` for writing with one 960x540 yuv420p video stream; ``shown`` names it in errors."""
    name, options, bit_rate = codec
    shown = shown or path
    try:
        container = av.open(path, mode="w")  # the extension picks the container
    except ValueError as e:  # "Could not determine output format"
        raise UsageError(f"--out {shown}: {e}; give it a video extension such as .mp4 or .mkv") from None
    except OSError as e:
        raise UsageError(f"--out {shown}: cannot write it ({e.strerror or e})") from None
    stream = container.add_stream(name, rate=fps, options=dict(options))
    stream.width, stream.height, stream.pix_fmt = FRAME_W, FRAME_H, "yuv420p"
    if bit_rate:
        stream.bit_rate = bit_rate
    return container, stream


def batches(frames, n):
    """Lists of up to n consecutive frames: only one batch of decoded frames is held in memory."""
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def prepare_batch(batch, start, n_frames, schedule, size, code=DEFAULT_CODE):
    """(conditions, originals, corrupted) of frames start .. start+len(batch)-1.

    ``size`` None: the notebook's geometry (``notebook_frame``), 270x480 arrays. ``size`` (w, h): the --size
    geometry, both arrays at the model size and the corruption applied at that size.
    """
    conds = [schedule[segment_of(start + k, n_frames, len(schedule))] for k in range(len(batch))]
    if size is None:
        pairs = [notebook_frame(f, f"frame{start + k:06d}", c, s, code)
                 for k, (f, (c, s)) in enumerate(zip(batch, conds))]
        return conds, np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    # Bilinear with PIL's support scaled to the reduction (antialiased); the same rule for every input.
    originals = np.stack([f if f.shape[:2] == size[::-1] else
                          np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in batch])
    corrupted = np.stack([corrupt_image(img, f"frame{start + k:06d}", c, s, code) if s else img.copy()
                          for k, (img, (c, s)) in enumerate(zip(originals, conds))])
    return conds, originals, corrupted


def encode_batch(batch, start, n_frames, schedule, size, models, names, args, container, stream, bar, spec):
    """Resize, corrupt, predict, compose and encode frames start .. start+len(batch)-1 (predictions in the palette
    of ``spec``, the models' DatasetSpec); returns the next index."""
    conds, originals, corrupted = prepare_batch(batch, start, n_frames, schedule, size, args.corruption_code)
    preds = [predict(m, corrupted, args.device, args.batch_size) for m in models]
    for k, (c, s) in enumerate(conds):
        frame = compose(originals[k], corrupted[k], preds[0][k], preds[1][k],
                        ("", condition_label(c, s), names[0], names[1]), spec)
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        video_frame.pts = start + k  # one tick of 1/fps per frame: constant frame rate
        for packet in stream.encode(video_frame):
            container.mux(packet)
        bar.update(1)
    return start + len(batch)


# ---------------------------------------------------------------------------------------------- main

def model_classes(spec):
    """(DatasetSpec, whether recorded) of one model's classes: its checkpoint's "dataset" record (read here once
    more, before the model is built and checked against it), else VOC's (a checkpoint from before train.py
    recorded it, or a torchvision:/module:factory spec with VOC's 21 labels)."""
    record = read_checkpoint(spec).get("dataset") if model_specs.spec_kind(spec) == "checkpoint" else None
    return (spec_from_record(record), True) if record else (DATASETS["voc"], False)


def load_pair(args):
    """(baseline, robust) models, their names (--names, else each checkpoint's name) and the DatasetSpec of their
    classes (both must have the same). Either may be a checkpoint, torchvision:<builder>[:<weights>] or
    module:factory (common/model_specs.py)."""
    if args.names is not None and len(args.names) != 2:
        raise UsageError(f"--names: give two names (baseline, robust), got {len(args.names)}")
    specs = [args.baseline, args.robust]
    options = model_specs.model_options(specs, args.weights_file, args.model_kind, where="--baseline/--robust")
    models, names, classes = [], [], []
    for k, (flag, spec) in enumerate((("--baseline", args.baseline), ("--robust", args.robust))):
        if model_specs.spec_kind(spec) == "checkpoint" and not os.path.isfile(spec):
            raise UsageError(f"{flag} {spec}: no such checkpoint; pass a checkpoint written by train.py, "
                             f"torchvision:<builder> or module:factory")
        classes.append(model_classes(spec))
        model, info = model_specs.load_spec(spec, args.device, *options[k], hash_file=False, dataset=classes[-1][0])
        # NHWC convolutions: faster for these ResNets on CPU (oneDNN; BENCHMARKS.md, Decisions) as on GPU; the
        # frames arrive as NHWC arrays already. Same device and arguments -> same predictions, run after run.
        models.append(model.to(memory_format=torch.channels_last))
        names.append(args.names[k] if args.names else info["name"])
        print(f"{flag[2:]}: {spec} ({names[-1]}, {model.config['kind']}, {model.config.get('arch')}"
              f"{' ' + model.config['backbone'] if model.config.get('backbone') else ''}; classes of "
              f"{classes[-1][0].name}{'' if classes[-1][1] else ', no record in the checkpoint: VOC assumed'})")
    (base, _), (robust, _) = classes
    if tuple(base.classes) != tuple(robust.classes):
        raise UsageError(f"--baseline {args.baseline} predicts the {base.num_classes} classes of {base.name}, --robust "
                         f"{args.robust} the {robust.num_classes} of {robust.name}; give two models of one dataset")
    return models, names, base


def describe_input(args):
    """(frame count, frame rate, (width, height), description) of the --synthetic clip or the --video."""
    if not args.synthetic:
        if args.fps is not None:
            raise UsageError("--fps applies to --synthetic only; a --video keeps its own frame rate")
        return (*probe_video(args.video), args.video)
    check_at_least("--frames", args.frames)
    fps = Fraction(args.fps if args.fps is not None else 25).limit_denominator(1001)
    if fps <= 0:
        raise UsageError(f"--fps {args.fps}: must be positive")
    return args.frames, fps, (SYNTH_W, SYNTH_H), f"synthetic clip (seed {args.seed})"


def main(args):
    schedule = build_schedule(args.corruptions, args.severity)  # unknown corruption: fails before any work
    check_at_least("--batch-size", args.batch_size)
    if args.size is not None and args.size < MIN_SIDE:
        raise UsageError(f"--size {args.size}: must be at least {MIN_SIDE} (imagecorruptions' smallest image)")
    device = resolve_device(args.device)
    use_device(device)
    args.device = str(device)
    n_frames, fps, src_size, source = describe_input(args)
    if os.path.exists(args.out) and not os.path.isfile(args.out):
        raise UsageError(f"--out {args.out}: is a folder; give a file name such as demo.mp4")
    if args.video and os.path.exists(args.out) and os.path.samefile(args.out, args.video):
        raise UsageError(f"--out {args.out}: is the input --video; give another name")

    print(f"git commit: {git_commit()}\narguments: {json.dumps(vars(args), sort_keys=True)}")
    (base, robust), names, classes = load_pair(args)
    if args.synthetic and classes.name != "voc":
        print(f"note: the --synthetic clip draws the synthetic VOC set's objects; these {classes.name} models were "
              f"not trained on them (give --video for a clip of their own)")
    captions = args.names or (THEIRS, OURS)   # the notebook's, unless --names
    mw, mh = model_size(*src_size, args.size)
    geometry = (f"the notebook's: {TILE_W}x{TILE_H} -> {NOTEBOOK_SQUARE}x{NOTEBOOK_SQUARE} -> corrupted -> "
                f"{TILE_W}x{TILE_H}" if args.size is None else f"--size {args.size}: short side {args.size}")
    print(f"input: {source}, {src_size[0]}x{src_size[1]}, {n_frames} frames at {float(fps):.3f} fps; "
          f"models see {mw}x{mh} ({geometry}); device {args.device}")
    print_schedule(schedule, n_frames, float(fps))
    codec = pick_codec()

    frames = synthetic_frames(n_frames, args.seed) if args.synthetic else video_frames(args.video)
    tmp = temp_path(args.out)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    t0, written = time.perf_counter(), 0
    try:
        container, stream = open_output(tmp, fps, codec, shown=args.out)
        with container, tqdm(total=n_frames, unit="frame", desc="video", disable=None) as bar:
            for batch in batches(frames, args.batch_size):
                written = encode_batch(batch, written, n_frames, schedule, None if args.size is None else (mw, mh),
                                       (base, robust), captions, args, container, stream, bar, classes)
            for packet in stream.encode(None):  # flush frames the encoder still holds (B-frame lookahead)
                container.mux(packet)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, args.out)
    except OSError as e:   # the disk full or read-only: one line naming --out (the temporary name means nothing)
        line = write_problem(e, args.out)
        if line is None:
            raise
        raise UsageError(line) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    seconds = time.perf_counter() - t0
    if written != n_frames:  # the second decode disagreed with the first: worth knowing, not fatal
        print(f"warning: counted {n_frames} frames but decoded {written}; segment boundaries assumed {n_frames}")
    print(f"wrote {args.out}: {written} frames, {FRAME_W}x{FRAME_H}, {float(fps):.3f} fps, {codec[0]}; "
          f"{seconds:.1f}s ({written / max(seconds, 1e-9):.2f} frames/s)")
    return 0


def get_args_parser():
    p = argparse.ArgumentParser(description="Render the demo video: original | corrupted over baseline | SCrIBE "
                                            "predictions, with the corruption changing every 1/13 of the clip.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", default=None,
                     help="input video (anything PyAV/FFmpeg decodes); all its frames are used")
    src.add_argument("--synthetic", action="store_true",
                     help="generate a clip of moving shapes of the synthetic dataset's classes instead of --video")
    p.add_argument("--baseline", required=True,
                   help="baseline model (bottom-left tile): a checkpoint written by train.py, "
                        "torchvision:<builder>[:<weights>] or module.path:factory")
    p.add_argument("--robust", required=True,
                   help="robust (SCrIBE) model (bottom-right tile): a checkpoint, torchvision: or module:factory spec")
    p.add_argument("--names", nargs=2, default=None, metavar=("BASELINE", "ROBUST"),
                   help="captions of the two prediction tiles; default: the notebook's 'Theirs' (baseline) and "
                        "'Ours' (robust)")
    model_specs.add_model_arguments(p, "--baseline/--robust")
    p.add_argument("--out", default="demo.mp4", help="output video; the extension picks the container (.mp4, .mkv)")
    p.add_argument("--corruptions", nargs="+", default=None,
                   help="corruptions after the clean segment (names, short names, numbers or groups); "
                        "default: the paper's 1..13 without frost")
    p.add_argument("--severity", type=int, default=None,
                   help="one severity 1..5 for every corruption; default: 2, and 3 for elastic_transform")
    p.add_argument("--frames", type=int, default=130, help="length of the --synthetic clip (10 frames a segment)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the --synthetic clip (default 25); "
                                                           "a --video keeps its own")
    p.add_argument("--seed", type=int, default=0, help="layout and motion of the --synthetic clip")
    p.add_argument("--size", type=int, default=None,
                   help="default: the notebook's geometry (each frame 480x270 -> 224x224 -> corrupted -> 480x270, "
                        "which the models see); N: the older, faster one, the models see and the corruptions "
                        "act on the frame at short side N (aspect kept), scaled up to the tiles")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward pass")
    add_code_argument(p)
    add_device_arguments(p, amp=False)
    return p


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser(), kept=lambda args: f"no partial video is left ({args.out} is written "
                                                               f"only once whole); run the same command again"))

"""bench.py's video group: make_video.py's frames composed by common/video.py against a matplotlib figure per
frame, and make_video.py's own run (video_render, video_end_to_end; BENCHMARKS.md)."""
import os
import re

import numpy as np
from PIL import Image

from benchmarks.corruption import corrupt_seconds
from benchmarks.measure import result, run_main, timed
from common.checkpoint import load_model
from common.datasets import DATASETS
from common.corruptions import corrupt_image, parse_corruptions
from common.models import predict
from common.synthetic_clip import synthetic_frames
from common.video import OURS, THEIRS, compose, condition_label


def mpl_compose(original, corrupted, pred_baseline, pred_robust, labels, spec):
    """make_video's 960x540 2x2 frame drawn the notebook way: a matplotlib figure per frame, rasterised by Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 5.4), dpi=100, facecolor="black")
    canvas = FigureCanvasAgg(fig)
    tiles = ((original, "bilinear"), (corrupted, "bilinear"), (spec.colorize(pred_baseline), "nearest"),
             (spec.colorize(pred_robust), "nearest"))
    for k, ((img, interp), text) in enumerate(zip(tiles, labels)):
        ax = fig.add_axes([(k % 2) / 2, 0.5 - (k // 2) / 2, 0.5, 0.5])
        ax.imshow(img, interpolation=interp)
        ax.set_axis_off()
        ax.text(0.012, 0.97, text, transform=ax.transAxes, va="top", ha="left", color="white", fontsize=13,
                bbox=dict(facecolor="black", alpha=0.8, edgecolor="none", pad=3))
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def video_frames(make_video, text, ckpts, cfg):
    """make_video's frame tiles, rebuilt from its clip (common/synthetic_clip.py), schedule (its segment_of:
    n // K frames a segment) and models, at the --size geometry the benchmark runs it with."""
    n = int(re.search(r"wrote .*?: (\d+) frames", text).group(1))
    size, schedule = tuple(map(int, re.search(r"models see (\d+)x(\d+)", text).groups())), make_video.build_schedule()
    originals = [np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in synthetic_frames(n)]
    conds = [schedule[make_video.segment_of(i, n, len(schedule))] for i in range(n)]
    corrupted = np.stack([corrupt_image(o, f"frame{i:06d}", c, s) if s else o
                          for i, (o, (c, s)) in enumerate(zip(originals, conds))])
    preds = [predict(load_model(ckpts[k], cfg["device"])[0], corrupted, cfg["device"], cfg["video_batch"])
             for k in (0, 2)]
    return [(originals[i], corrupted[i], preds[0][i], preds[1][i],
             ("", condition_label(*conds[i]), THEIRS, OURS), DATASETS["voc"]) for i in range(n)]   # VOC models


def bench_video(ctx):
    """video_render and video_end_to_end: make_video's compose (common/video.py) against a matplotlib figure per
    frame."""
    import av           # PyAV and make_video (which needs it) only here: the other groups run without them
    import make_video

    cfg, ckpts, vdir, dev = ctx["cfg"], ctx["checkpoints"]("deeplabv3plus"), os.path.join(ctx["scratch"], "video"), \
        ctx["cfg"]["device"]
    argv = ["--synthetic", "--size", str(cfg["video_size"]), "--batch-size", str(cfg["video_batch"]), "--device",
            dev, "--baseline", ckpts[0], "--robust", ckpts[2]]
    # Warm-up: every corruption once (numba compiles glass blur on first use), a 4-frame run (lazy imports).
    corrupt_seconds([("warmup", np.zeros((64, 64, 3), np.uint8), None)], [(c, 2) for c in parse_corruptions(["all"])])
    run_main(make_video, argv + ["--frames", "4", "--out", os.path.join(vdir, "warm.mp4")], ctx["log"], dev)
    text = run_main(make_video, argv + ["--frames", str(cfg["frames"]), "--out", os.path.join(vdir, "script.mp4")],
                    ctx["log"], dev)[1]
    n, fps = re.search(r"wrote .*?: (\d+) frames.*\(([0-9.]+) frames/s\)", text).groups()
    n, t_script = int(n), int(n) / float(fps)      # its own clock: from the first frame to the renamed file
    frames = video_frames(make_video, text, ckpts, cfg)

    def render(compose_fn):
        container, stream = make_video.open_output(os.path.join(vdir, "render.mp4"), 25, make_video.pick_codec())
        with container:
            for i, args in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(compose_fn(*args), format="rgb24")
                vf.pts = i
                [container.mux(packet) for packet in stream.encode(vf)]
            [container.mux(packet) for packet in stream.encode(None)]   # the encoder's lookahead

    render(compose), mpl_compose(*frames[0])                   # encoder, fonts, matplotlib warm-up
    t_np, t_mpl = (timed(lambda: render(fn), dev, cfg["repeats"])[0] for fn in (compose, mpl_compose))
    t_pipeline = t_script + t_mpl - t_np   # the script's own run, with matplotlib's rendering instead of its own
    return {"video_render": result(t_mpl / t_np, 3.0, ">=", dict(make_video_render=t_np, matplotlib_render=t_mpl),
                                   frames=n, fps_make_video=round(n / t_np, 2), fps_matplotlib=round(n / t_mpl, 2)),
            "video_end_to_end": result(t_pipeline / t_script, None, "info", dict(
                make_video=t_script, matplotlib_pipeline=t_pipeline), fps_make_video=round(n / t_script, 2),
                fps_matplotlib=round(n / t_pipeline, 2))}

"""make_video.py's --synthetic clip: moving, rotating objects of the synthetic VOC-format dataset's 20 foreground
classes, drawn by common/synthetic.py's own pieces so that models trained on the synthetic set recognise them
(models of another dataset see the same objects; their predictions are coloured in their own palette)."""
import math

import numpy as np

from common import synthetic

SYNTH_W, SYNTH_H = 640, 360   # the generated clip's size (16:9, like the tiles)
SYNTH_OBJECTS = 6


def _reflect(p, hi):
    """p folded into [0, hi] like a ball bouncing between two walls: a position computable for any frame."""
    q = np.mod(p, 2 * hi)
    return np.where(q <= hi, q, 2 * hi - q)


class SyntheticClip:
    """Moving, rotating objects of the synthetic dataset's classes over a smooth, slowly panning background.

    Each object is drawn by common.synthetic's own pieces (``shape_mask``, ``texture_pattern``,
    ``object_colours``), so it keeps its class's shape, texture and colour and models trained on the
    synthetic set recognise it. Deterministic: ``frame(i)`` depends only on (seed, i).
    """

    def __init__(self, seed=0, width=SYNTH_W, height=SYNTH_H, n_objects=SYNTH_OBJECTS):
        rng = np.random.default_rng([seed, 0])
        self.seed, self.w, self.h = seed, width, height
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.c0, self.c1 = synthetic.greyish(rng, 0.3, 0.85), synthetic.greyish(rng, 0.3, 0.85)
        self.angle0, self.spin = rng.uniform(0, 2 * np.pi), rng.choice([-1, 1]) * 2 * np.pi / 900
        # Blotches on a field larger than the frame; a moving crop of it reads as a slow camera pan.
        self.pan = 40
        self.blot = synthetic.blotches(rng, height + 2 * self.pan, width + 2 * self.pan) * 0.12
        sizes = np.sort(rng.uniform(0.22, 0.42, n_objects))[::-1] * height  # big first: small ones stay on top
        classes = rng.choice(np.arange(1, len(synthetic.CLASS_TABLE) + 1), n_objects, replace=False)
        self.objects = [self._object(rng, int(k), size) for k, size in zip(classes, sizes)]

    def _object(self, rng, k, size):
        """One object of class k and diameter ``size``: its look, start position and motion (px, rad per frame)."""
        shape, texture, _, _ = synthetic.class_style(k)
        colour, second = synthetic.object_colours(rng, k)
        heading, speed = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 3.0)
        return dict(shape=shape, r=size / 2, proportions=synthetic.shape_proportions(rng, shape), texture=texture,
                    pattern=synthetic.texture_params(rng, texture, size), colour=colour, second=second,
                    x0=rng.uniform(0, self.w), y0=rng.uniform(0, self.h),
                    vx=speed * np.cos(heading), vy=speed * np.sin(heading),
                    a0=rng.uniform(0, 2 * np.pi), omega=rng.choice([-1, 1]) * rng.uniform(0.01, 0.04))

    def background(self, i):
        a = self.angle0 + self.spin * i
        t = ((self.xx - self.w / 2) * np.cos(a) + (self.yy - self.h / 2) * np.sin(a)) / math.hypot(self.w, self.h) + 0.5
        img = (1 - t)[..., None] * self.c0 + t[..., None] * self.c1
        ox = int(round(self.pan * (1 + np.sin(2 * np.pi * i / 400))))
        oy = int(round(self.pan * (1 + np.cos(2 * np.pi * i / 300))))
        return img + self.blot[oy:oy + self.h, ox:ox + self.w]

    def draw(self, img, o, i):
        cx, cy = float(_reflect(o["x0"] + o["vx"] * i, self.w)), float(_reflect(o["y0"] + o["vy"] * i, self.h))
        a = o["a0"] + o["omega"] * i
        # Drawn in its bounding box only (shape_mask: every shape lies within 1.1 r), not over the whole frame.
        big = 1.1 * o["r"]
        x0, y0 = max(0, int(cx - big)), max(0, int(cy - big))
        x1, y1 = min(self.w, int(cx + big) + 1), min(self.h, int(cy + big) + 1)
        if x1 <= x0 or y1 <= y0:
            return
        mask = synthetic.shape_mask(o["shape"], y1 - y0, x1 - x0, cx - x0, cy - y0, o["r"], a, **o["proportions"])
        # The texture lives in the object's own (rotated) frame, so it moves and turns with the object.
        lx, ly = self.xx[y0:y1, x0:x1] - cx, self.yy[y0:y1, x0:x1] - cy
        c, s = np.cos(a), np.sin(a)
        pattern = synthetic.texture_pattern(o["texture"], lx * c + ly * s, -lx * s + ly * c, o["pattern"])
        region = img[y0:y1, x0:x1]
        region[mask] = np.where(pattern[..., None], o["second"], o["colour"])[mask]

    def frame(self, i):
        img = self.background(i)
        for o in self.objects:
            self.draw(img, o, i)
        img += np.random.default_rng([self.seed, 1, i]).normal(0, 3, (self.h, self.w, 1))  # sensor-like noise
        return np.clip(img, 0, 255).round().astype(np.uint8)


def synthetic_frames(n_frames, seed=0):
    clip = SyntheticClip(seed)
    for i in range(n_frames):
        yield clip.frame(i)

"""mIoU against severity: the notebook's mean curve with its bootstrap band (miou_vs_severity.png) and one
panel per corruption (per_corruption.png), from the rows of metrics.jsonl."""
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from common.corruptions import ALL_CORRUPTIONS, CORRUPTIONS
from common.results import CLEAN

BOOTSTRAP_RESAMPLES, BOOTSTRAP_LEVEL = 1000, 95   # seaborn lineplot's defaults (n_boot=1000, ci=95)


def bootstrap_interval(values, seed=0, n_boot=BOOTSTRAP_RESAMPLES, level=BOOTSTRAP_LEVEL):
    """(low, high): the notebook's band, seaborn lineplot's default ``ci=95``: the ``(100 - level) / 2`` and
    ``(100 + level) / 2`` percentiles of the means of ``n_boot`` resamples (with replacement, of the same size)
    of ``values``. seaborn drew them unseeded; here from ``numpy.random.default_rng(seed)``, so that two runs
    draw the same band. One value gives a band of zero width, as in seaborn."""
    vals = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = vals[rng.integers(0, len(vals), (n_boot, len(vals)))].mean(axis=1)
    low, high = np.percentile(means, (50 - level / 2, 50 + level / 2))
    return float(low), float(high)


def severity_curves(rows, names, band="bootstrap", seed=0):
    """Per model: mean mIoU over the paper's corruptions at each severity 0..5, with a 95% band.

    Severity 0 is the clean row (a point: band of zero width). For s >= 1 the mean is over those of
    the 15 paper corruptions with a non-null mIoU at s (held-out extras left out, as in
    analyze_logits.py's aggregates). The band: ``band="bootstrap"`` (the notebook's seaborn lineplot)
    ``bootstrap_interval`` of those values; ``band="normal"`` mean +- 1.96 * SD / sqrt(n), SD with ddof=1,
    a normal-approximation 95% interval of the mean, NaN with fewer than 2 corruptions.
    Returns {name: {"severity", "mean", "lower", "upper", "n"}} of arrays over severities 0..5.
    """
    out = {}
    for name in names:
        mean, lower, upper, n = np.full(6, np.nan), np.full(6, np.nan), np.full(6, np.nan), np.zeros(6, dtype=int)
        for s in range(6):
            vals = [r["miou"] for r in rows if r["model"] == name and r["severity"] == s and r.get("miou") is not None
                    and (r["corruption"] == CLEAN if s == 0 else r["corruption"] in CORRUPTIONS)]
            n[s] = len(vals)
            if not vals:
                continue
            mean[s] = np.mean(vals)
            if s == 0:
                lower[s] = upper[s] = mean[s]
            elif band == "bootstrap":
                lower[s], upper[s] = bootstrap_interval(vals, seed)
            elif len(vals) > 1:
                half = 1.96 * np.std(vals, ddof=1) / np.sqrt(len(vals))
                lower[s], upper[s] = mean[s] - half, mean[s] + half
        out[name] = {"severity": np.arange(6), "mean": mean, "lower": lower, "upper": upper, "n": n}
    return out


def fig_miou_vs_severity(ctx):
    # The notebook's cell 52: seaborn lineplot of mIoU (a fraction) against severity, hue = model.
    band, seed = ctx.get("band", "bootstrap"), ctx.get("band_seed", 0)
    curves = severity_curves(ctx["rows"], ctx["metric_names"], band, seed)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for name, c in curves.items():
        st = ctx["styles"][name]
        ax.plot(c["severity"], c["mean"], **st)
        ax.fill_between(c["severity"], c["lower"], c["upper"], color=st["color"], alpha=0.2, lw=0)
    n = max(int(c["n"][1:].max()) for c in curves.values())
    ax.set(xlabel="severity (0 = clean)", ylabel="mIoU", xticks=range(6))
    how = (f"bootstrap 95% interval of the mean ({BOOTSTRAP_RESAMPLES} resamples of the corruptions, seed {seed})"
           if band == "bootstrap" else "mean ± 1.96·SD/√n across corruptions (95%)")
    ax.set_title(f"Mean mIoU over {n} of the {len(CORRUPTIONS)} corruptions\nband: {how}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def fig_per_corruption(ctx):
    rows, names = ctx["rows"], ctx["metric_names"]
    present = [c for c in ALL_CORRUPTIONS if any(r["corruption"] == c for r in rows)]
    present += sorted({r["corruption"] for r in rows} - set(present) - {CLEAN})  # names we do not know
    nc = min(5, len(present))
    nr = -(-len(present) // nc)
    fig, axes = plt.subplots(nr, nc, figsize=(2.9 * nc + 0.5, 2.3 * nr + 1.0), squeeze=False, sharex=True,
                             sharey=True, layout="constrained")
    miou = {(r["model"], r["corruption"], r["severity"]): r.get("miou") for r in rows}
    for ax, corruption in zip(axes.flat, present):
        for name in names:
            pts = [(s, miou.get((name, CLEAN if s == 0 else corruption, s))) for s in range(6)]
            pts = [(s, 100 * v) for s, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts), **{**ctx["styles"][name], "markersize": 4})
        ax.set_title(corruption + ("" if corruption in CORRUPTIONS else " (held out)"))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(present):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set(xlabel="severity", xticks=range(6))
    for ax in axes[:, 0]:
        ax.set_ylabel("mIoU (%)")
    fig.legend(handles=[Line2D([], [], **ctx["styles"][n]) for n in names], loc="outside lower center",
               ncol=len(names))
    fig.suptitle("mIoU per corruption vs severity (0 = clean)")
    return fig

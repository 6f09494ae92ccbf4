"""Calibration figures from analysis_arrays.npz: reliability diagrams and ECE against severity
(calibration.png), and the softmax and sigmoid readings with temperature scaling and risk-coverage
(readings.png, docs/calibration.md)."""
import os

import matplotlib.pyplot as plt
import numpy as np

from common.cli import UsageError

# The reliability diagrams' conditions: clean and two severities (bins summed over the corruptions).
RELIABILITY_SEVERITIES = (0, 3, 5)
RELIABILITY_STYLE = {0: {"color": "0.2", "linestyle": "-", "marker": "o"},
                     3: {"color": (0.90, 0.62, 0.0), "linestyle": "--", "marker": "s"},
                     5: {"color": (0.80, 0.47, 0.65), "linestyle": ":", "marker": "^"}}


def bin_means(ctx, key):
    """(mean confidence, accuracy, pixels) of the non-empty bins analysis_arrays.npz holds under ``key``
    (``<key>/count``, ``conf_sum``, ``acc_sum``); None when the arrays have none."""
    if f"{key}/count" not in ctx["arrays"]:
        return None
    count, conf, acc = (np.asarray(ctx["arrays"][f"{key}/{k}"], dtype=np.float64)
                        for k in ("count", "conf_sum", "acc_sum"))
    kept = count > 0
    return conf[kept] / count[kept], acc[kept] / count[kept], count[kept]


def reliability(ctx, name, severity):
    """``bin_means`` of one model at one severity, from the bins analyze_logits.py summed over the corruptions."""
    return bin_means(ctx, f"{name}/calibration/{severity}")


def check_calibration(ctx):
    """calibration.png needs analyze_logits.py's calibration arrays (older analyses have none)."""
    if not any(f"{n}/calibration/ece_by_severity" in ctx["arrays"] for n in ctx["array_names"]):
        raise UsageError(f"{os.path.join(ctx['results_dir'], 'analysis_arrays.npz')}: no calibration arrays (written "
                         f"by an analyze_logits.py from before calibration, or results without ece/nll/brier); rerun "
                         f"analyze_logits.py --results {ctx['results_dir']}")


def fig_calibration(ctx):
    names = ctx["array_names"]
    fig = plt.figure(figsize=(max(7.0, 3.0 * len(names) + 0.6), 6.8), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(1.25, 1))
    axes = np.atleast_1d(top.subplots(1, len(names), sharex=True, sharey=True))
    for ax, name in zip(axes, names):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="perfect calibration")
        drawn = False
        for s in RELIABILITY_SEVERITIES:
            rel = reliability(ctx, name, s)
            if rel is None:
                continue
            label = "clean" if s == 0 else f"severity {s}"
            ax.plot(rel[0], rel[1], **RELIABILITY_STYLE[s], markersize=4, label=label)
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no calibration bins", transform=ax.transAxes, ha="center", va="center")
        ax.set(title=name, xlim=(0, 1), ylim=(0, 1), xlabel="confidence (bin mean)", aspect="equal")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=7)
    top.suptitle("Reliability of the top-1 softmax confidence\n(15 bins over the non-255 pixels; severities 3 and "
                 "5: bins summed over the corruptions)", fontsize=10)
    ax = bottom.subplots()
    for name in names:
        ece = np.asarray(ctx["arrays"].get(f"{name}/calibration/ece_by_severity", np.full(6, np.nan)), float)
        ax.plot(np.arange(6), 100 * ece, **ctx["styles"][name])
    ax.set(xlabel="severity (0 = clean)", ylabel="ECE (%)", xticks=range(6))
    ax.set_title("ECE vs severity: clean, then the mean over the corruptions of each condition's ECE")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


READINGS_SHOWN = ("softmax", "sigmoid")


def reading_bins(ctx, name, variant, severity):
    """(mean confidence, accuracy) of the non-empty 15 bins of one reading at one severity, or None."""
    bins = bin_means(ctx, f"{name}/readings/{variant}/{severity}")
    return None if bins is None else bins[:2]


def risk_coverage(ctx, name, variant, severity):
    """(coverage, risk) at every fine-bin boundary, most confident pixels first, or None: coverage = pixels
    kept / all, risk = errors among them / pixels kept (docs/calibration.md, AURC)."""
    key = f"{name}/readings/{variant}/{severity}"
    if f"{key}/fine_count" not in ctx["arrays"]:
        return None
    n = np.asarray(ctx["arrays"][f"{key}/fine_count"], dtype=np.float64)[::-1]
    w = n - np.asarray(ctx["arrays"][f"{key}/fine_correct"], dtype=np.float64)[::-1]
    kept = n > 0
    if not kept.any():
        return None
    cn, cw = np.cumsum(n)[kept], np.cumsum(w)[kept]
    return np.r_[0.0, cn / cn[-1]], np.r_[cw[0] / cn[0], cw / cn]


def has_readings(ctx):
    return any(f"{n}/readings/softmax/0/count" in ctx["arrays"] for n in ctx["array_names"])


def fig_readings(ctx):
    names, s = ctx["array_names"], ctx["reliability_severity"]
    fig, axes = plt.subplots(3, len(names), figsize=(max(6.0, 3.0 * len(names) + 0.6), 9.2), layout="constrained",
                             squeeze=False)
    styles = {"clean": {"color": "0.2", "linestyle": "-", "marker": "o"},
              "sev": {"color": (0.90, 0.62, 0.0), "linestyle": "--", "marker": "s"},
              "ts": {"color": (0.0, 0.45, 0.70), "linestyle": ":", "marker": "^"}}
    for col, name in enumerate(names):
        for row, reading in enumerate(READINGS_SHOWN):
            ax = axes[row, col]
            ax.plot([0, 1], [0, 1], color="0.6", lw=1)
            for style, variant, sev, label in (("clean", reading, 0, "clean"), ("sev", reading, s, f"severity {s}"),
                                               ("ts", f"{reading}_ts", s, f"severity {s}, temperature-scaled")):
                rel = reading_bins(ctx, name, variant, sev)
                if rel is not None:
                    ax.plot(*rel, **styles[style], markersize=4, label=label)
            ax.set(title=f"{name}: {reading} reading", xlim=(0, 1), ylim=(0, 1), aspect="equal",
                   xlabel="confidence (bin mean)", ylabel="accuracy" if col == 0 else None)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.legend(loc="upper left", fontsize=7)
        ax = axes[2, col]
        for reading, ls in zip(READINGS_SHOWN, ("-", "--")):
            for sev, colour in ((0, "0.2"), (s, (0.90, 0.62, 0.0))):
                rc = risk_coverage(ctx, name, reading, sev)
                if rc is not None:
                    ax.plot(*rc, color=colour, linestyle=ls, lw=1.2,
                            label=f"{reading}, {'clean' if sev == 0 else f'severity {s}'}")
        ax.set(title=f"{name}: risk-coverage", xlim=(0, 1), ylim=(0, None), xlabel="coverage (share of pixels kept)",
               ylabel="risk (error among kept)" if col == 0 else None)
        ax.grid(alpha=0.3)
        if col == 0:
            ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(f"Calibration in two readings (docs/calibration.md)\nseverity {s}: bins summed over the corruptions",
                 fontsize=10)
    return fig

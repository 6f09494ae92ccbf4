"""tables.md and the summary analyze_logits.py prints, both made from analysis.json's dict alone.

mIoU in percent with 1 decimal (as the paper's 42.1), ECE in percent with 2, other values to 3 decimals; a
trailing * marks an aggregate over an incomplete set of conditions; "–" an undefined value. The number of classes
and their names are analysis.json's "dataset" (the results folder's), so the captions say 21 on VOC and 19 on
Cityscapes; on a dataset without a background class, END and the notebook's Distance are said to be undefined."""
from common.calibration import VARIANTS
from common.corruptions import ALL_CORRUPTIONS, CORRUPTIONS

from .calibration_summary import BOOTSTRAPPED
from .conditions import SEVERITIES


def percent(x):
    """A fraction as percent with 1 decimal: mIoU."""
    return "–" if x is None else f"{100 * x:.1f}"


def percent_2dp(x):
    """A fraction as percent with 2 decimals: ECE."""
    return "–" if x is None else f"{100 * x:.2f}"


def three_decimals(x):
    return "–" if x is None else f"{x:.3f}"


def mark_incomplete(text, complete):
    """Incomplete aggregates carry a * (explained under the table)."""
    return text if complete or text == "–" else text + "*"


def interval_text(interval, scale=100, digits=2):
    """A bootstrap interval as "+x [+lower, +upper]", by default in percentage points."""
    if interval is None or interval["observed"] is None:
        return "–"
    text = (f"{scale * interval['observed']:+.{digits}f} [{scale * interval['lower']:+.{digits}f}, "
            f"{scale * interval['upper']:+.{digits}f}]")
    return mark_incomplete(text, interval.get("complete", True))


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def with_reference(m, analysis):
    """A model's name in a table's first column, the reference marked."""
    return m + (" (ref)" if m == analysis["reference"] else "")


def aggregate_cell(agg, fmt, value="value"):
    """An aggregate {value, complete} formatted, with a * where incomplete."""
    return mark_incomplete(fmt(agg[value]), agg["complete"])


def summary_rows(analysis):
    rows = []
    for m in analysis["models"]:
        entry = analysis["per_model"][m]
        comparison = analysis["bootstrap"]["comparisons"].get(m, {})
        rows.append([with_reference(m, analysis), percent(entry["clean_miou"]),
                     aggregate_cell(entry["mpc"], percent), aggregate_cell(entry["mean_sev0_5"], percent)]
                    + [aggregate_cell(entry[key], three_decimals) for key in ("rpc", "mcd", "mrcd")]
                    + [x for key in ("end", "distance", "distance_predicted")
                       for x in (three_decimals(entry[key]["clean"]),
                                 aggregate_cell(entry[key]["corrupted"], three_decimals))]
                    + [interval_text(comparison.get("clean")), interval_text(comparison.get("aggregate"))])
    return rows


SUMMARY_HEADER = ["model", "clean mIoU", "mPC", "mean sev. 0-5", "rPC", "mCD", "mrCD", "END clean", "END corr.",
                  "Distance clean", "Distance corr.", "Distance (pred.) clean", "Distance (pred.) corr.",
                  "Δ clean mIoU [95% CI]", "Δ mPC [95% CI]"]
SUMMARY_CAPTION = (     # {fg}: the number of foreground classes
    "mPC: mean mIoU over the 15 corruptions x severities 1-5 (75 conditions), the benchmark's definition. "
    "mean sev. 0-5: mean over the 15 corruptions of each corruption's mean mIoU over severities 0-5, severity 0 "
    "being the clean mIoU (one row of the notebook's results table per corruption, levels 0-5); complete, it is "
    "(clean + 5 x mPC) / 6. Which of the two the paper's headline (42.1 / 40.3 / 37.5) is, is not stated. "
    "Distance: the notebook's, mean over all {fg} foreground classes n of mean logit n minus mean background "
    "logit over the pixels predicted n, classes never predicted counting 0; Distance (pred.): the same mean "
    "over the foreground classes predicted at least once. corr. = mean over the corrupted conditions.")
# The Distance sentence on a dataset without a background class ({name}: the dataset's).
NO_BACKGROUND_DISTANCE = (
    "END, Distance and Distance (pred.): undefined: {name} has no background class (each compares a class's logit "
    "with class 0's as the background; metrics.jsonl has them null). corr. = mean over the corrupted conditions.")
CALIBRATION_CAPTION = (  # {k}: the number of classes; {structures}: how IBE/SCrIBE build theirs, if they can
    "Over the pixels whose label is not 255, from the softmax over the {k} output channels as the models "
    "build them{structures}. ECE: expected "
    "calibration error of the top-1 confidence, 15 equal-width bins, in **percent**; NLL: mean negative "
    "log-likelihood of the true class (nats); Brier: mean over pixels of the sum over the {k} classes of "
    "(p - one-hot)^2. corr. = mean over the corrupted conditions (15 corruptions x severities 1-5) of "
    "each condition's value. Δ: model minus the reference, with a paired bootstrap 95% interval on the "
    "mIoU bootstrap's resamples; lower is better for all three.")
READINGS_CAPTION = (
    "Each reading's formulas are in docs/calibration.md. ECE: 15 equal-width bins of the top-label "
    "confidence; adaptive ECE: 15 equal-mass bins; NLL and Brier of that reading's probabilities (the "
    "sigmoid's sum over the {k} one-vs-rest classes, so they are not comparable across readings); AURC: "
    "area under the risk-coverage curve (pixel error against confidence, lower is better); AUROC: "
    "confidence separating correct from wrong pixels (higher is better). corr. = mean over the corrupted "
    "conditions; * = incomplete.")
READING_TITLES = {"softmax": "softmax ({k}-way, every model's common reading)",
                  "sigmoid": "sigmoid (one-vs-rest per class, SCrIBE's own)",
                  "softmax_ts": "softmax after temperature scaling", "sigmoid_ts": "sigmoid after temperature scaling"}
# The columns of a reading's table: (metric, title, format).
READING_COLUMNS = [("ece", "ECE (%)", percent_2dp), ("ece_adaptive", "adaptive ECE (%)", percent_2dp),
                   ("nll", "NLL", three_decimals), ("brier", "Brier", three_decimals), ("aurc", "AURC", three_decimals),
                   ("auroc", "AUROC", three_decimals)]
READING_HEADER = [f"{title} {part}" for _, title, _ in READING_COLUMNS for part in ("clean", "corr.")]


def num_classes(analysis):
    return len(analysis["dataset"]["classes"])


def reading_title(analysis, v):
    """A reading's title with the number of classes."""
    return READING_TITLES[v].format(k=num_classes(analysis))


def readings_caption(analysis):
    return READINGS_CAPTION.format(k=num_classes(analysis))


def summary_caption(analysis):
    """The summary's caption: the Distance sentence over the dataset's foreground classes, or why it is undefined."""
    dataset = analysis["dataset"]
    text = SUMMARY_CAPTION.format(fg=num_classes(analysis) - 1)
    if not dataset["has_background"]:
        text = text[:text.index("Distance: ")] + NO_BACKGROUND_DISTANCE.format(name=dataset["name"])
    return text


def calibration_caption(analysis):
    k = num_classes(analysis)
    structures = (f" (IBE/SCrIBE: background = -logsumexp of the {k - 1} foreground logits)"
                  if analysis["dataset"]["has_background"] else "")
    return CALIBRATION_CAPTION.format(k=k, structures=structures)


def calibration_markdown(analysis):
    """The tables.md section "Calibration"."""
    models, per_model = analysis["models"], analysis["per_model"]
    comparisons = analysis["bootstrap"].get("calibration", {}).get("comparisons", {})

    def delta(intervals, key, scale, digits):
        return interval_text((intervals or {}).get(key), scale, digits)

    rows = []
    for m in models:
        cal = per_model[m].get("calibration")
        if cal is None:
            continue
        clean, corrupted, comparison = cal["clean"], cal["corrupted"], comparisons.get(m, {})
        rows.append([with_reference(m, analysis),
                     percent_2dp(clean["ece"]), aggregate_cell(corrupted["ece"], percent_2dp),
                     three_decimals(clean["nll"]), aggregate_cell(corrupted["nll"], three_decimals),
                     three_decimals(clean["brier"]), aggregate_cell(corrupted["brier"], three_decimals),
                     delta(comparison.get("clean"), "ece", 100, 2), delta(comparison.get("corrupted"), "ece", 100, 2),
                     delta(comparison.get("corrupted"), "nll", 1, 3),
                     delta(comparison.get("corrupted"), "brier", 1, 3)])
    header = ["model", "ECE clean", "ECE corr.", "NLL clean", "NLL corr.", "Brier clean", "Brier corr.",
              "Δ ECE clean [95% CI]", "Δ ECE corr. [95% CI]", "Δ NLL corr. [95% CI]", "Δ Brier corr. [95% CI]"]
    sev_rows = [[m] + [aggregate_cell(per_model[m]["calibration"]["per_severity"][str(s)], percent_2dp, "ece")
                       for s in range(6)] for m in models if per_model[m].get("calibration")]
    return ["## Calibration", "", calibration_caption(analysis), "", md_table(header, rows), "",
            "### ECE (%) per severity, mean over the 15 corruptions (0 = clean)", "",
            md_table(["model"] + [str(s) for s in range(6)], sev_rows), ""]


def reading_cells(entry):
    """Clean and corrupted value of each READING_COLUMNS metric of one reading's entry."""
    return [x for k, _, fmt in READING_COLUMNS
            for x in (fmt(entry["clean"].get(k)), aggregate_cell(entry["corrupted"][k], fmt))]


def own_reading_markdown(analysis):
    """tables.md: every model in the reading its loss trained it to produce."""
    rows = []
    for m in analysis["models"]:
        model = analysis["per_model"][m]
        entry = model.get("readings", {}).get(model.get("own_reading"))
        if entry:
            rows.append([m, model["own_reading"]] + reading_cells(entry))
    if not rows:
        return []
    return ["## Calibration in each structure's own reading", "",
            f"Baseline and IBE: the {num_classes(analysis)}-way softmax they were trained with; SCrIBE: the "
            "per-class sigmoid of its BCE training. " + readings_caption(analysis), "",
            md_table(["model", "reading"] + READING_HEADER, rows), ""]


def temperature_text(entry):
    t = entry.get("temperature")    # one number, a list where conditions differ, or None
    return "–" if t is None else (f"{t:.3f}" if not isinstance(t, list) else "varies")


def reading_markdown(analysis, v):
    """tables.md: one reading's table and its paired intervals to the reference."""
    comparisons = analysis["bootstrap"].get("readings", {}).get("readings", {}).get(v, {}).get("comparisons", {})
    rows, delta_rows = [], []
    for m in analysis["models"]:
        entry = analysis["per_model"][m].get("readings", {}).get(v)
        if not entry:
            continue
        rows.append([with_reference(m, analysis), temperature_text(entry)] + reading_cells(entry)
                    + ([percent_2dp(entry["clean"].get("ece_classwise"))] if v == "sigmoid" else []))
        comparison = comparisons.get(m)
        if comparison:    # ECE in points of %, the others as they are
            delta_rows.append([m] + [interval_text((comparison.get(part) or {}).get(k),
                                                   *((100, 2) if k.startswith("ece") else (1, 3)))
                                     for part in ("clean", "corrupted") for k in BOOTSTRAPPED])
    if not rows:
        return []
    out = [f"## Calibration, reading: {reading_title(analysis, v)}", "",
           ("Temperature T fitted per model on clean images that are not the test set (run.json's "
            "temperature), applied unchanged under every corruption. " if v.endswith("_ts") else "")
           + readings_caption(analysis),
           "", md_table(["model", "T"] + READING_HEADER + (["class-wise ECE (%) clean"] if v == "sigmoid" else []),
                        rows), ""]
    if delta_rows:
        out += [f"Δ to {analysis['reference']} ({reading_title(analysis, v)}), paired bootstrap 95% intervals "
                f"(ECE in points of %):",
                "", md_table(["model"] + [f"Δ {k} {part}" for part in ("clean", "corr.") for k in BOOTSTRAPPED],
                             delta_rows), ""]
    return out


def readings_markdown(analysis):
    """The tables.md sections of the readings (docs/calibration.md)."""
    return (own_reading_markdown(analysis) + [x for v in VARIANTS for x in reading_markdown(analysis, v)]
            + reading_severity_markdown(analysis))


def reading_severity_markdown(analysis):
    """tables.md: ECE per severity in every reading, before and after temperature scaling."""
    rows = []
    for m in analysis["models"]:
        for v in VARIANTS:
            entry = analysis["per_model"][m].get("readings", {}).get(v)
            if entry:
                rows.append([m, READING_TITLES[v].split(" (")[0]]
                            + [aggregate_cell({"complete": True, **entry["per_severity"][str(s)]}, percent_2dp, "ece")
                               for s in range(6)])
    if not rows:
        return []
    return ["### ECE (%) per severity in every reading, before and after temperature scaling (0 = clean)", "",
            md_table(["model", "reading"] + [str(s) for s in range(6)], rows), ""]


def worst_case_markdown(analysis):
    """tables.md: the lowest mIoU over the 15 corruptions per severity, with its paired interval."""
    comparisons = analysis["bootstrap"].get("worst_case", {}).get("comparisons", {})
    rows = []
    for m in analysis["models"]:
        worst = analysis["per_model"][m].get("worst_case")
        if not worst:
            continue
        cells = [mark_incomplete(f"{percent(w['miou'])} ({w['corruption']})" if w["miou"] is not None else "–",
                                 w["complete"]) for w in (worst[str(s)] for s in SEVERITIES)]
        rows.append([with_reference(m, analysis)] + cells + [interval_text((comparisons.get(m) or {}).get(str(s)))
                                                      for s in SEVERITIES])
    if not rows:
        return []
    return ["## Worst case: the lowest mIoU (%) over the 15 corruptions, per severity", "",
            "The corruption it is in brackets; Δ: model minus the reference's worst case (each model's own worst "
            "corruption), paired bootstrap 95% interval in points, the minimum recomputed in every resample.", "",
            md_table(["model"] + [f"sev. {s}" for s in SEVERITIES] + [f"Δ sev. {s} [95% CI]" for s in SEVERITIES],
                     rows), ""]


def header_markdown(analysis):
    """tables.md's title, the sweep it describes, the units, and the summary table."""
    source, boot = analysis["source"] or {}, analysis["bootstrap"]
    return [f"# Corruption robustness: {analysis['results']}", "",
            f"Protocol {source.get('protocol', '?')}, size {source.get('size', '?')}, "
            f"{source.get('images', '?')} images, "
            f"corruptions by {source.get('corruption_code', '?')} (docs/corruptions.md); "
            f"reference model for CD/rCD and Δ: **{analysis['reference']}**.",
            "mIoU, mPC and per-corruption/per-severity values are mIoU in **percent** (1 decimal); rPC, CD, "
            "rCD, END, Distance and explained variance are ratios/values to 3 decimals; Δ are differences "
            "to the reference in percentage points" + (
                f" with a paired bootstrap 95% interval ({boot['n_resamples']} resamples over "
                f"{boot['n_images']} images, seed {boot['seed']})" if boot["comparisons"]
                else " (no bootstrap: --bootstrap 0 or no confusion/ files)")
            + ". A trailing * marks an aggregate over an incomplete set of conditions.", "",
            "## Summary", "", md_table(SUMMARY_HEADER, summary_rows(analysis)), "", summary_caption(analysis), ""]


def preset_markdown(analysis):
    """tables.md: the --preset's own single number per model, when the sweep ran under one."""
    models, per_model = analysis["models"], analysis["per_model"]
    entries = {m: per_model[m].get("preset") for m in models if per_model[m].get("preset")}
    if not entries:
        return []
    first = next(iter(entries.values()))
    rule = ("mean over its corruptions of each one's mean over its severities"
            if first["aggregate"] == "mean_of_corruption_means" else "mean over its conditions")
    rows = [[m, aggregate_cell(e, percent)] for m, e in entries.items()]
    return [f"## Preset {first['preset']}", "", md_table(["model", "mIoU (%)"], rows), "",
            f"The preset's own aggregate ({first['aggregate']}: {rule}; docs/datasets.md, Presets).", ""]


def robustness_markdown(analysis):
    """tables.md: mIoU per corruption and per severity, CD and rCD per corruption."""
    models, per_model = analysis["models"], analysis["per_model"]
    out = preset_markdown(analysis)
    corrs = [c for c in ALL_CORRUPTIONS if any(c in per_model[m]["per_corruption"] for m in models)]
    if corrs:
        rows = [[m] + [aggregate_cell(per_model[m]["per_corruption"][c], percent, "miou")
                       if c in per_model[m]["per_corruption"] else "–" for c in corrs] for m in models]
        out += ["## mIoU (%) per corruption, mean over severities 1-5", "",
                md_table(["model"] + [c if c in CORRUPTIONS else c + " (held out)" for c in corrs], rows), ""]
    rows = [[m] + [aggregate_cell(per_model[m]["per_severity"][str(s)], percent, "miou") for s in range(6)]
            for m in models]
    out += ["## mIoU (%) per severity, mean over the 15 corruptions (0 = clean)", "",
            md_table(["model"] + [str(s) for s in range(6)], rows), ""]
    bench = [c for c in CORRUPTIONS if any(c in per_model[m]["cd"] for m in models)]
    for key, title in ((("cd", "CD"), ("rcd", "rCD")) if bench else ()):
        rows = [[m] + [aggregate_cell(per_model[m]["cd"][c], three_decimals, key) if c in per_model[m]["cd"] else "–"
                       for c in bench] for m in models]
        out += [f"## {title} per corruption (reference {analysis['reference']})", "",
                md_table(["model"] + bench, rows), ""]
    return out


def per_class_markdown(analysis):
    """tables.md: each class's IoU per model, clean and the mean over the corrupted conditions, one row a class."""
    models = [m for m in analysis["models"] if analysis["per_model"][m].get("per_class_iou")]
    if not models:
        return []
    entries = [analysis["per_model"][m]["per_class_iou"] for m in models]
    rows = [[f"{i} {name}"] + [x for e in entries for x in (percent(e["clean"][i]),
                                                             mark_incomplete(percent(e["corrupted"][i]),
                                                                             e["complete"]))]
            for i, name in enumerate(analysis["dataset"]["classes"])]
    return [f"## IoU (%) per class ({analysis['dataset']['name']}, {num_classes(analysis)} classes)", "",
            "clean: the clean condition; corr.: the mean over the corrupted conditions (15 corruptions x severities "
            "1-5) where the class's IoU is defined (\"–\": absent from both labels and predictions everywhere).", "",
            md_table(["class"] + [f"{m} {part}" for m in models for part in ("clean", "corr.")], rows), ""]


def explained_variance_markdown(analysis):
    """tables.md: the clean cumulative explained variance after 1, 2, 3, 5, 10 components, both definitions."""
    k = num_classes(analysis)
    components, rows = [c for c in (1, 2, 3, 5, 10) if c <= k], []
    for m in analysis["models"]:
        ev = analysis["per_model"][m]["explained_variance_clean"]
        for key, definition, used in (("cumulative", "predicted classes", (ev or {}).get("classes_used")),
                                      ("cumulative_notebook", f"notebook (all {k}, NaN as 0)", k)):
            cumulative = (ev or {}).get(key)
            rows.append([m, definition]
                        + [three_decimals(cumulative[k - 1]) if cumulative else "–" for k in components]
                        + [str(used) if ev else "–"])
    return ["## Cumulative explained variance of the clean class-mean logit matrix", "",
            f"From the {analysis['explained_variance_source']}. Rows of the PCA: the predicted classes' mean logit "
            "vectors "
            f"(classes never predicted left out), or as the notebook did, all {k} with a never-predicted class's "
            "mean set to 0.", "",
            md_table(["model", "definition"] + [f"{k} comp." for k in components] + ["rows"], rows), ""]


def tables_markdown(analysis):
    """The whole of tables.md from analysis.json's dict."""
    out = (header_markdown(analysis) + robustness_markdown(analysis) + per_class_markdown(analysis)
           + explained_variance_markdown(analysis)
           + calibration_markdown(analysis) + readings_markdown(analysis) + worst_case_markdown(analysis))
    if analysis["missing"]:
        out += ["## Missing", ""] + [f"- {x['message'][len('missing: '):]}" for x in analysis["missing"]] + [""]
    if analysis["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in analysis["notes"]] + [""]
    return "\n".join(out)


def print_summary(analysis):
    """The summary table's main columns on stdout."""
    shown = {"model": "model", "clean mIoU": "clean", "mPC": "mPC", "mean sev. 0-5": "sev0-5", "rPC": "rPC",
             "mCD": "mCD", "mrCD": "mrCD", "END clean": "END", "Distance clean": "Distance",
             "Distance (pred.) clean": "Dist.pred", "Δ clean mIoU [95% CI]": "Δclean [95% CI]",
             "Δ mPC [95% CI]": "ΔmPC [95% CI]"}
    cols = [SUMMARY_HEADER.index(h) for h in shown]
    header = list(shown.values())
    rows = [[r[i] for i in cols] for r in summary_rows(analysis)]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for r in [header] + rows:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())
    print("(mIoU in %, Δ in percentage points vs the reference; * = incomplete; END/Distance on clean)")



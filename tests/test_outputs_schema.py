"""docs/outputs.md against what analyze_logits.py writes: every key of analysis.json and analysis_arrays.npz that
a run on a small results folder writes is documented there, and every documented key is written.

The doc's keys are the first cells of the tables under "### `analysis.json`" and "### `analysis_arrays.npz`":
each backticked key, where one ``{a, b}`` group stands for the keys with a and with b. A JSON key is its path of
object keys joined by dots, ``[]`` after a list of objects; the keys that are names (models, corruptions, ...)
are written as the doc's placeholders (PLACEHOLDERS below). ``args`` and ``bootstrap.readings.temperature_fit``
hold another file's content and are not descended into."""
import json
import os
import re

import numpy as np

import analyze_logits as al
from common.calibration import VARIANTS
from common.corruptions import ALL_CORRUPTIONS
from common.presets import PRESETS
from test_analyze_logits import class_means_state, miou_oracle, random_counts, write_results

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "outputs.md")
METRICS = {"ece", "ece_adaptive", "nll", "brier", "aurc", "auroc", "ece_classwise"}
# The object whose keys are names, and the placeholder the doc writes for them.
PLACEHOLDERS = {
    "per_model": "<model>", "per_model.<model>.per_corruption": "<corruption>",
    "per_model.<model>.per_severity": "<s>", "per_model.<model>.cd": "<corruption>",
    "per_model.<model>.per_condition": "<condition>", "per_model.<model>.calibration.per_severity": "<s>",
    "per_model.<model>.readings": "<reading>", "per_model.<model>.readings.<reading>.per_severity": "<s>",
    "per_model.<model>.worst_case": "<s>", "bootstrap.comparisons": "<model>",
    "bootstrap.calibration.comparisons": "<model>", "bootstrap.readings.readings": "<reading>",
    "bootstrap.readings.readings.<reading>.comparisons": "<model>", "bootstrap.worst_case.comparisons": "<model>",
    "bootstrap.worst_case.comparisons.<model>": "<s>"}
OPAQUE = {"args", "bootstrap.readings.temperature_fit"}


def documented(section):
    """The keys of the doc's tables under the heading ``### `section` ``, each with its prefixes (the objects
    that hold it), and the keys alone."""
    text = open(DOC, encoding="utf-8").read()
    body = text.split(f"### `{section}`\n", 1)[1].split("\n#", 1)[0]
    keys = set()
    for line in body.splitlines():
        if not line.startswith("| `"):
            continue
        for key in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            group = re.search(r"\{([^}]*)\}", key)
            keys |= ({key[:group.start()] + k.strip() + key[group.end():] for k in group.group(1).split(",")}
                     if group else {key})
    sep = "/" if section.endswith(".npz") else "."
    prefixes = {k.rsplit(sep, i)[0].removesuffix("[]") for k in keys for i in range(1, k.count(sep) + 1)}
    return keys, keys | prefixes


def json_keys(value, path="", out=None):
    """Every key path of an analysis.json, names replaced by placeholders; metric names as <metric>."""
    out = set() if out is None else out
    if path in OPAQUE:
        return out
    if isinstance(value, dict):
        for k, v in value.items():
            name = PLACEHOLDERS.get(path, "<metric>" if k in METRICS else k)
            full = f"{path}.{name}" if path else name
            out.add(full)
            json_keys(v, full, out)
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict):
                json_keys(v, path + "[]", out)
    return out


def npz_key(key, models):
    """An analysis_arrays.npz key with its names replaced by the doc's placeholders."""
    parts = key.split("/")
    names = {**{m: "<model>" for m in models}, **{c: "<corruption>" for c in ALL_CORRUPTIONS},
             **{v: "<reading>" for v in VARIANTS}, **{str(s): "<s>" for s in range(6)}}
    return "/".join([names.get(parts[0], parts[0])] + [names.get(p, p) for p in parts[1:]])


def results_folder(root):
    """Two models (baseline, scribe), clean + two benchmark conditions, every file with all four calibration
    readings, and a shortside pass for the clean explained variance: every part of the analysis has numbers."""
    rng = np.random.default_rng(3)
    ids = [f"2010_{i:06d}" for i in range(5)]
    conds = [("clean", 0), ("fog", 2), ("gaussian_noise", 3)]
    kinds = {"base": "baseline", "scribe": "scribe"}
    state = class_means_state(rng, rng.integers(1, 200, size=21).astype(float))[:3]
    mious, confusion = {m: {} for m in kinds}, {m: {} for m in kinds}
    for skill, m in enumerate(kinds, 1):
        for cs in conds:
            tp, fp, fn = random_counts(rng, len(ids), skill)
            mious[m][cs], confusion[m][cs] = miou_oracle(tp, fp, fn), (ids, tp, fp, fn)
    logits = {m: {cs: state for cs in conds} for m in kinds}
    write_results(root, mious, kinds, confusion=confusion, logits=logits, run_models=list(kinds.items()),
                  readings=True, end={m: {cs: 0.1 for cs in conds} for m in kinds})
    # Swept under the paper's preset, so that analysis.json has the preset's aggregate too.
    run = json.load(open(root / "run.json"))
    run["preset"] = PRESETS["paper"].record()
    (root / "run.json").write_text(json.dumps(run))
    write_results(root / "shortside", {m: {("clean", 0): 0.5} for m in kinds}, kinds,
                  logits={m: {("clean", 0): state} for m in kinds}, run_models=list(kinds.items()),
                  protocol="shortside")


def test_every_written_key_is_documented_and_every_documented_key_written(tmp_path):
    results_folder(tmp_path)
    assert al.main(al.get_args_parser().parse_args(["--results", str(tmp_path), "--bootstrap", "20"])) == 0
    analysis = json.load(open(tmp_path / "analysis.json"))
    assert analysis["explained_variance_source"].startswith("shortside pass at")
    doc_keys, doc_all = documented("analysis.json")
    written = json_keys(analysis)
    assert sorted(written - doc_all) == [], "written to analysis.json but not in docs/outputs.md"
    assert sorted(doc_keys - written) == [], "in docs/outputs.md but not written to analysis.json"

    with np.load(tmp_path / "analysis_arrays.npz") as z:
        arrays = {npz_key(k, analysis["models"]) for k in z.files}
    doc_keys, doc_all = documented("analysis_arrays.npz")
    assert sorted(arrays - doc_all) == [], "written to analysis_arrays.npz but not in docs/outputs.md"
    assert sorted(doc_keys - arrays) == [], "in docs/outputs.md but not written to analysis_arrays.npz"


def test_the_doc_parser_reads_groups_and_placeholders():
    keys, with_prefixes = documented("analysis.json")
    assert {"per_model.<model>.mpc.value", "per_model.<model>.mpc.complete", "schema"} <= keys
    assert "per_model.<model>.mpc" in with_prefixes and "per_model.<model>.mpc" not in keys
    keys, _ = documented("analysis_arrays.npz")
    assert {"<model>/clean/mean", "<model>/readings/<reading>/<s>/fine_count", "models"} <= keys
    assert npz_key("base/fog/2/mean", ["base"]) == "<model>/<corruption>/<s>/mean"

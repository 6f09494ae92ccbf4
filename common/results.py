"""The results folder: one reader and one writer per file, each reader validating what it reads; one run per folder.

evaluate_corruptions.py writes, analyze_logits.py and make_figures.py read (layout in docs/outputs.md):

    <out>/run.json                               what decides the numbers (``identity``) and provenance
    <out>/metrics.jsonl                          one row per (model, corruption, severity)
    <out>/logits/<model>/<corruption>_<s>.npz    LogitTracker state (count, sum, sq) and END sums
    <out>/confusion/<model>/<corruption>_<s>.npz confusion, image_ids, per-image tp / fp / fn
    <out>/analysis.json, analysis_arrays.npz     analyze_logits.py's outputs, which make_figures.py reads

Every reader opens its file and checks keys, types, shapes and dtypes (finite where they must be); a damaged
file is a UsageError that names the file, what is wrong and the command that rewrites it. The sweep treats
its own finished conditions as a cache: it drops a damaged row or NPZ with a warning and computes it again.

A folder holds one run: ``first_difference`` compares the identity of two run.json dicts (checkpoint
sha256s, protocol, size, precision, data, images, corruption-library and torch versions, the VOC-C dump).
Taking, locking and replacing the folder itself (``--overwrite``) is common/folders.py's.
"""
import hashlib
import json
import math
import os
import sys

import numpy as np

from .cli import UsageError
from .corruptions import ALL_CORRUPTIONS, CORRUPTIONS
from .folders import write_npz, write_text

CLEAN = "clean"   # the severity-0 condition, shared by all corruptions
# The class dimension of every array: named, so that a file's arrays agree with each other on K (the dataset's
# classes: 21 on VOC, 19 on Cityscapes, 150 on ADE20K); run.json's "dataset" says which.
K = "k"
NUMBER_FIELDS = ("miou", "pixel_acc", "end", "distance", "distance_predicted", "ece", "nll", "brier")


def finite_or_none(x):
    """A number for JSON, which has no NaN: a float, or None where it is undefined (an absent class's IoU);
    lists element by element."""
    if isinstance(x, (list, tuple)):
        return [finite_or_none(v) for v in x]
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def sweep_rerun_hint(folder) -> str:
    """What rewrites a damaged row or NPZ of a sweep folder (the sweep recomputes what it finds damaged)."""
    return (f"rerun evaluate_corruptions.py with the same arguments and --out {folder}, which recomputes "
            f"every condition whose row or files are damaged")


def clipped_json(value, width: int = 48) -> str:
    """A value for a one-line message: JSON, cut to ``width`` characters."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


# ------------------------------------------------------------------------------------------ metrics.jsonl

def row_problem(row):
    """What is wrong with one metrics.jsonl row, or None. Only the fields every reader relies on are checked;
    writers may add fields (calibration, say)."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    lacking = [k for k in ("model", "corruption", "severity", "miou") if k not in row]
    if lacking:
        return f"no {', '.join(lacking)} field"
    c, s = row["corruption"], row["severity"]
    if not isinstance(row["model"], str) or not row["model"]:
        return "model must be a non-empty string"
    if c != CLEAN and c not in ALL_CORRUPTIONS:
        return f"unknown corruption {c!r}"
    if not isinstance(s, int) or isinstance(s, bool) or (c == CLEAN) != (s == 0) or not 0 <= s <= 5:
        return f"severity {s!r} does not fit corruption {c!r} (clean is severity 0, corruptions 1..5)"
    for k in NUMBER_FIELDS:
        v = row.get(k)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)):
            return f"{k} must be a number or null, got {v!r}"
    for k in ("images", "seconds"):
        v = row.get(k)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
            return f"{k} must be a non-negative number, got {v!r}"
    return None


def read_metrics(path, damaged: str = "error", hint=None):
    """Rows of metrics.jsonl, each checked by ``row_problem``; no two rows for one (model, condition).

    ``damaged="error"`` (the readers): a bad line, a missing or empty file is a UsageError naming the file and
    line. ``damaged="drop"`` (the sweep resuming): a bad line is dropped with a warning, rows repeating one
    (model, condition) are all dropped, a missing file is no rows; the sweep then recomputes those conditions.
    """
    folder = os.path.dirname(path) or "."
    hint = hint or sweep_rerun_hint(folder)
    if not os.path.isfile(path):
        if damaged == "drop":
            return []
        raise UsageError(f"{path}: not found; run evaluate_corruptions.py --out {folder} first "
                         f"(is --results a folder it wrote?)")
    try:
        with open(path, "rb") as fh:
            lines = fh.read().split(b"\n")
    except OSError as e:
        raise UsageError(f"{path}: unreadable ({e.strerror}); {hint}") from None
    rows, seen, bad = [], {}, set()
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            problem = row_problem(row)
        except (ValueError, UnicodeDecodeError) as e:
            problem = f"not valid JSON ({getattr(e, 'msg', None) or type(e).__name__})"
        if problem is None:
            key = (row["model"], row["corruption"], row["severity"])
            if key in seen:
                problem = f"repeats {key[0]} {key[1]}/{key[2]} from line {seen[key]}"
                bad.add(key)
            else:
                seen[key] = n
                rows.append(row)
                continue
        if damaged != "drop":
            raise UsageError(f"{path} line {n}: {problem}; {hint}")
        print(f"warning: {path} line {n}: {problem}; dropped (a condition left without its rows is computed "
              f"again)", file=sys.stderr)
    if damaged == "drop":
        return [r for r in rows if (r["model"], r["corruption"], r["severity"]) not in bad]
    if not rows:
        raise UsageError(f"{path}: no rows; has evaluate_corruptions.py --out {folder} finished any condition?")
    return rows


# ------------------------------------------------------------------------------------------------ run.json

def read_run(path, hint=None):
    """run.json as a dict, or None when absent; a damaged one (not JSON, not an object, models not a list of
    {name, sha256}, protocol / size / images of the wrong type) is a UsageError."""
    if not os.path.exists(path):
        return None
    hint = hint or (f"it is written by evaluate_corruptions.py; start the folder afresh with evaluate_corruptions.py "
                  f"--overwrite --out {os.path.dirname(path) or '.'}")

    def damaged(what):
        return UsageError(f"{path}: damaged ({what}); {hint}")

    try:
        with open(path, "rb") as fh:
            run = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise damaged(f"not valid JSON: {getattr(e, 'msg', None) or e}") from None
    if not isinstance(run, dict):
        raise damaged(f"expected a JSON object, got {type(run).__name__}")
    models = run.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                               and isinstance(m.get("sha256"), (str, type(None))) for m in models):
        raise damaged("models must be a list of {name, sha256}")
    for key, types in (("protocol", (str,)), ("size", (int, type(None))), ("images", (int,)),
                       ("voc_root", (str,)), ("data_root", (str,)), ("versions", (dict,)), ("args", (dict,)),
                       ("dataset", (dict,))):
        if key in run and (not isinstance(run[key], types) or isinstance(run[key], bool)):
            raise damaged(f"{key} is {clipped_json(run[key], 24)}")
    return run


def dataset_of(run):
    """The dataset a results folder was evaluated on (common.datasets.spec_from_record of run.json's "dataset"):
    its classes, names, palette and whether class 0 is a background class."""
    from .datasets import spec_from_record
    return spec_from_record(run["dataset"])


def check_rows_match_run(rows, run, metrics_path, run_path, hint=None):
    """Refuse rows that another run wrote: a model run.json does not list, or another checkpoint sha256,
    protocol, size or number of images than run.json says (fields absent on either side are not compared)."""
    if run is None:
        return
    hint = hint or (f"the folder mixes results of two runs; start it afresh with evaluate_corruptions.py "
                  f"--overwrite --out {os.path.dirname(run_path) or '.'}")
    shas = {m["name"]: m.get("sha256") for m in run.get("models", [])}
    for r in rows:
        where = f"{metrics_path}: the row for {r['model']} {r['corruption']}/{r['severity']}"
        if "models" in run and r["model"] not in shas:
            raise UsageError(f"{where} names a model that {run_path} does not list ({', '.join(shas) or 'none'}); "
                             f"{hint}")
        checks = [(k, r[k], run[k]) for k in ("corruption_code", "protocol", "size", "images") if k in r and k in run]
        if shas.get(r["model"]) is not None and r.get("checkpoint_sha256") is not None:
            checks.append(("checkpoint_sha256", r["checkpoint_sha256"], shas[r["model"]]))
        for key, got, want in checks:
            if got != want:
                raise UsageError(f"{where} has {key} {clipped_json(got, 20)}, {run_path} says "
                                 f"{clipped_json(want, 20)}; {hint}")


# ------------------------------------------------------------------------------------------------ run identity

def ids_sha256(ids) -> str:
    """A digest of a set of image ids (sorted, so shards merged in any order give the unsharded digest)."""
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()


def files_sha256(dataset) -> str:
    """A digest of what a VOC split holds: each image id (sorted) with the sha256 of its image and label files.

    The same files reached through a symlink, another spelling of the path or a copy on local scratch give the
    same digest, other pixels another one; so this, not the path, says whether two runs read the same data.
    Its cost is reading the split's files once per run (sha256's rate: BENCHMARKS.md, Decisions)."""
    from .folders import file_sha256

    h = hashlib.sha256()
    labels = getattr(dataset, "masks", None) or dataset.targets   # VOC's masks; the adapters' targets
    labels = [t[0] if isinstance(t, (list, tuple)) else t for t in labels]   # torchvision Cityscapes: [path]
    ids = getattr(dataset, "ids", None) or [os.path.splitext(os.path.basename(p))[0] for p in dataset.images]
    for image_id, image, mask in sorted(zip(ids, dataset.images, labels), key=lambda t: os.path.basename(t[1])):
        h.update(f"{image_id} {file_sha256(image)} {file_sha256(mask)}\n".encode())
    return h.hexdigest()


def same_data(key: str, old: dict, new: dict) -> bool:
    """Whether the differing ``...voc_root`` (or ``...data_root``) field ``key`` of two identities is the same val
    set read through another path: both record the files' digest (``data_sha256``), which is compared as a field
    of its own."""
    root = next((r for r in ROOT_FIELDS if key.endswith(r)), None)
    if root is None:
        return False
    digest = key[:-len(root)] + "data_sha256"
    return bool(old.get(digest) and new.get(digest))


# run.json fields that decide the numbers, in the order a difference is reported. Checkpoints are compared by
# their files' sha256, which covers the weights, the model config and the training recipe stored in them.
# The val set is compared by its files' digest (data_sha256), not by the path it was read from (same_data).
RUN_FIELDS = ("corruption_code", "protocol", "size", "amp", "data", "voc_root", "data_root", "split", "images",
              "image_ids_sha256", "shard", "seed_rule", "data_sha256", "calibration_stride", "dataset", "preset",
              "inference")
# The val set's root: "voc_root" on VOC, "data_root" on the other datasets; a run.json has one of them.
ROOT_FIELDS = ("voc_root", "data_root")
# What makes two VOC-C dumps give other pixels (dump_voc_c.py's manifest): the same in run.json's "voc_c".
VOCC_FIELDS = ("corruption_code", "protocol", "size", "seed_rule", "data", "voc_root", "data_root", "split",
               "image_ids_sha256", "data_sha256", "preset")


def identity(run) -> dict:
    """{field: value} of what decides a run's numbers (``require_identity`` has checked that run.json has them)."""
    out = {}
    if "models" in run:
        out["models"] = [m.get("name") for m in run["models"]]
        for m in run["models"]:
            out[f"checkpoint sha256 of {m.get('name')}"] = m.get("sha256")
    for k in RUN_FIELDS:
        if k in run:
            out[k] = run[k]
    for k, v in sorted((run.get("versions") or {}).items()):
        out[f"versions.{k}"] = v
    # A dump passes its check against the run's protocol, size, versions and data before it is used, and its
    # pixels equal those computed on the fly; so only two dumps are compared, a dump and none are not.
    if isinstance(run.get("voc_c"), dict):
        for k in VOCC_FIELDS + ("versions",):
            if k in run["voc_c"]:
                out[f"voc_c.{k}"] = run["voc_c"][k]
    # The clean images the temperatures were fitted on (evaluate_corruptions.py --calibration-split/-images);
    # null when none were. The fitted values follow from them and the checkpoints, so they are not compared.
    if "temperature" in run:
        t = run["temperature"]
        out["temperature fit images"] = None if not isinstance(t, dict) else \
            {k: t.get(k) for k in ("split", "images", "image_ids_sha256")}
    return out


def require_identity(run, path, hint) -> None:
    """Refuse a run.json without every field of ``RUN_FIELDS`` (one written by an earlier evaluate_corruptions.py):
    its numbers cannot be told apart from this run's."""
    lacking = [k for k in RUN_FIELDS if k not in run and k not in ROOT_FIELDS]
    if not any(k in run for k in ROOT_FIELDS):
        lacking.append("voc_root")
    if isinstance(run.get("voc_c"), dict):
        dump = run["voc_c"]
        lacking += [f"voc_c.{k}" for k in VOCC_FIELDS if k not in dump and k not in ROOT_FIELDS + ("preset",)]
        if not any(k in dump for k in ROOT_FIELDS):
            lacking.append("voc_c.voc_root")
    if lacking:
        raise UsageError(f"{path}: no {', '.join(lacking)} (written by an earlier evaluate_corruptions.py); {hint}")


def first_difference(old: dict, new: dict, skip=()):
    """(field, old value, new value) of the first identity field that differs, or None. A field only one side
    has is not compared: a VOC-C dump against none (its pixels equal those computed on the fly), the temperature
    fit's images where ``old`` has not recorded them yet."""
    a, b = identity(old), identity(json.loads(json.dumps(new)))
    # A model both runs name, from another checkpoint, is said first (more telling than the list of names).
    for key in sorted(b, key=lambda k: not k.startswith("checkpoint sha256 of ")):
        value = b[key]
        if key in skip or key not in a:
            continue
        if a[key] != value and not same_data(key, a, b):
            return key, a[key], value
    return None


LABELS = {"corruption_code": "--corruption-code", "models": "the models", "protocol": "--protocol", "size": "--size", "amp": "--amp", "data": "--data",
          "voc_root": "the val set at", "split": "the split", "images": "images:",
          "image_ids_sha256": "image ids sha256", "shard": "--shard", "seed_rule": "the seed rule",
          "data_sha256": "val files sha256", "calibration_stride": "--calibration-stride", "data_root": "the val set at",
          "dataset": "the dataset's classes", "preset": "--preset", "inference": "--inference"}


def message_value(value) -> str:
    """A value in a message: strings as they are (a sha256 as its first 12 digits), the rest as JSON; short."""
    if isinstance(value, str) and len(value) == 64 and all(ch in "0123456789abcdef" for ch in value):
        return value[:12] + "..."
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 48 else text[:45] + "..."


def describe(diff, old_words="made with", new_words="this run has") -> str:
    """(field, old, new) as "made with --size 224, this run has --size 96"."""
    field, was, now = diff
    if field.startswith("checkpoint sha256 of "):
        name = field[len("checkpoint sha256 of "):]
        return (f"{old_words} model {name} from one checkpoint (sha256 {message_value(was)}), {new_words} model "
                f"{name} from another checkpoint (sha256 {message_value(now)})")
    if field in ("preset", "voc_c.preset"):   # a preset record (or its name) is told by its name
        was, now = (v.get("name") if isinstance(v, dict) else (v or "none") for v in (was, now))
    if field.startswith("versions."):
        label = f"{field[len('versions.'):]}"
    elif field.startswith("voc_c."):
        label = f"the VOC-C dump's {field[len('voc_c.'):]}"
    else:
        label = LABELS.get(field, field)
    return f"{old_words} {label} {message_value(was)}, {new_words} {label} {message_value(now)}"


def has_results(folder) -> bool:
    return any(os.path.exists(os.path.join(folder, name)) for name in ("metrics.jsonl", "logits", "confusion"))


# --------------------------------------------------------------------------------------------------- NPZ files

def load_npz(path, spec: dict, hint: str, optional=()):
    """The arrays ``spec`` names, loaded and checked: {key: (dtype kinds, shape)}, a shape entry None meaning
    any length and a str meaning "the same length as other entries with that str" (shape None: any shape).
    Keys in ``optional`` may be absent. Float arrays must be finite unless their kinds string holds "n" (NaN allowed)."""
    def damaged(what):
        return UsageError(f"{path}: {what}; {hint}")

    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise damaged("a single .npy array, not an NPZ archive")
            absent = [k for k in spec if k not in z.files and k not in optional]
            if absent:
                more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
                raise damaged(f"no {absent[0]} array{more}: damaged, or written by an earlier version")
            arrays = {k: z[k] for k in spec if k in z.files}
    except UsageError:
        raise
    except Exception as e:   # a torn archive fails anywhere in zipfile (BadZipFile, EOFError) or numpy's parser
        raise UsageError(f"{path}: unreadable, damaged or truncated ({type(e).__name__}: {str(e)[:80]}); "
                         f"{hint}") from None
    # Named lengths come from the one-dimensional arrays first (image_ids says how many images there are).
    sizes = {}
    for k in sorted((k for k in arrays if spec[k][1] is not None), key=lambda k: len(spec[k][1])):
        for w, d in zip(spec[k][1], arrays[k].shape):
            if isinstance(w, str):
                sizes.setdefault(w, d)
    for k, a in arrays.items():
        kinds, shape = spec[k]
        if a.dtype.kind not in kinds.replace("n", ""):
            raise damaged(f"{k} has dtype {a.dtype} (damaged)")
        if shape is None:   # an array this reader does not interpret: any shape
            continue
        want = tuple(sizes.get(w, "n") if isinstance(w, str) else ("n" if w is None else w) for w in shape)
        if a.ndim != len(shape) or any(not isinstance(w, str) and w != d for w, d in zip(want, a.shape)):
            raise damaged(f"{k} has shape {a.shape}, expected {want}".replace("'", ""))
        if a.dtype.kind == "f" and "n" not in kinds and not np.isfinite(a).all():
            raise damaged(f"{k} holds NaN or infinite values (damaged)")
    return arrays


LOGITS_SPEC = {"count": ("f", (K,)), "sum": ("f", (K, K)), "sq": ("f", (K, K, K)),
               "end_sum": ("f", ()), "pixels": ("iu", ())}
CONFUSION_SPEC = {"confusion": ("iu", (K, K)), "image_ids": ("U", ("n",)), "tp": ("iu", ("n", K)),
                  "fp": ("iu", ("n", K)), "fn": ("iu", ("n", K))}


def read_logits(path, hint, keys=tuple(LOGITS_SPEC)):
    """One logits/<model>/<condition>.npz: count (21,) >= 0, sum (21, 21), sq (21, 21, 21), float64 and finite;
    end_sum, pixels (scalars)."""
    z = load_npz(path, {k: LOGITS_SPEC[k] for k in keys}, hint)
    if "count" in z and (z["count"] < 0).any():
        raise UsageError(f"{path}: negative pixel counts (damaged); {hint}")
    return z


# The calibration bins (common/calibration.py): totals over b bins and one row per image, in image_ids order; the
# fine log-odds bins (f) and the temperature; the same under each reading's prefix (calib_ the softmax,
# calib_sigmoid_, calib_softmax_ts_, calib_sigmoid_ts_), and the sigmoid reading's class-wise table (K x b, totals
# only). Every condition measures the softmax (no class-wise table) and sigmoid readings; the temperature-scaled
# ones only follow a temperature fit, and keep no fine bins.
def _calibration_spec(prefix):
    spec = {"count": ("iu", ("b",)), "conf_sum": ("f", ("b",)), "acc_sum": ("iuf", ("b",)), "nll_sum": ("f", ()),
            "brier_sum": ("f", ()), "pixels": ("iu", ()), "image_count": ("iu", ("n", "b")),
            "image_conf_sum": ("f", ("n", "b")), "image_acc_sum": ("iuf", ("n", "b")), "image_nll_sum": ("f", ("n",)),
            "image_brier_sum": ("f", ("n",)), "temperature": ("f", ()), "stride": ("iu", ()), "fine_count": ("iu", ("f",)),
            "fine_correct": ("iu", ("f",)), "fine_conf_sum": ("f", ("f",)), "image_fine_count": ("iu", ("n", "f")),
            "image_fine_correct": ("iu", ("n", "f")), "image_fine_conf_sum": ("f", ("n", "f")),
            "classwise_count": ("iu", (K, "b")), "classwise_conf_sum": ("f", (K, "b")),
            "classwise_pos": ("iu", (K, "b"))}
    return {prefix + k: v for k, v in spec.items()}


CALIBRATION_PREFIXES = ("calib_", "calib_sigmoid_", "calib_softmax_ts_", "calib_sigmoid_ts_")
CALIBRATION_SPEC = {k: v for p in CALIBRATION_PREFIXES for k, v in _calibration_spec(p).items()}
CALIBRATION_OPTIONAL = tuple(k for k in CALIBRATION_SPEC if k.startswith(("calib_softmax_ts_", "calib_sigmoid_ts_"))
                             or (k.startswith("calib_classwise_")))
# ACDC's sweeps also store each image's real condition (fog, night, rain, snow), in image_ids order.
GROUPS_SPEC = {"image_groups": ("U", ("n",))}


def read_confusion(path, hint, keys=tuple(CONFUSION_SPEC) + tuple(CALIBRATION_SPEC) + tuple(GROUPS_SPEC)):
    """One confusion/<model>/<condition>.npz: confusion (21, 21), image_ids (n,), tp / fp / fn (n, 21), counts >= 0,
    the softmax and sigmoid readings' calibration arrays, and the temperature-scaled ones where the file has them."""
    spec = {**CONFUSION_SPEC, **CALIBRATION_SPEC, **GROUPS_SPEC}
    z = load_npz(path, {k: spec[k] for k in keys}, hint, optional=CALIBRATION_OPTIONAL + tuple(GROUPS_SPEC))
    for k in ("confusion", "tp", "fp", "fn"):
        if k in z and (z[k] < 0).any():
            raise UsageError(f"{path}: negative counts in {k} (damaged); {hint}")
    return z


def logits_path(folder, model, corruption, severity) -> str:
    return os.path.join(folder, "logits", model, f"{corruption}_{severity}.npz")


def confusion_path(folder, model, corruption, severity) -> str:
    return os.path.join(folder, "confusion", model, f"{corruption}_{severity}.npz")


def write_condition(folder, model, corruption, severity, logits: dict, confusion: dict) -> None:
    """One condition's two NPZ files (``LOGITS_SPEC`` and ``CONFUSION_SPEC`` with the calibration arrays)."""
    write_npz(logits_path(folder, model, corruption, severity), **logits)
    # Deflated: the per-image calibration tables are mostly small counts (4x smaller on VOC, BENCHMARKS.md).
    write_npz(confusion_path(folder, model, corruption, severity), compressed=True, **confusion)


def write_run(folder, run: dict) -> None:
    write_text(os.path.join(folder, "run.json"), json.dumps(run, indent=1) + "\n")


def write_metrics(folder, rows) -> None:
    """metrics.jsonl, rewritten whole (temp + rename, so a kill never tears it): clean first, then the 15
    corruptions in the paper's order (any other by name), each by severity, then model."""
    key = {c: i for i, c in enumerate((CLEAN,) + CORRUPTIONS)}
    rows = sorted(rows, key=lambda r: (key.get(r["corruption"], 99), r["corruption"], r["severity"], r["model"]))
    write_text(os.path.join(folder, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))


def condition_problem(folder, model, corruption, severity):
    """Why one finished condition of the sweep cannot be reused (a file missing or damaged), or None."""
    for path, read in ((logits_path(folder, model, corruption, severity), read_logits),
                       (confusion_path(folder, model, corruption, severity), read_confusion)):
        if not os.path.exists(path):
            return f"{path} is missing"
        try:
            read(path, "")
        except UsageError as e:
            return str(e).rstrip("; ")
    return None


# --------------------------------------------------------------------------------- analyze_logits.py outputs

# analysis_arrays.npz: the shape of each array by the last part of its key (analyze_logits.py's docstring).
ARRAY_SHAPES = {"count": (K,), "mean": (K, K), "distance": (K, K), "correlation": (K, K, K),
                "correlation_notebook": (K, K, K), "explained_variance": (K,), "explained_variance_notebook": (K,),
                "explained_variance_count": (K,)}


def read_analysis_arrays(path, hint):
    """analysis_arrays.npz as {key: array}: models (M,) str, then float arrays of the documented shapes
    (NaN allowed: undefined entries); any other key is refused as damage."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = list(z.files) if hasattr(z, "files") else None
    except Exception as e:   # torn, zero bytes, not a zip
        raise UsageError(f"{path}: unreadable, damaged or truncated ({type(e).__name__}: {str(e)[:80]}); "
                         f"{hint}") from None
    if files is None or "models" not in files:
        raise UsageError(f"{path}: damaged (no models array); {hint}")
    spec = {"models": ("U", (None,)), "classes": ("U", (K,)), "explained_variance_source": ("U", ())}
    for key in files:   # <model>/clean/<array> and <model>/<corruption>/<severity>/<array>; others unchecked
        parts = key.split("/")
        if key not in spec and parts[-1] in ARRAY_SHAPES and (
                (len(parts) == 3 and parts[1] == CLEAN) or (len(parts) == 4 and parts[1] in ALL_CORRUPTIONS)):
            spec[key] = ("fn", ARRAY_SHAPES[parts[-1]])
        elif key not in spec:   # written by another part of analyze_logits.py (calibration, say): passed on as is
            spec[key] = ("biufUn", None)
    return load_npz(path, spec, hint, optional=("classes", "explained_variance_source"))


def read_analysis(path, hint):
    """analysis.json as a dict, or None when absent; it must be analyze_logits.py's schema."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as fh:
            a = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: damaged (not valid JSON: {getattr(e, 'msg', None) or e}); {hint}") from None
    if not isinstance(a, dict) or not str(a.get("schema", "")).startswith("analyze_logits/") or \
            not isinstance(a.get("models"), list) or not isinstance(a.get("source"), (dict, type(None))):
        raise UsageError(f"{path}: damaged (not analyze_logits.py's schema); {hint}")
    return a

"""Self-describing checkpoints: one dict that rebuilds its model from the file alone.

    save_checkpoint(path, dict(model=..., optimizer=..., ...))   # atomic: temp file + rename
    model, ckpt = load_model("runs/scribe/checkpoint.pt")              # weights_only=True, never unpickles code

Layout: ``model`` (state dict), ``model_config`` (kwargs of ``build_model`` minus the weights source),
``name``, ``epoch``, ``args`` (the training command's arguments), ``optimizer``, ``scheduler``,
``scaler``, ``rng``, ``best_miou``, ``val`` (last validation metrics), ``git_commit``, ``versions``, ``dataset``
(``common.datasets.dataset_record``: the classes trained on). ``model_config["num_outputs"]`` is N for the
baseline and N - 1 for IBE / SCrIBE: ``load_model`` rebuilds the model for the dataset's N classes from it.
"""
import os
import pickle
import re
import warnings

import torch

from .cli import UsageError, check_plain_name
from .folders import atomic_write


def save_checkpoint(path: str, ckpt: dict) -> None:
    def write(tmp):
        # Through a Python file, so that a full or read-only disk raises OSError with its errno (torch's own
        # file writer reports it as "RuntimeError: ... unexpected pos ...").
        with open(tmp, "wb") as fh:
            torch.save(ckpt, fh)
    atomic_write(path, write)


def _rewrite_hint(path: str) -> str:
    return (f"checkpoints are written by train.py: re-run the train.py command that made it (move {path} away "
            f"first: train.py never overwrites one), or use another checkpoint")


def _flat(text: str, limit: int = 200) -> str:
    """An exception's text on one line (torch's load_state_dict errors span several), shortened."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " ..."


# build_model's keywords that a checkpoint may set. Not pretrained_backbone: a stored config must not make
# the loader open another file or download weights (the checkpoint carries all of them).
CONFIG_KEYS = ("kind", "arch", "backbone", "output_stride", "head_channels", "ibe_placement", "num_outputs")


def read_checkpoint(path: str) -> dict:
    """Load a checkpoint safely (``weights_only=True``) and check it is one of ours.

    Every way a file can be damaged or foreign (missing, empty, truncated, not a torch file, code in its
    pickle, no ``model``/``model_config``, a stored ``name`` that is not a plain file name) is one UsageError
    naming the file and what to do.
    """
    if not os.path.isfile(path):
        what = "not a regular file" if os.path.exists(path) else "no such file"
        raise UsageError(f"checkpoint {path}: {what}")
    if os.path.getsize(path) == 0:
        raise UsageError(f"checkpoint {path}: the file is empty (0 bytes; a copy or a write that did not finish); "
                         f"{_rewrite_hint(path)}")
    try:
        with warnings.catch_warnings():   # torch warns about a file's pickle protocol before refusing it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses anything that would run code on load (pickled callables, classes): torch names
        # the GLOBAL. Any other refusal ("Unsupported operand") is a byte stream that is no torch file.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:
            raise UsageError(f"checkpoint {path}: unreadable (torch's weights-only reader refused its bytes); is it "
                             f"truncated or not a torch checkpoint? {_rewrite_hint(path)}") from None
        raise UsageError(f"checkpoint {path}: refused, it holds {found.group(1)}, which would run code when unpickled "
                         f"(loaded with weights_only=True); use a checkpoint written by train.py, or re-save "
                         f"this one as plain tensors if you trust its source") from None
    except Exception as e:
        raise UsageError(f"checkpoint {path}: unreadable ({type(e).__name__}: {_flat(e, 120)}); is it truncated "
                         f"or not a torch checkpoint? {_rewrite_hint(path)}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise UsageError(f"checkpoint {path}: not a checkpoint written by train.py (no model_config; a bare "
                         f"state dict cannot say which model it belongs to); {_rewrite_hint(path)}")
    cfg = ckpt["model_config"]
    if not isinstance(cfg, dict) or not isinstance(ckpt["model"], dict):
        raise UsageError(f"checkpoint {path}: damaged, its model_config is a {type(cfg).__name__} and its model a "
                         f"{type(ckpt['model']).__name__} (expected two dicts); {_rewrite_hint(path)}")
    unknown = sorted(str(k) for k in cfg if k not in CONFIG_KEYS)
    if unknown:
        raise UsageError(f"checkpoint {path}: its model_config has keys this code does not know ({', '.join(unknown)}"
                         f"; expected only {', '.join(CONFIG_KEYS)}); written by another version? "
                         f"{_rewrite_hint(path)}")
    name = ckpt.get("name")
    if not (name is None or isinstance(name, str) and name == ""):   # no stored name: the scripts use the kind
        check_plain_name(name, f"checkpoint {path}")
    return ckpt


def load_model(path: str, device="cpu"):
    """Rebuild the model a checkpoint describes, load its weights, and return ``(model.eval(), ckpt)``.

    A config that names no model of ours, or weights whose names, shapes or dtypes do not fit the model it
    describes, is one UsageError naming the file (never a model that would fail or compute garbage later).
    """
    from .models import build_model

    ckpt = read_checkpoint(path)
    cfg = dict(ckpt["model_config"])
    outputs = cfg.pop("num_outputs", None)
    if outputs is not None:   # the head's channels: N classes for the baseline, N - 1 for IBE / SCrIBE
        cfg["num_classes"] = outputs + 1 if cfg.get("kind") in ("ibe", "scribe") and type(outputs) is int else outputs
    if "ibe_placement" not in cfg:   # every model_config records it; build_model's default would be a guess
        raise UsageError(f"checkpoint {path}: its model_config has no ibe_placement (an earlier train.py's "
                         f"format); {_rewrite_hint(path)}")
    if cfg["ibe_placement"] is None and cfg.get("kind") not in ("ibe", "scribe"):
        cfg["ibe_placement"] = "output"   # the baseline records None (it has no IBE); build_model wants a value
    # Built on the meta device (no memory, no random init, which dominated loading: BENCHMARKS.md, Decisions),
    # then the checkpoint's tensors are assigned in place of the empty ones.
    try:
        with torch.device("meta"):
            model = build_model(**cfg)
    except (UsageError, TypeError, ValueError, KeyError) as e:
        raise UsageError(f"checkpoint {path}: its model_config {_flat(cfg, 160)} describes no model this code "
                         f"builds ({_flat(e, 160)}); {_rewrite_hint(path)}") from None
    want = {n: t.dtype for n, t in model.state_dict().items()}
    try:
        model.load_state_dict(ckpt["model"], assign=True)
    except (RuntimeError, TypeError, ValueError, AttributeError, KeyError) as e:
        raise UsageError(f"checkpoint {path}: weights do not fit its model_config ({_flat(e, 160)}); "
                         f"{_rewrite_hint(path)}") from None
    # assign=True keeps the stored tensors as they are: a float16 or integer copy of a weight would load,
    # then fail (or silently change the arithmetic) in the first forward.
    wrong = [f"{n} is {t.dtype}, expected {want[n]}" for n, t in model.state_dict().items() if t.dtype != want[n]]
    if wrong:
        raise UsageError(f"checkpoint {path}: weights do not fit its model_config ({'; '.join(wrong[:2])}"
                         f"{f'; {len(wrong)} in all' if len(wrong) > 2 else ''}); {_rewrite_hint(path)}")
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:   # a tensor the state dict does not carry (none today); never run a model with empty ones
        raise UsageError(f"checkpoint {path}: no values for {left[:3]}; it was not written by this train.py")
    check_finite_weights(model.state_dict(), f"checkpoint {path}", _rewrite_hint(path))
    return model.to(device).eval(), ckpt


def check_finite_weights(state: dict, what: str, fix: str) -> None:
    """Refuse NaN or infinite values in any floating tensor of a state dict (weights and BatchNorm statistics
    alike): such a model predicts garbage, or one class everywhere, and every number made with it would be
    silently wrong. ``what`` names the model in the message."""
    bad = [n for n, t in state.items() if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UsageError(f"{what}: {bad[0]} holds NaN or infinite values{f' ({len(bad)} tensors in all)' if len(bad) > 1 else ''}"
                         f" (a diverged or damaged model); {fix}")


def check_finite_logits(logits, what: str, where: str = "") -> None:
    """Refuse logits that hold NaN or infinite values (``what`` names the model, ``where`` the batch): argmax,
    bincount and every statistic downstream would fail obscurely or quietly count garbage."""
    if not bool(torch.isfinite(logits).all()):
        raise UsageError(f"{what}: its logits hold NaN or infinite values{where} although its weights are "
                         f"finite (its forward overflows or divides by zero); fix the model or evaluate another")


def check_first_output(model, what: str) -> None:
    """Check the logits of ``model``'s first forward (``check_finite_logits``), then stop checking: a model that
    computes NaN is refused at its first batch by every script that runs it."""
    def hook(module, inputs, output):
        handle.remove()
        check_finite_logits(output, what, " on its first batch")

    handle = model.register_forward_hook(hook)


def changed_settings(old: dict, new: dict) -> list:
    """``--flag old -> new`` for each setting of ``new`` whose recorded value in ``old`` differs (a missing
    one reads None): what a run that refuses to overwrite or resume another run's output says."""
    return [f"--{k.replace('_', '-')} {old.get(k)} -> {v}" for k, v in new.items() if old.get(k) != v]


def save_random_checkpoint(path, kind: str, seed: int = 0, name=None, **model_kw) -> str:
    """A random-weight model (``build_model(kind, **model_kw)``) saved the way train.py saves one, for tests and
    benchmarks. BatchNorm gets non-trivial running statistics, so that eval-mode outputs vary across classes
    (all-one-class predictions would also make per-class work unrealistically cheap)."""
    from .models import build_model

    torch.manual_seed(seed)
    model = build_model(kind, **model_kw)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    save_checkpoint(str(path), {"model": model.state_dict(), "model_config": model.config, "name": name or kind,
                                "epoch": 0, "args": {}})
    return str(path)

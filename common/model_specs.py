"""Models from outside train.py: a model spec -> a loaded model plus the identity that is recorded for it.

    model, info = load_spec("runs/scribe/checkpoint.pt")                           # ours, as before
    model, info = load_spec("torchvision:deeplabv3_resnet50:COCO_WITH_VOC_LABELS_V1")
    model, info = load_spec("torchvision:fcn_resnet50", weights_file="my_fcn.pth")   # a state dict
    model, info = load_spec("mypackage.models:build_net", model_kind="ibe")          # your own factory

Three kinds of spec, told apart by their form:

* a path to an existing file: a self-describing checkpoint written by train.py (``common.checkpoint``);
* ``torchvision:<builder>[:<weights>]``: a builder of ``torchvision.models.segmentation`` whose published
  weights predict the 21 VOC classes (all six of torchvision 0.29: deeplabv3 / fcn on ResNet-50/101,
  deeplabv3 / lraspp on MobileNetV3). ``<weights>`` is the weights enum's member name (default ``DEFAULT``),
  loaded through torchvision's weights API, which reads ``torch.hub.get_dir()/checkpoints/<file of the URL>``
  (``$TORCH_HOME/hub/checkpoints``) and downloads there when online; or ``weights_file`` (a state dict) instead.
  The model is built with ``aux_loss=False`` and the weights' ``aux_classifier.*`` keys are dropped, so the
  auxiliary head is neither built nor run; its ``out`` output is used. These weights expect ImageNet mean/std
  normalisation, the same as ours (checked against the weights' own preset); torchvision's preset also
  resizes the short side to 520, which the sweep does not: the model sees the protocol's size, like ours.
* ``module.path:factory``: ``importlib.import_module("module.path").factory()`` (the current folder is
  importable) must return an ``nn.Module`` whose output, a tensor or a dict with ``out``, is B x C x h x w
  logits with h x w at most the input's; smaller outputs are upsampled bilinearly (align_corners=False) to
  the input size. ``model_kind`` says how to read them: ``baseline`` wants C = 21 softmax logits; ``ibe``
  and ``scribe`` take C = 21 as built (channel 0 already the background) or C = 20 foreground logits, to which
  the background -logsumexp is added after the upsampling (``--ibe-placement output``).

``info`` is what evaluate_corruptions.py writes to run.json for the model: ``name`` (a default display name;
the caller checks it with ``check_plain_name``), ``path`` (the checkpoint's absolute path, or the spec string),
``sha256``, ``kind``, ``config``, and for torchvision and factory models ``identity`` {spec, source, builder or
factory, weights, weights_file, weights_sha256, model_kind, torchvision}. For those, ``sha256`` is the SHA-256
of the identity's parts that fix the numbers (builder or factory, weights SHA-256, model kind, torchvision
version), so a rerun into the same folder, or a merge, with other weights or another kind is refused just as
it is for another checkpoint file. ``weights_sha256`` is the weights file's SHA-256 (the hub cache file or
``weights_file``); a factory without a weights file has the SHA-256 of its state dict (``state_dict_sha256``).
"""
import hashlib
import importlib
import inspect
import json
import os
import re
import sys
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import check_finite_weights, check_first_output, load_model
from .cli import UsageError
from .constants import CLASSES, IMAGENET_MEAN, IMAGENET_STD, NUM_CLASSES
from .models import KINDS, implicit_background
from .folders import file_sha256

TORCHVISION = "torchvision:"
FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
PROBE_SIDE = 64  # a factory's output is checked on one 64x64 zero image before any work


def spec_kind(spec: str) -> str:
    """"checkpoint", "torchvision" or "factory". An existing file is always a checkpoint (a path may hold a
    colon); anything that is neither a torchvision spec nor module:factory is taken as a checkpoint path, so
    that a missing file is reported as one."""
    if spec.startswith(TORCHVISION):
        return "torchvision"
    if not os.path.exists(spec) and FACTORY_RE.match(spec):
        return "factory"
    return "checkpoint"


def add_model_arguments(p, where: str) -> None:
    """--weights-file and --model-kind, for the scripts whose ``where`` flags take model specs."""
    p.add_argument("--weights-file", nargs="+", default=None, metavar="PATH",
                   help=f"state dicts for the torchvision:<builder> and module:factory specs of {where}, one per "
                        f"such spec in their order ('-': none; a torchvision spec then loads its weights through "
                        f"torchvision's weights API, a factory keeps its own)")
    p.add_argument("--model-kind", nargs="+", choices=KINDS, default=None, metavar="KIND",
                   help=f"how to read the logits of the module:factory specs of {where} (baseline: 21 softmax "
                        f"logits; ibe/scribe: 21 as built, or 20 foreground logits that get background = "
                        f"-logsumexp): one for all, or one per factory spec in order; default baseline")


def model_options(specs, weights_files=None, model_kinds=None, where="--checkpoints"):
    """Pair --weights-file and --model-kind with the specs: a list of (weights_file or None, kind or None)."""
    kinds = [spec_kind(s) for s in specs]
    external = [i for i, k in enumerate(kinds) if k != "checkpoint"]
    factories = [i for i, k in enumerate(kinds) if k == "factory"]
    files = [None] * len(specs)
    if weights_files:
        if len(weights_files) != len(external):
            raise UsageError(f"--weights-file: {len(weights_files)} file(s) for {len(external)} torchvision: or "
                             f"module:factory spec(s) in {where}; give one per such spec, in order ('-' for none)")
        for i, f in zip(external, weights_files):
            files[i] = None if f == "-" else f
    chosen = [None] * len(specs)
    if model_kinds:
        if not factories:
            raise UsageError(f"--model-kind applies to module:factory specs only, and {where} has none "
                             f"(checkpoints know their kind; torchvision's models are baseline)")
        if len(model_kinds) not in (1, len(factories)):
            raise UsageError(f"--model-kind: {len(model_kinds)} kinds for {len(factories)} factory spec(s); give "
                             f"one for all or one per factory spec")
        for n, i in enumerate(factories):
            chosen[i] = model_kinds[0] if len(model_kinds) == 1 else model_kinds[n]
    return list(zip(files, chosen))


def load_spec(spec: str, device="cpu", weights_file=None, model_kind=None, hash_file=True, dataset=None):
    """``(model.eval() on device, info)`` for any spec (module docstring). ``hash_file=False`` leaves a
    checkpoint's ``sha256`` as None for the caller to fill (make_video.py does not need it)."""
    kind = spec_kind(spec)
    if kind == "checkpoint":
        model, ckpt = load_model(spec, device)
        check_first_output(model, f"model {ckpt.get('name') or model.config['kind']} (checkpoint {spec})")
        return model, {"name": ckpt.get("name") or model.config["kind"], "path": os.path.abspath(spec),
                       "sha256": file_sha256(spec) if hash_file else None, "kind": model.config["kind"],
                       "config": model.config, "held_out": (ckpt.get("args") or {}).get("held_out") or [],
                       "dataset": ckpt.get("dataset")}
    if kind == "torchvision":
        parts = spec[len(TORCHVISION):].split(":")
        if len(parts) > 2 or not parts[0]:
            raise UsageError(f"{spec}: expected torchvision:<builder>[:<weights>], e.g. "
                             f"torchvision:deeplabv3_resnet50:COCO_WITH_VOC_LABELS_V1")
        net, identity = load_torchvision(spec, parts[0], parts[1] if len(parts) == 2 else None, weights_file)
        name = parts[0]
        model = ExternalModel(net, "baseline", {"source": "torchvision", "builder": name, "arch": name}, spec)
    else:
        module, attr = spec.split(":")
        net, identity = load_factory(spec, module, attr, weights_file)
        name = attr.split(".")[-1]
        model = ExternalModel(net, model_kind or "baseline", {"source": "factory", "factory": spec, "arch": attr},
                              spec)
    check_finite_weights(net.state_dict(), spec, "use other weights (--weights-file) or fix the model")
    if kind != "torchvision":
        probe(model.to(device), spec)
    check_first_output(model, f"model {name} ({spec})")
    identity["model_kind"] = model.config["kind"]
    identity["torchvision"] = torchvision_version()
    fixed = {k: identity.get(k) for k in ("source", "builder", "factory", "weights_sha256", "model_kind",
                                          "torchvision")}
    sha = hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()
    return model.to(device).eval(), {"name": name, "path": spec, "sha256": sha, "kind": model.config["kind"],
                                     "config": model.config, "identity": identity}


def load_recorded(info: dict, device="cpu"):
    """Reload a model from its run.json entry (make_figures.py's default): the checkpoint file, or the spec
    with the weights file and kind it was evaluated with."""
    ident = info.get("identity")
    if not ident:
        return load_spec(info["path"], device)
    # weights named in a torchvision spec come through the weights API again; a --weights-file is reread
    weights_file = ident.get("weights_file") if not ident.get("weights") else None
    return load_spec(ident["spec"], device, weights_file, ident.get("model_kind"))


class ExternalModel(nn.Module):
    """A torchvision or factory model read as ours: B x 21 x H x W logits at the input's resolution."""

    def __init__(self, net: nn.Module, kind: str, config: dict, spec: str):
        super().__init__()
        self.net = net
        self.spec = spec
        self.config = dict(kind=kind, **config)

    def forward(self, x):
        out = self.net(x)
        if isinstance(out, dict):
            if "out" not in out:
                raise UsageError(f"{self.spec}: the model returned a dict without 'out' (keys {sorted(out)[:5]}); "
                                 f"return the logits or a dict with 'out'")
            out = out["out"]
        want = (NUM_CLASSES - 1, NUM_CLASSES) if self.config["kind"] in ("ibe", "scribe") else (NUM_CLASSES,)
        if not torch.is_tensor(out) or out.dim() != 4 or out.shape[0] != x.shape[0] or out.shape[1] not in want:
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise UsageError(f"{self.spec}: the model returned {shape} for an input of {tuple(x.shape)}; expected "
                             f"B x {' or '.join(map(str, want))} x h x w logits "
                             f"(model kind {self.config['kind']}; --model-kind says how to read them)")
        size = x.shape[-2:]
        if out.shape[-2] > size[0] or out.shape[-1] > size[1]:
            raise UsageError(f"{self.spec}: the model's output {tuple(out.shape[-2:])} is larger than its input "
                             f"{tuple(size)}; return logits at the input's resolution or lower")
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        if out.shape[1] == NUM_CLASSES - 1:
            out = implicit_background(out)   # after the upsampling: exact -logsumexp at every scored pixel
        return out


def probe(model: ExternalModel, spec: str) -> None:
    """One forward on a zero image, so a wrong output is reported before the sweep starts, not mid-way."""
    model.eval()
    x = torch.zeros(1, 3, PROBE_SIDE, PROBE_SIDE, device=next(model.parameters(), torch.empty(0)).device)
    try:
        with torch.inference_mode():
            model(x)
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"{spec}: the model fails on a 1x3x{PROBE_SIDE}x{PROBE_SIDE} image "
                         f"({type(e).__name__}: {str(e)[:160]})") from None


def torchvision_version() -> str:
    import torchvision

    return str(torchvision.__version__)


# --------------------------------------------------------------------------------------- torchvision

def voc_builders() -> dict:
    """{builder name: weights enum} for torchvision's segmentation builders whose weights are VOC's 21."""
    from torchvision.models import get_model_weights, list_models
    from torchvision.models import segmentation

    found = {}
    for name in list_models(module=segmentation):
        enum = get_model_weights(name)
        if any(list(w.meta.get("categories", []))[1:] == list(CLASSES[1:]) for w in enum):
            found[name] = enum
    return found


def load_torchvision(spec, builder, weights_name, weights_file):
    """(the torchvision model with its weights, without the aux head; identity dict)."""
    from torchvision.models import get_model_builder

    builders = voc_builders()
    if builder not in builders:
        raise UsageError(f"{spec}: {builder!r} is not a torchvision segmentation builder with VOC weights; "
                         f"expected one of {', '.join(sorted(builders))}")
    enum = builders[builder]
    identity = {"spec": spec, "source": "torchvision", "builder": builder, "weights": None, "weights_file": None}
    if weights_file is not None:
        if weights_name is not None:
            raise UsageError(f"{spec}: names its weights ({weights_name}) and --weights-file gives {weights_file}; "
                             f"give one (torchvision:{builder} with --weights-file)")
        state = read_state_dict(weights_file, f"--weights-file {weights_file}")
        identity.update(weights_file=os.path.abspath(weights_file), weights_sha256=file_sha256(weights_file))
        source = f"--weights-file {weights_file}"
    else:
        names = [w.name for w in enum]
        try:
            w = enum[weights_name or "DEFAULT"]
        except KeyError:
            raise UsageError(f"{spec}: {builder} has no weights {weights_name!r}; expected one of "
                             f"{', '.join(names)} (or --weights-file PATH)") from None
        if list(w.meta.get("categories", []))[1:] != list(CLASSES[1:]):
            raise UsageError(f"{spec}: the weights {w.name} do not predict the 21 VOC classes")
        preset = w.transforms()
        if tuple(preset.mean) != IMAGENET_MEAN or tuple(preset.std) != IMAGENET_STD:
            raise UsageError(f"{spec}: the weights {w.name} expect mean {preset.mean} / std {preset.std}, not the "
                             f"ImageNet normalisation every model here is fed")
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(w.url).path))
        try:
            # The weights API reads the hub cache and downloads into it when the file is absent (checking the
            # hash prefix in its name on download only); weights_only: a cache file never runs code.
            state = w.get_state_dict(progress=False, check_hash=True, weights_only=True)
        except Exception as e:
            if os.path.exists(cached):
                raise UsageError(f"{spec}: cannot read {cached} ({type(e).__name__}: {str(e)[:120]}); it is "
                                 f"damaged: delete it and run again online, or download {w.url} there") from None
            raise UsageError(f"{spec}: the weights are not in the torch hub cache and could not be downloaded "
                             f"({type(e).__name__}: {str(e)[:100]}); download {w.url} to {cached} "
                             f"(TORCH_HOME sets the cache folder), or pass --weights-file PATH") from None
        identity.update(weights=w.name, weights_file=cached, weights_sha256=file_sha256(cached))
        source = cached
    # Their aux head (an FCN head on layer3) is for training only: build without it and drop its weights.
    state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    ctor = get_model_builder(builder)
    kw = {"aux_loss": False} if "aux_loss" in inspect.signature(ctor).parameters else {}
    with torch.device("meta"):   # no random init: the weights replace every tensor (checked below)
        net = ctor(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, **kw)
    return assign_state(net, state, f"{source}: does not fit torchvision's {builder}"), identity


def read_state_dict(path, what):
    """A state dict from a file, loaded with weights_only=True (a dict holding one under 'model' or
    'state_dict', as training scripts save them, is unwrapped)."""
    if not os.path.isfile(path):
        raise UsageError(f"{what}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"{what}: not a loadable state dict ({type(e).__name__}: {str(e)[:160]}); it is read "
                         f"with weights_only=True") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict) and not torch.is_tensor(state.get(key)):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise UsageError(f"{what}: not a state dict (a dict of parameter name -> tensor)")
    return state


def assign_state(net: nn.Module, state: dict, what: str) -> nn.Module:
    """Load ``state`` strictly into ``net`` (built on the meta device or not); one line if it does not fit."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing (e.g. {missing[:2]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})" if unexpected else "",
                 f"{len(shapes)} of another shape (e.g. {shapes[:1]})" if shapes else ""]
        raise UsageError(f"{what}: " + ", ".join(p for p in parts if p) + " key(s); these are weights of "
                         "another architecture or number of classes")
    state = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    net.load_state_dict(state, assign=True)
    left = [n for n, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
    if left:   # a buffer outside the state dict (non-persistent): never run a model with empty tensors
        raise UsageError(f"{what}: no values for {left[:3]}")
    return net


# ------------------------------------------------------------------------------------------ factories

def load_factory(spec, module_name, attr, weights_file):
    """(the factory's module, with weights_file loaded into it when given; identity dict)."""
    added = os.getcwd() not in sys.path
    if added:   # as `python -m` does: the user's own module in the folder they run from
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise UsageError(f"{spec}: cannot import {module_name} ({type(e).__name__}: {str(e)[:160]}); it must be "
                         f"importable from the current folder or PYTHONPATH") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise UsageError(f"{spec}: {module_name} has no {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise UsageError(f"{spec}: {module_name}.{attr} is not callable; give a function that returns the model")
    try:
        net = factory()
    except Exception as e:
        raise UsageError(f"{spec}: {attr}() raised {type(e).__name__}: {str(e)[:160]}") from None
    if not isinstance(net, nn.Module):
        raise UsageError(f"{spec}: {attr}() returned {type(net).__name__}, not a torch.nn.Module")
    identity = {"spec": spec, "source": "factory", "factory": spec, "weights": None, "weights_file": None,
                "module_file": getattr(module, "__file__", None)}
    if weights_file is not None:
        state = read_state_dict(weights_file, f"--weights-file {weights_file}")
        assign_state(net, state, f"--weights-file {weights_file}: does not fit {attr}()")
        identity.update(weights_file=os.path.abspath(weights_file), weights_sha256=file_sha256(weights_file))
    else:
        identity["weights_sha256"] = state_dict_sha256(net)
    return net, identity


def state_dict_sha256(net: nn.Module) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes, in order: the weights' fingerprint."""
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        v = v.detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

"""Models from outside train.py: a model spec -> a loaded model plus the identity that is recorded for it.

    model, info = load_spec("runs/scribe/checkpoint.pt")                           # ours, as before
    model, info = load_spec("torchvision:deeplabv3_resnet50:COCO_WITH_VOC_LABELS_V1")
    model, info = load_spec("torchvision:fcn_resnet50", weights_file="my_fcn.pth")   # a state dict
    model, info = load_spec("mypackage.models:build_net", model_kind="ibe")          # your own factory
    model, info = load_spec("hf:models/segformer-city", dataset=dataset_spec("cityscapes"))   # transformers

Four kinds of spec, told apart by their form:

* a path to an existing file: a self-describing checkpoint written by train.py (``common.checkpoint``);
* ``torchvision:<builder>[:<weights>]``: a builder of ``torchvision.models.segmentation`` whose published
  weights predict the 21 VOC classes (all six of torchvision 0.29: deeplabv3 / fcn on ResNet-50/101,
  deeplabv3 / lraspp on MobileNetV3). ``<weights>`` is the weights enum's member name (default ``DEFAULT``),
  loaded through torchvision's weights API, which reads ``torch.hub.get_dir()/checkpoints/<file of the URL>``
  (``$TORCH_HOME/hub/checkpoints``) and downloads there when online; or ``weights_file`` (a state dict) instead,
  for which the net is built with the dataset's number of classes. The model is built with ``aux_loss=False``
  and the weights' ``aux_classifier.*`` keys are dropped, so the auxiliary head is neither built nor run; its
  ``out`` output is used. These weights expect ImageNet mean/std normalisation, the same as ours (checked
  against the weights' own preset); torchvision's preset also resizes the short side to 520, which the sweep
  does not: the model sees the protocol's size, like ours.
* ``hf:<model id or folder>``: a Hugging Face ``transformers`` segmentation model (optional dependency),
  through ``common.hf_models.load_hf_model``: a folder written by ``save_pretrained``, or a model id in the
  local Hugging Face cache (offline: HF_HUB_OFFLINE=1). It gets its own image processor's normalisation and
  its logits are resized to the input; ``weights_file``, when given, is a state dict of the transformers
  model that replaces its weights. Always read as baseline.
* ``module.path:factory``: ``importlib.import_module("module.path").factory()`` (the current folder is
  importable) must return an ``nn.Module`` whose output, a tensor or a dict with ``out``, is B x C x h x w
  logits with h x w at most the input's; smaller outputs are upsampled bilinearly (align_corners=False) to
  the input size. ``model_kind`` says how to read them: ``baseline`` wants C = N softmax logits, N the
  dataset's classes (21 on VOC); ``ibe`` and ``scribe`` take C = N as built (channel 0 already the background)
  or C = N - 1 foreground logits, to which the background -logsumexp is added after the upsampling
  (``--ibe-placement output``).

Every spec is checked against the dataset (``dataset``, a ``common.datasets.DatasetSpec``; None: VOC) before
any image is read, each failure one UsageError: the model must predict the dataset's N classes (a checkpoint's
outputs plus IBE's background, a torchvision state dict's classifier, a factory's C, an hf config's
num_labels); torchvision's published weights need VOC's classes; IBE / SCrIBE models (checkpoints, factories
read as ibe / scribe) need a background class at index 0, as ``common.datasets.check_structure`` says; a
checkpoint that records the classes it was trained on (``ckpt["dataset"]``) must name the dataset's.

``info`` is what evaluate_corruptions.py writes to run.json for the model: ``name`` (a default display name;
the caller checks it with ``check_plain_name``), ``path`` (the checkpoint's absolute path, or the spec string),
``sha256``, ``kind``, ``config``, ``num_classes`` (the channels the model yields, IBE's background included:
the dataset's N), and for torchvision, hf and factory models ``identity`` {spec, source, builder or factory or
model_type, weights, weights_file, weights_sha256, model_kind, torchvision}. For those, ``sha256`` is the
SHA-256 of the identity's parts that fix the numbers (builder or factory, weights SHA-256, model kind,
torchvision version), so a rerun into the same folder, or a merge, with other weights or another kind is
refused just as it is for another checkpoint file. ``weights_sha256`` is the weights file's SHA-256 (the hub
cache file or ``weights_file``); a factory without a weights file has the SHA-256 of its state dict
(``state_dict_sha256``). An hf identity also has name_or_path (the id, or the folder's absolute path),
folder (where the files were read: the folder or the cache snapshot), weight_files, config_sha256,
classes (config.id2label) and transformers (the version); its ``weights_sha256`` is that of the weight files
(``common.hf_models.files_identity``) or of ``weights_file``, and its ``sha256`` is made of ``HF_FIXED``
(source, model_type, weights_sha256, config_sha256, model_kind, transformers). Its name is the folder's name
or the id's last part.
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
HF = "hf:"
FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
PROBE_SIDE = 64  # a factory's output is checked on one 64x64 zero image before any work


def spec_kind(spec: str) -> str:
    """"checkpoint", "torchvision", "hf" or "factory". An existing file is always a checkpoint (a path may hold
    a colon); anything that is none of the other forms is taken as a checkpoint path, so that a missing file is
    reported as one."""
    if spec.startswith(TORCHVISION):
        return "torchvision"
    if spec.startswith(HF):
        return "hf"
    if not os.path.exists(spec) and FACTORY_RE.match(spec):
        return "factory"
    return "checkpoint"


def add_model_arguments(p, where: str) -> None:
    """--weights-file and --model-kind, for the scripts whose ``where`` flags take model specs."""
    p.add_argument("--weights-file", nargs="+", default=None, metavar="PATH",
                   help=f"state dicts for the torchvision:<builder>, hf:<id or folder> and module:factory specs of "
                        f"{where}, one per such spec in their order ('-': none; a torchvision spec then loads its "
                        f"weights through torchvision's weights API, an hf model and a factory keep their own); "
                        f"a torchvision net is built with the dataset's number of classes to receive it")
    p.add_argument("--model-kind", nargs="+", choices=KINDS, default=None, metavar="KIND",
                   help=f"how to read the logits of the module:factory specs of {where} (baseline: one softmax "
                        f"logit per class of --data, 21 on VOC; ibe/scribe: as many as built, or one fewer, "
                        f"foreground only, that get background = -logsumexp): one for all, or one per factory "
                        f"spec in order; default baseline. Checkpoints know their kind; torchvision: and hf: "
                        f"models are baseline")


def model_options(specs, weights_files=None, model_kinds=None, where="--checkpoints"):
    """Pair --weights-file and --model-kind with the specs: a list of (weights_file or None, kind or None)."""
    kinds = [spec_kind(s) for s in specs]
    external = [i for i, k in enumerate(kinds) if k != "checkpoint"]
    factories = [i for i, k in enumerate(kinds) if k == "factory"]
    files = [None] * len(specs)
    if weights_files:
        if len(weights_files) != len(external):
            raise UsageError(f"--weights-file: {len(weights_files)} file(s) for {len(external)} torchvision:, hf: "
                             f"or module:factory spec(s) in {where}; give one per such spec, in order ('-' for none)")
        for i, f in zip(external, weights_files):
            files[i] = None if f == "-" else f
    chosen = [None] * len(specs)
    if model_kinds:
        if not factories:
            raise UsageError(f"--model-kind applies to module:factory specs only, and {where} has none "
                             f"(checkpoints know their kind; torchvision: and hf: models are baseline)")
        if len(model_kinds) not in (1, len(factories)):
            raise UsageError(f"--model-kind: {len(model_kinds)} kinds for {len(factories)} factory spec(s); give "
                             f"one for all or one per factory spec")
        for n, i in enumerate(factories):
            chosen[i] = model_kinds[0] if len(model_kinds) == 1 else model_kinds[n]
    return list(zip(files, chosen))


def load_spec(spec: str, device="cpu", weights_file=None, model_kind=None, hash_file=True, dataset=None):
    """``(model.eval() on device, info)`` for any spec (module docstring), checked against ``dataset`` (a
    ``DatasetSpec``; None: VOC). ``hash_file=False`` leaves a checkpoint's ``sha256`` as None for the caller to
    fill (make_video.py does not need it)."""
    ds = dataset if dataset is not None else voc_spec()
    kind = spec_kind(spec)
    if kind == "checkpoint":
        model, ckpt = load_model(spec, device)
        num_classes = check_checkpoint_classes(spec, model.config, ckpt, ds)
        check_first_output(model, f"model {ckpt.get('name') or model.config['kind']} (checkpoint {spec})")
        return model, {"name": ckpt.get("name") or model.config["kind"], "path": os.path.abspath(spec),
                       "sha256": file_sha256(spec) if hash_file else None, "kind": model.config["kind"],
                       "config": model.config, "held_out": (ckpt.get("args") or {}).get("held_out") or [],
                       "num_classes": num_classes}
    if kind in ("torchvision", "hf") and model_kind not in (None, "baseline"):
        raise UsageError(f"{spec}: {kind} models are read as baseline (softmax over their classes), not "
                         f"{model_kind}; --model-kind applies to module:factory specs")
    if kind == "torchvision":
        parts = spec[len(TORCHVISION):].split(":")
        if len(parts) > 2 or not parts[0]:
            raise UsageError(f"{spec}: expected torchvision:<builder>[:<weights>], e.g. "
                             f"torchvision:deeplabv3_resnet50:COCO_WITH_VOC_LABELS_V1")
        net, identity = load_torchvision(spec, parts[0], parts[1] if len(parts) == 2 else None, weights_file, ds)
        name = parts[0]
        model = ExternalModel(net, "baseline", {"source": "torchvision", "builder": name, "arch": name}, spec, ds)
    elif kind == "hf":
        net, identity = load_hf(spec, device, weights_file, ds)
        name = hf_name(spec)
        model = ExternalModel(net, "baseline", {"source": "hf", "model_type": identity["model_type"],
                                                "arch": identity["model_type"]}, spec, ds)
    else:
        module, attr = spec.split(":")
        if model_kind in BACKGROUND_KINDS and not ds.has_background:
            raise UsageError(f"{spec} --model-kind {model_kind}: {no_background(model_kind, ds)}; read it as "
                             f"--model-kind baseline on {ds.name}")
        net, identity = load_factory(spec, module, attr, weights_file)
        name = attr.split(".")[-1]
        model = ExternalModel(net, model_kind or "baseline", {"source": "factory", "factory": spec, "arch": attr},
                              spec, ds)
    check_finite_weights(net.state_dict(), spec, "use other weights (--weights-file) or fix the model")
    if kind == "factory":
        probe(model.to(device), spec)
    check_first_output(model, f"model {name} ({spec})")
    identity["model_kind"] = model.config["kind"]
    identity["torchvision"] = torchvision_version()
    # What fixes the numbers; the torchvision and factory keys are those of every earlier run.json (so that a
    # results folder written before hf: existed still resumes).
    keys = HF_FIXED if kind == "hf" else ("source", "builder", "factory", "weights_sha256", "model_kind",
                                          "torchvision")
    fixed = {k: identity.get(k) for k in keys}
    sha = hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()
    return model.to(device).eval(), {"name": name, "path": spec, "sha256": sha, "kind": model.config["kind"],
                                     "config": model.config, "identity": identity, "num_classes": ds.num_classes}


def load_recorded(info: dict, device="cpu", dataset=None):
    """Reload a model from its run.json entry (make_figures.py's default): the checkpoint file, or the spec
    with the weights file and kind it was evaluated with. ``dataset``: the results' DatasetSpec
    (``common.datasets.spec_from_record(run["dataset"])``; None: VOC)."""
    ident = info.get("identity")
    if not ident:
        return load_spec(info["path"], device, dataset=dataset)
    # weights named in a torchvision spec come through the weights API again; a --weights-file is reread
    weights_file = ident.get("weights_file") if not ident.get("weights") else None
    spec = HF + ident["name_or_path"] if ident.get("source") == "hf" else ident["spec"]   # a folder: absolute
    return load_spec(spec, device, weights_file, ident.get("model_kind"), dataset=dataset)


# ------------------------------------------------------------------------------------ dataset checks

BACKGROUND_KINDS = ("ibe", "scribe")


def voc_spec():
    from .datasets import voc

    return voc.SPEC


def voc_like(ds) -> bool:
    """The dataset's classes are VOC's 21, in VOC's order (what torchvision's published weights predict)."""
    return tuple(ds.classes) == tuple(CLASSES)


def no_background(kind: str, ds) -> str:
    """check_structure's wording (common.datasets), for a model rather than a --model flag."""
    return (f"the {kind.upper() if kind == 'ibe' else 'SCrIBE'} structure needs a background class at index 0 and "
            f"{ds.name} has none (class 0 is {ds.classes[0]!r})")


def check_checkpoint_classes(spec: str, config: dict, ckpt: dict, ds) -> int:
    """The number of classes a checkpoint's model predicts (its outputs, plus IBE's background), which must be
    the dataset's; an IBE / SCrIBE model needs the dataset's background class; a checkpoint that records the
    classes it was trained on (``ckpt["dataset"]``, a ``dataset_record``) must name the dataset's."""
    kind = config["kind"]
    if kind in BACKGROUND_KINDS and not ds.has_background:
        raise UsageError(f"checkpoint {spec}: its model kind is {kind}, and {no_background(kind, ds)}; evaluate "
                         f"baseline models on {ds.name}")
    n = int(config.get("num_outputs", NUM_CLASSES - (kind in BACKGROUND_KINDS))) + (kind in BACKGROUND_KINDS)
    if n != ds.num_classes:
        raise UsageError(f"checkpoint {spec}: its {kind} model predicts {n} classes and {ds.name} has "
                         f"{ds.num_classes}; evaluate a checkpoint trained on {ds.name} (or pass the --data it was "
                         f"trained on)")
    rec = ckpt.get("dataset")
    if isinstance(rec, dict) and rec.get("classes") is not None and list(rec["classes"]) != list(ds.classes):
        diff = next(i for i, (a, b) in enumerate(zip(rec["classes"], ds.classes)) if a != b)
        raise UsageError(f"checkpoint {spec}: trained on {rec.get('name')}, whose class {diff} is "
                         f"{rec['classes'][diff]!r}, and {ds.name}'s is {ds.classes[diff]!r}; evaluate it on the "
                         f"dataset it was trained on")
    return n


class ExternalModel(nn.Module):
    """A torchvision, hf or factory model read as ours: B x N x H x W logits at the input's resolution, N the
    dataset's classes (``dataset``: a DatasetSpec; None: VOC's 21)."""

    def __init__(self, net: nn.Module, kind: str, config: dict, spec: str, dataset=None):
        super().__init__()
        self.net = net
        self.spec = spec
        self.config = dict(kind=kind, **config)
        ds = dataset if dataset is not None else voc_spec()
        self.num_classes, self.dataset_name = ds.num_classes, ds.name

    def forward(self, x):
        out = self.net(x)
        if isinstance(out, dict):
            if "out" not in out:
                raise UsageError(f"{self.spec}: the model returned a dict without 'out' (keys {sorted(out)[:5]}); "
                                 f"return the logits or a dict with 'out'")
            out = out["out"]
        n = self.num_classes
        want = (n - 1, n) if self.config["kind"] in BACKGROUND_KINDS else (n,)
        if not torch.is_tensor(out) or out.dim() != 4 or out.shape[0] != x.shape[0] or out.shape[1] not in want:
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise UsageError(f"{self.spec}: the model returned {shape} for an input of {tuple(x.shape)}; expected "
                             f"B x {' or '.join(map(str, want))} x h x w logits for the {n} classes of "
                             f"{self.dataset_name} (model kind {self.config['kind']}; --model-kind says how to read "
                             f"them)")
        size = x.shape[-2:]
        if out.shape[-2] > size[0] or out.shape[-1] > size[1]:
            raise UsageError(f"{self.spec}: the model's output {tuple(out.shape[-2:])} is larger than its input "
                             f"{tuple(size)}; return logits at the input's resolution or lower")
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        if out.shape[1] == n - 1:
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


def load_torchvision(spec, builder, weights_name, weights_file, ds=None):
    """(the torchvision model with its weights, without the aux head; identity dict). Published weights predict
    VOC's 21 classes: refused on another dataset (``ds``; None: VOC); a ``weights_file`` is loaded into the
    builder's net made with the dataset's number of classes."""
    ds = ds if ds is not None else voc_spec()
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
    elif not voc_like(ds):
        raise UsageError(f"{spec}: torchvision's published weights predict the 21 VOC classes and {ds.name} has "
                         f"{ds.num_classes} ({', '.join(ds.classes[:3])}, ...); pass --weights-file with a "
                         f"{builder} state dict trained on {ds.name}")
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
        net = ctor(weights=None, weights_backbone=None, num_classes=ds.num_classes, **kw)
    check_class_count(net, state, ds, f"{spec} with {source}")
    return assign_state(net, state, f"{source}: does not fit torchvision's {builder}"), identity


def check_class_count(net: nn.Module, state: dict, ds, what: str) -> None:
    """One line when a state dict's classifier has another number of classes than the dataset's: a weight or
    bias whose first dimension is the class count in ``net`` and another number in ``state``, the rest of its
    shape equal."""
    for k, t in net.state_dict().items():
        got = state.get(k)
        if (torch.is_tensor(got) and t.dim() >= 1 and t.shape[0] == ds.num_classes and got.dim() == t.dim()
                and got.shape[0] != ds.num_classes and got.shape[1:] == t.shape[1:]
                and k.rsplit(".", 1)[-1] in ("weight", "bias")):
            raise UsageError(f"{what}: predicts {got.shape[0]} classes ({k} is {tuple(got.shape)}) and {ds.name} "
                             f"has {ds.num_classes}; give weights trained on {ds.name}")


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


# ---------------------------------------------------------------------------------- Hugging Face models

# What fixes an hf model's numbers: its weights, its config and image processor (mean / std), how it is read,
# and the library that runs it.
HF_FIXED = ("source", "model_type", "weights_sha256", "config_sha256", "model_kind", "transformers")


def load_hf(spec, device, weights_file, ds):
    """(common.hf_models' wrapper, with ``weights_file`` loaded into the transformers model when given; identity
    dict). Its config's num_labels must be the dataset's number of classes."""
    from .hf_models import load_hf_model

    target = spec[len(HF):]
    if not target:
        raise UsageError(f"{spec}: expected hf:<model id or folder>, e.g. hf:nvidia/segformer-b0-finetuned-ade-512-512 "
                         f"or hf:models/my_segformer")
    net, info = load_hf_model(target, device)
    if net.num_classes != ds.num_classes:
        raise UsageError(f"{spec}: the model predicts {net.num_classes} classes (its config's num_labels) and "
                         f"{ds.name} has {ds.num_classes}; evaluate it on the dataset it was trained on, or give one "
                         f"fine-tuned to {ds.name}'s classes")
    identity = {"spec": spec, "source": "hf", "model_type": info["model_type"],
                "name_or_path": info["name_or_path"], "folder": info["folder"], "weights": None,
                "weights_file": None, "weight_files": info["weight_files"], "weights_sha256": info["weights_sha256"],
                "config_sha256": info["config_sha256"], "classes": info["classes"],
                "transformers": info["transformers"]}
    if weights_file is not None:
        state = read_state_dict(weights_file, f"--weights-file {weights_file}")
        assign_state(net.model, state, f"--weights-file {weights_file}: does not fit {spec} "
                                       f"({type(net.model).__name__}, its state_dict())")
        identity.update(weights_file=os.path.abspath(weights_file), weight_files=[],
                        weights_sha256=file_sha256(weights_file))
    return net, identity


def hf_name(spec: str) -> str:
    """A plain display name from an hf: spec: the folder's name, or the last part of the model id."""
    target = spec[len(HF):].rstrip("/\\")
    base = os.path.basename(os.path.abspath(target)) if os.path.isdir(target) else target.split("/")[-1]
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", base).lstrip(".") or "hf_model"


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

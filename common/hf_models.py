"""Hugging Face ``transformers`` segmentation models as plain ``model(x) -> B x C x H x W`` modules (optional).

    model, info = load_hf_model("nvidia/segformer-b0-finetuned-ade-512-512")   # or a local folder
    logits = model(x)     # x: the project's ImageNet-normalised batch; logits at x's size

``transformers`` is an optional dependency, imported only here and only when such a model is asked for
(``pip install transformers``). Supported: every ``AutoModelForSemanticSegmentation`` (SegFormer, UperNet, DPT,
BEiT, ...), whose ``logits`` are resized bilinearly to the input size, and MaskFormer / Mask2Former, whose
semantic output is formed as their image processors' ``post_process_semantic_segmentation`` forms it:
``einsum("bqc,bqhw->bchw", softmax(class logits)[..., :-1], sigmoid(mask logits))``, with the mask logits resized
to the input size first (the processor resizes them to 384 x 384 on the way, a step left out here). Those are
per-class scores in [0, num_queries], not logits; argmax is the model's prediction.

Each model sees the normalisation of its own image processor: the project normalises with ImageNet's mean and
std, so the wrapper undoes that and applies the processor's rescale and mean / std (SegFormer's are ImageNet's;
others differ). The processor's resize is not applied: the protocol decides the size (docs/datasets.md).

Offline (this project's machines have no internet), a model id must be in the local Hugging Face cache or be a
folder written by ``save_pretrained``; set HF_HUB_OFFLINE=1 to never try the network. ``common.model_specs``
reads the model spec ``hf:<id or folder>`` through ``load_hf_model`` (docs/datasets.md).
"""
import glob
import hashlib
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cli import UsageError
from .constants import IMAGENET_MEAN, IMAGENET_STD

UNIVERSAL_TYPES = ("maskformer", "mask2former")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError("hf: models need the optional package transformers, which is not installed here; "
                         "pip install transformers") from None
    return transformers


class HFSegmentation(nn.Module):
    """A transformers segmentation model behind the project's interface: ImageNet-normalised B x 3 x H x W in,
    B x num_classes x H x W out."""

    def __init__(self, model, processor):
        super().__init__()
        self.model = model
        self.universal = model.config.model_type in UNIVERSAL_TYPES
        # x_hf = (x * std_in + mean_in) * 255 * rescale, then (. - mean) / std: one scale and shift per channel.
        rescale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
        mean = processor.image_mean if getattr(processor, "do_normalize", True) else (0.0, 0.0, 0.0)
        std = processor.image_std if getattr(processor, "do_normalize", True) else (1.0, 1.0, 1.0)
        mean, std = (torch.as_tensor(v, dtype=torch.float64).reshape(1, 3, 1, 1) for v in (mean, std))
        mean_in = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).reshape(1, 3, 1, 1)
        std_in = torch.tensor(IMAGENET_STD, dtype=torch.float64).reshape(1, 3, 1, 1)
        self.register_buffer("scale", (std_in * 255 * rescale / std).float(), persistent=False)
        self.register_buffer("shift", ((mean_in * 255 * rescale - mean) / std).float(), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.model.config.num_labels

    def forward(self, x):
        out = self.model(pixel_values=x * self.scale + self.shift)
        size = x.shape[-2:]
        if not self.universal:
            return F.interpolate(out.logits, size=size, mode="bilinear", align_corners=False)
        masks = F.interpolate(out.masks_queries_logits, size=size, mode="bilinear", align_corners=False)
        classes = out.class_queries_logits.softmax(dim=-1)[..., :-1]   # the last class is "no object"
        return torch.einsum("bqc,bqhw->bchw", classes, masks.sigmoid())


def load_hf_model(name: str, device="cpu"):
    """``(HFSegmentation in eval mode, info)`` for a model id or a ``save_pretrained`` folder. ``info``: the model
    type, class names (``config.id2label``), ``source``, ``name_or_path`` (the id, or the folder's absolute
    path), ``folder`` (that folder, or the id's snapshot in the Hugging Face cache), ``weight_files``,
    ``weights_sha256`` and ``config_sha256`` (``files_identity``) and the ``transformers`` version. The model
    is loaded in float32. A model id already in the local cache is read from it without the network (the
    cached revision); another is downloaded unless HF_HUB_OFFLINE is set. Every failure is one UsageError."""
    tf = _transformers()
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    local = os.path.isdir(name)
    kw = {"local_files_only": True} if offline or local or in_cache(name) else {}
    with _quiet(tf):
        try:
            config = tf.AutoConfig.from_pretrained(name, **kw)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if local:
                raise UsageError(f"hf:{name}: not a transformers model folder ({first}); it needs the config.json "
                                 f"and weights that save_pretrained writes") from None
            raise UsageError(f"hf:{name}: cannot load it here ({first[:160]}); it is neither a local folder nor in "
                             f"this machine's Hugging Face cache. Where there is internet, run `hf download {name}` "
                             f"and copy the cache (HF_HOME) here, then set HF_HUB_OFFLINE=1; or save_pretrained it "
                             f"into a folder and pass hf:<folder>") from None
        universal = config.model_type in UNIVERSAL_TYPES
        auto = tf.AutoModelForUniversalSegmentation if universal else tf.AutoModelForSemanticSegmentation
        try:
            # float32 as every model here (a half-precision upload would otherwise load as such: "auto")
            model, loading = auto.from_pretrained(name, dtype=torch.float32, output_loading_info=True, **kw)
            processor = tf.AutoImageProcessor.from_pretrained(name, **kw)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"hf:{name}: a {config.model_type} config, but its weights or image processor cannot "
                             f"be loaded ({first[:160]}); semantic-segmentation models (SegFormer, UperNet, ...) and "
                             f"MaskFormer / Mask2Former are supported") from None
    missing = sorted(loading.get("missing_keys") or [])
    if missing:   # transformers would initialise them randomly (and say so in a warning): never evaluate that
        raise UsageError(f"hf:{name}: its weights lack {len(missing)} tensor(s) of {type(model).__name__} (e.g. "
                         f"{missing[0]}), which transformers would initialise at random; is it a backbone or "
                         f"another task's model? Give a semantic-segmentation model")
    folder = os.path.abspath(name) if local else os.path.dirname(
        tf.utils.cached_file(name, "config.json", local_files_only=True))
    wrapped = HFSegmentation(model, processor).to(device).eval()
    names = [config.id2label.get(k, config.id2label.get(str(k), str(k))) for k in range(config.num_labels)]
    return wrapped, {"model_type": config.model_type, "classes": names, "source": f"hf:{name}",
                     "name_or_path": os.path.abspath(name) if local else name, "folder": folder,
                     **files_identity(folder, model), "transformers": str(tf.__version__)}


def in_cache(name: str) -> bool:
    """Whether model id ``name``'s config.json is in the local Hugging Face cache (then it is read from there:
    a machine without internet need not set HF_HUB_OFFLINE, and no load waits on network retries)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:   # not a valid repo id: from_pretrained says so
        return False


class _quiet:
    """transformers' loading progress bars and load report, and huggingface_hub's retry messages, off while
    loading (warnings): the report of a bad folder is our one line, and a good load prints nothing."""

    def __init__(self, tf):
        import huggingface_hub.utils.logging as hub_logging

        self.loggers = (tf.utils.logging, hub_logging)

    def __enter__(self):
        self.verbosity = [log.get_verbosity() for log in self.loggers]
        self.bars = self.loggers[0].is_progress_bar_enabled()
        for log in self.loggers:
            log.set_verbosity_error()
        self.loggers[0].disable_progress_bar()

    def __exit__(self, *exc):
        for log, v in zip(self.loggers, self.verbosity):
            log.set_verbosity(v)
        if self.bars:
            self.loggers[0].enable_progress_bar()


WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")


def files_identity(folder: str, model) -> dict:
    """What fixes the numbers of a loaded model, from the files it was read from:

    ``weight_files``: the first of ``model*.safetensors`` / ``pytorch_model*.bin`` present in ``folder``
    (transformers prefers safetensors; shards included; a Trainer's ``training_args.bin`` is not weights);
    ``weights_sha256``: the SHA-256 of that file when there is one, else of the lines ``<name> <sha256>`` of
    each in name order; with no such file, the SHA-256 of the loaded state dict (``state_dict_sha256``).
    ``config_sha256``: of ``config.json`` and ``preprocessor_config.json`` (the processor's mean and std feed
    the model), as the lines ``<name> <sha256>`` of those present."""
    from .folders import file_sha256

    def listing(files):
        return "".join(f"{f} {file_sha256(os.path.join(folder, f))}\n" for f in files)

    for pattern in WEIGHT_PATTERNS:
        files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, pattern)))
        if files:
            break
    if len(files) == 1:
        weights = file_sha256(os.path.join(folder, files[0]))
    elif files:
        weights = hashlib.sha256(listing(files).encode()).hexdigest()
    else:
        from .model_specs import state_dict_sha256
        weights = state_dict_sha256(model)
    configs = [f for f in ("config.json", "preprocessor_config.json") if os.path.isfile(os.path.join(folder, f))]
    return {"weight_files": files, "weights_sha256": weights,
            "config_sha256": hashlib.sha256(listing(configs).encode()).hexdigest()}

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
folder written by ``save_pretrained``; set HF_HUB_OFFLINE=1 to never try the network. Not wired into the scripts
yet: ``--checkpoints hf:<id or folder>`` comes with ``--data`` (docs/datasets.md).
"""
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
    """``(HFSegmentation in eval mode, info)`` for a model id or a ``save_pretrained`` folder; ``info``: the model
    type, class names (``config.id2label``) and where it came from. Every failure is one UsageError."""
    tf = _transformers()
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    local = os.path.isdir(name)
    kw = {"local_files_only": True} if offline or local else {}
    try:
        config = tf.AutoConfig.from_pretrained(name, **kw)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if local:
            raise UsageError(f"hf:{name}: not a transformers model folder ({first}); it needs the config.json and "
                             f"weights that save_pretrained writes") from None
        raise UsageError(f"hf:{name}: cannot load it here ({first[:160]}); it is neither a local folder nor in this "
                         f"machine's Hugging Face cache. Where there is internet, run `hf download {name}` and copy "
                         f"the cache (HF_HOME) here, or save_pretrained it into a folder and pass hf:<folder>"
                         ) from None
    universal = config.model_type in UNIVERSAL_TYPES
    auto = tf.AutoModelForUniversalSegmentation if universal else tf.AutoModelForSemanticSegmentation
    try:
        model = auto.from_pretrained(name, **kw)
        processor = tf.AutoImageProcessor.from_pretrained(name, **kw)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"hf:{name}: a {config.model_type} config, but its weights or image processor cannot be "
                         f"loaded ({first[:160]}); semantic-segmentation models (SegFormer, UperNet, ...) and "
                         f"MaskFormer / Mask2Former are supported") from None
    wrapped = HFSegmentation(model, processor).to(device).eval()
    names = [config.id2label.get(k, config.id2label.get(str(k), str(k))) for k in range(config.num_labels)]
    return wrapped, {"model_type": config.model_type, "classes": names, "source": f"hf:{name}"}

"""DeepLabV3+ / DeepLabV3 with the paper's three output structures, and their losses.

    model = build_model("scribe")                       # the paper: DeepLabV3+ R50, output stride 16
    model = build_model("baseline", arch="deeplabv3", output_stride=8)   # the companion code
    model = build_model("ibe", backbone="resnet18", head_channels=64)   # small enough for a CPU
    model = build_model("baseline", num_classes=19)      # another dataset's classes (Cityscapes' 19 train ids)

Every model returns ``(B, N, H, W)`` logits at input resolution, N = ``num_classes`` (VOC's 21 by default). For IBE and SCrIBE the network emits
20 foreground logits z and channel 0 is ``-logsumexp(z)`` (Implicit Background Estimation). Where it is
applied is ``ibe_placement``: "logits" applies it to the classifier's output at the feature stride and
then upsamples the 21 channels, as the companion notebook did (train.py's default recipe); "output"
upsamples the 20 channels first, so that channel 0 is exactly -logsumexp of the others at every output
pixel (docs/protocol.md, "Models"). The keyword defaults of ``build_model`` are the paper's text (DeepLabV3+,
output stride 16, "output"); train.py's ``--recipe`` chooses between the two.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead

from .cli import UsageError
from .constants import IGNORE_INDEX, NUM_CLASSES
from .data import normalise_uint8
from .logits import channel_argmax

KINDS = ("baseline", "ibe", "scribe")
ARCHS = ("deeplabv3plus", "deeplabv3")
IBE_PLACEMENTS = ("logits", "output")   # -logsumexp before or after the bilinear upsampling
BACKBONES = {  # name -> (constructor, ImageNet weights enum, channels of layer1 and layer4, can dilate)
    "resnet18": (resnet.resnet18, resnet.ResNet18_Weights, 64, 512, False),
    "resnet34": (resnet.resnet34, resnet.ResNet34_Weights, 64, 512, False),
    "resnet50": (resnet.resnet50, resnet.ResNet50_Weights, 256, 2048, True),
    "resnet101": (resnet.resnet101, resnet.ResNet101_Weights, 256, 2048, True),
}


def default_output_stride(arch: str, backbone: str) -> int:
    """16 for the paper's DeepLabV3+, 8 for the companion DeepLabV3, 32 where the backbone can't dilate.

    torchvision's BasicBlock (ResNet-18/34) refuses dilation, so those backbones run at stride 32.
    """
    if not BACKBONES[backbone][4]:
        return 32
    return 8 if arch == "deeplabv3" else 16


def aspp_rates(output_stride: int):
    """6/12/18 at stride 16 (the paper), doubled at 8, halved at 32 so the rates stay in the feature map."""
    return {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}[output_stride]


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the stride-16 features, a 48-channel projection of layer1, two 3x3 convs, 1x1 classifier."""

    def __init__(self, low_channels, high_channels, num_outputs, rates, width=256):
        super().__init__()
        low = 48 if width == 256 else max(8, width * 48 // 256)
        self.aspp = ASPP(high_channels, rates, width)
        self.reduce = nn.Sequential(nn.Conv2d(low_channels, low, 1, bias=False), nn.BatchNorm2d(low), nn.ReLU())
        self.fuse = nn.Sequential(
            nn.Conv2d(width + low, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.classifier = nn.Conv2d(width, num_outputs, 1)

    def forward(self, low, high):
        high = self.aspp(high)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([self.reduce(low), high], dim=1)))


def deeplabv3_head(in_channels, num_outputs, rates, width=256) -> nn.Module:
    """torchvision's ``DeepLabHead`` (ASPP, 3x3 conv, BN, ReLU, 1x1 classifier), at any width."""
    if width == 256:
        return DeepLabHead(in_channels, num_outputs, rates)
    return nn.Sequential(ASPP(in_channels, rates, width), nn.Conv2d(width, width, 3, padding=1, bias=False),
                         nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, num_outputs, 1))


class SegmentationModel(nn.Module):
    """Backbone + head + output structure. ``config`` is everything needed to rebuild it from a checkpoint."""

    def __init__(self, config: dict, backbone: nn.Module, classifier: nn.Module):
        super().__init__()
        self.config = dict(config)
        self.backbone = backbone
        self.classifier = classifier  # torchvision's name, so DeepLabV3 state dicts load as they are
        self.implicit_background = config["kind"] in ("ibe", "scribe")
        self.ibe_before_upsampling = config.get("ibe_placement") == "logits"

    def forward(self, x):
        size = x.shape[-2:]
        feats = self.backbone(x)
        if isinstance(self.classifier, DeepLabV3PlusHead):
            out = self.classifier(feats["low"], feats["out"])
        else:
            out = self.classifier(feats["out"])
        if self.implicit_background and self.ibe_before_upsampling:
            out = implicit_background(out)   # the notebook: at the feature stride, then upsampled
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        if self.implicit_background and not self.ibe_before_upsampling:
            out = implicit_background(out)
        return out


def implicit_background(z: torch.Tensor) -> torch.Tensor:
    """IBE: N - 1 foreground logits -> N channels (20 -> 21 on VOC), background = -logsumexp(foreground).

    logsumexp runs in float32 even under autocast: in bf16 it would round the background logit.
    """
    bg = -torch.logsumexp(z.float(), dim=1, keepdim=True)
    return torch.cat([bg.to(z.dtype), z], dim=1)


def build_model(kind: str, arch: str = "deeplabv3plus", backbone: str = "resnet50", output_stride=None,
                head_channels: int = 256, pretrained_backbone: str = "none",
                ibe_placement: str = "output", num_classes: int = NUM_CLASSES) -> SegmentationModel:
    """Build one of the paper's models. ``pretrained_backbone``: "none", "imagenet" or a state-dict path;
    ``ibe_placement`` ("logits" or "output", IBE/SCrIBE only): see the module docstring. ``num_classes``: the
    dataset's N; the baseline emits N logits, IBE and SCrIBE N - 1 (class 0, background, is implicit). The
    config records ``num_outputs``, from which ``common.checkpoint.load_model`` recovers N."""
    if kind not in KINDS:
        raise UsageError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    if arch not in ARCHS:
        raise UsageError(f"unknown --arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if backbone not in BACKBONES:
        raise UsageError(f"unknown --backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")
    ctor, _, low_ch, high_ch, can_dilate = BACKBONES[backbone]
    output_stride = output_stride or default_output_stride(arch, backbone)
    if output_stride not in (8, 16, 32) or (not can_dilate and output_stride != 32):
        allowed = "8, 16 or 32" if can_dilate else "32 (torchvision cannot dilate its BasicBlocks)"
        raise UsageError(f"--output-stride {output_stride} is not possible with {backbone}; use {allowed}")
    if head_channels < 8:
        raise UsageError(f"--head-channels {head_channels}: must be at least 8")
    if ibe_placement not in IBE_PLACEMENTS:
        raise UsageError(f"--ibe-placement {ibe_placement!r}: expected one of {', '.join(IBE_PLACEMENTS)}")
    implicit = kind in ("ibe", "scribe")
    if type(num_classes) is not int or num_classes < (2 if implicit else 1):
        raise UsageError(f"num_classes {num_classes!r}: the {kind} structure needs an integer of at least "
                         f"{2 if implicit else 1}")

    dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
    net = ctor(weights=None, replace_stride_with_dilation=dilate if can_dilate else None)
    load_backbone_weights(net, backbone, pretrained_backbone)
    num_outputs = num_classes - 1 if implicit else num_classes
    if arch == "deeplabv3plus":
        body = IntermediateLayerGetter(net, return_layers={"layer1": "low", "layer4": "out"})
        head = DeepLabV3PlusHead(low_ch, high_ch, num_outputs, aspp_rates(output_stride), head_channels)
    else:
        # torchvision's DeepLabHead, so --arch deeplabv3 is deeplabv3_resnet50 parameter for parameter (and
        # name for name); with --head-channels other than 256, the same layers at that width.
        body = IntermediateLayerGetter(net, return_layers={"layer4": "out"})
        head = deeplabv3_head(high_ch, num_outputs, aspp_rates(output_stride), head_channels)
    config = dict(kind=kind, arch=arch, backbone=backbone, output_stride=output_stride,
                  head_channels=head_channels, num_outputs=num_outputs,
                  ibe_placement=ibe_placement if kind in ("ibe", "scribe") else None)
    return SegmentationModel(config, body, head)


def load_backbone_weights(net: nn.Module, backbone: str, source: str) -> None:
    """Load ImageNet weights through torchvision's weights API, or a state dict from a file."""
    if source in (None, "", "none"):
        return
    if source == "imagenet":
        # IMAGENET1K_V1 is what torchvision's pretrained=True gave when the paper was written.
        weights = BACKBONES[backbone][1].IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # offline: URLError / OSError, or a damaged download
            cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
            raise UsageError(f"could not load ImageNet weights for {backbone} ({type(e).__name__}: {e}); "
                             f"place {os.path.basename(weights.url)} at {cache}, or pass "
                             f"--pretrained-backbone none or a path to a state dict") from None
    else:
        if not os.path.isfile(source):
            raise UsageError(f"--pretrained-backbone {source}: no such file; use 'imagenet', 'none' or a path "
                             f"to a {backbone} state dict")
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UsageError(f"--pretrained-backbone {source}: not a loadable state dict ({e})") from None
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the ImageNet classifier is unused
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise UsageError(f"--pretrained-backbone {source}: does not fit {backbone} "
                         f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})")


def head_parameters(model: SegmentationModel):
    """(backbone params, head params): the paper trains the head at 10x the backbone's learning rate."""
    return list(model.backbone.parameters()), list(model.classifier.parameters())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# Losses (docs/protocol.md, "Models").

def segmentation_loss(kind: str, logits: torch.Tensor, target: torch.Tensor,
                      ignore_as_background: bool = False) -> torch.Tensor:
    """Cross-entropy (ignore 255) for baseline and IBE; one-hot BCE-with-logits for SCrIBE.

    SCrIBE's loss is averaged over the N channels (21 on VOC) and the non-255 pixels. ``ignore_as_background``
    is the companion notebook's (the default recipe): 255 becomes background before the one-hot, and the
    loss is ``BCEWithLogitsLoss()``'s mean over all B x N x H x W elements.
    """
    if kind != "scribe":
        return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX)
    if ignore_as_background:
        target = target.masked_fill(target == IGNORE_INDEX, 0)
    valid = target != IGNORE_INDEX
    n = logits.shape[1]   # the classes, background included (IBE's channel 0)
    onehot = F.one_hot(target.masked_fill(~valid, 0), n).permute(0, 3, 1, 2).float()
    per = F.binary_cross_entropy_with_logits(logits.float(), onehot, reduction="none")  # B,N,H,W
    per = per * valid.unsqueeze(1)
    return per.sum() / (valid.sum().clamp(min=1) * n)


@torch.inference_mode()
def predict(model, images: np.ndarray, device="cpu", batch_size: int = 16) -> np.ndarray:
    """uint8 NxHxWx3 images (same size) -> uint8 NxHxW argmax predictions, in batches (the figures, the video)."""
    out = []
    for s in range(0, len(images), batch_size):
        x = normalise_uint8(torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).to(device))
        out.append(channel_argmax(model(x)).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], dtype=np.uint8)

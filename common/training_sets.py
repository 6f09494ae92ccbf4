"""The training side of the data: which images train.py (and pretrain_backbone.py) trains and validates on,
for VOC (VOC train + SBD train_noval, VOC val) and for every other dataset of common/datasets (its train and val
splits), with the images --hold-out keeps out of training, and their transforms (common/data.py)."""
import numpy as np
import torch

from .data import (check_voc_root, image_id, read_split, resolve_roots, sbd_dataset, train_transform, val_transform,
                   voc_dataset)
from .datasets import check_root_flags, check_structure, dataset_spec, open_data, voc


def evenly_spaced(ids: list, n: int) -> list:
    """n of ``ids`` evenly spaced through the list (the first and the last among them), in list order; all of
    them when n >= len(ids). The rule picking train.py's --hold-out images and evaluate_corruptions.py's
    calibration images."""
    if n <= 0 or not ids:
        return []
    return [ids[i] for i in sorted(set(np.linspace(0, len(ids) - 1, min(n, len(ids))).round().astype(int)))]


def held_out_ids(voc_root, n: int, dataset=None) -> list:
    """The ids train.py --hold-out n withholds from training: n VOC train images, evenly spaced through
    ImageSets/Segmentation/train.txt (they have VOC labels, so a calibration fit can read them as it reads val).
    For another dataset (common/datasets), pass its opened train split as ``dataset``: n of its ids, evenly
    spaced through the split's order (``dataset.ids``)."""
    if n <= 0:
        return []
    if dataset is not None:
        return evenly_spaced(list(dataset.ids), n)
    return evenly_spaced(read_split(check_voc_root(voc_root, "train")), n)


def _without(dataset, ids: set, lists=("images", "targets", "masks", "ids", "conditions")):
    """The dataset without the images whose id (``image_id``: the file stem, or the adapter's ``ids``) is in
    ``ids``; every per-image list the dataset keeps is filtered alike."""
    keep = [i for i in range(len(dataset.images)) if image_id(dataset, i) not in ids]
    for name in lists:
        if name in vars(dataset):      # VOC's masks is a property over its targets
            setattr(dataset, name, [getattr(dataset, name)[i] for i in keep])
    return dataset


def build_datasets(voc_root, sbd_root, crop_size: int = 224, hold_out=()):
    """The paper's training set (VOC train + SBD train_noval) and VOC val, with their transforms; the ids in
    ``hold_out`` are left out of both training parts (``held_out_ids``)."""
    tr = train_transform(crop_size)
    parts = [voc_dataset(voc_root, "train", tr), sbd_dataset(sbd_root, tr)]
    if hold_out:
        parts = [_without(part, set(hold_out)) for part in parts]
    train = torch.utils.data.ConcatDataset(parts)
    val = voc_dataset(voc_root, "val", val_transform(crop_size))
    return train, val


def with_training_transforms(train, val, crop_size: int = 224, hold_out=()):
    """Any other dataset's opened train and val splits (common.datasets.open_data) given the transforms VOC's
    get in ``build_datasets``: the same augmentation and validation resize, at ``crop_size``; the ids in
    ``hold_out`` are left out of training. Returns ``(train, val)``."""
    train.transforms = train_transform(crop_size)
    val.transforms = val_transform(crop_size)
    if hold_out:
        train = _without(train, set(hold_out))
    return train, val


def training_data(args):
    """(spec, splits) of --data, checked before any work: the DatasetSpec (VOC's for voc and synthetic), refused
    with --model ibe or scribe when it has no background class at index 0 (common.datasets.check_structure);
    for every other dataset also its opened train and val splits (``open_data``: a missing or wrong root flag is
    refused here, before the output folder exists), None for VOC (``open_training_data`` opens it)."""
    check_root_flags(args)
    if args.data in ("voc", "synthetic"):
        check_structure(voc.SPEC, args.model)
        return voc.SPEC, None
    spec = dataset_spec(args.data, getattr(args, f"{args.data}_root"))
    check_structure(spec, args.model)
    return spec, (open_data(args, "train").dataset, open_data(args, "val").dataset)


def open_training_data(args, splits, quiet=False):
    """(training set, validation set) with their transforms; sets ``args.held_out``. VOC and the synthetic set:
    VOC train + SBD train_noval, VOC val (``build_datasets``); any other dataset: its train and val ``splits``
    (``training_data``), with --hold-out's ids taken evenly spaced from its train split. ``quiet``: no line
    when the synthetic set is generated (every process but the first under torchrun)."""
    if splits is None:
        voc_root, sbd_root = resolve_roots(args.data, args.voc_root, args.sbd_root, args.synthetic_root,
                                           quiet=quiet)
        args.held_out = held_out_ids(voc_root, args.hold_out)
        return build_datasets(voc_root, sbd_root, args.crop_size, hold_out=args.held_out)
    train_split, val_split = splits
    args.held_out = held_out_ids(None, args.hold_out, dataset=train_split)
    return with_training_transforms(train_split, val_split, args.crop_size, hold_out=args.held_out)

"""Datasets beyond VOC, one adapter module each behind one small interface (``base.DatasetSpec``).

    spec = dataset_spec("cityscapes")                 # or "voc", "ade20k", "acdc"; "folder" needs its root
    spec.classes, spec.num_classes, spec.palette, spec.has_background, spec.ignore_index
    val = spec.eval_dataset("/data/cityscapes", "val")   # items: (PIL RGB image, PIL label of train ids / 255)
    val.ids[i], val.images[i]                           # the image id (file stem) and path of item i
    check_structure(spec, "ibe")                        # UsageError: Cityscapes has no background class

    data = open_data(args, "val")                     # --data and its root flag: .spec, .root, .dataset
    run["dataset"] = dataset_record(data.spec)       # what a results folder records of the classes
    spec = spec_from_record(run["dataset"])          # ... and what its readers rebuild (no loader)

Layouts, label mappings and sources: docs/datasets.md.
"""
import dataclasses

import numpy as np

from ..cli import ROOTED_DATA, UsageError
from . import acdc, ade20k, cityscapes, folder, voc
from .base import DatasetSpec, generated_palette

DATASETS = {"voc": voc.SPEC, "cityscapes": cityscapes.SPEC, "ade20k": ade20k.SPEC, "acdc": acdc.SPEC}
NAMES = tuple(DATASETS) + ("folder",)

# The output structures that make class 0 implicit (-logsumexp of the others): they need a background class.
BACKGROUND_STRUCTURES = ("ibe", "scribe")


def dataset_spec(name: str, root=None) -> DatasetSpec:
    """The spec of dataset ``name``; "folder" reads its classes (and palette) from ``root``."""
    if name == "folder":
        return folder.spec(root)
    if name not in DATASETS:
        raise UsageError(f"--data {name!r}: expected one of {', '.join(NAMES)}")
    return DATASETS[name]


def check_structure(spec: DatasetSpec, kind: str) -> None:
    """Refuse the IBE / SCrIBE structures on a dataset whose class 0 is not a background class.

    Both emit N-1 logits and make class 0 their -logsumexp: that only means something when class 0 is "none of
    the others". The baseline structure works on every dataset.
    """
    if kind in BACKGROUND_STRUCTURES and not spec.has_background:
        raise UsageError(f"--model {kind}: the {kind.upper() if kind == 'ibe' else 'SCrIBE'} structure needs a "
                         f"background class at index 0 and {spec.name} has none (class 0 is "
                         f"{spec.classes[0]!r}); use --model baseline on {spec.name}")


@dataclasses.dataclass
class Data:
    """The dataset of a script's ``--data``: its spec, root, the opened split, and (VOC) the SBD root."""
    spec: DatasetSpec
    root: str
    dataset: object
    sbd_root: str = None


def open_data(args, split: str = "val", need_sbd: bool = False, quiet: bool = False) -> Data:
    """Open split ``split`` of ``--data`` (add_data_arguments' flags): VOC and the synthetic VOC through
    common.data (generated on first use), every other dataset through its adapter and ``--<name>-root``.
    A root flag given for another dataset than --data is refused (``check_root_flags``)."""
    check_root_flags(args)
    if args.data in ("voc", "synthetic"):
        from ..data import resolve_roots
        voc_root, sbd_root = resolve_roots(args.data, args.voc_root, getattr(args, "sbd_root", None),
                                           args.synthetic_root, need_sbd=need_sbd, quiet=quiet)
        return Data(voc.SPEC, voc_root, voc.SPEC.eval_dataset(voc_root, split), sbd_root)
    root = getattr(args, f"{args.data}_root")
    spec = dataset_spec(args.data, root)
    options = {"conditions": acdc.parse_conditions(args.acdc_conditions)} if args.data == "acdc" else {}
    return Data(spec, root, spec.eval_dataset(root, split, **options))


def check_root_flags(args) -> None:
    """Refuse a root flag given for another dataset than --data: it would be silently ignored."""
    stray = [n for n in ROOTED_DATA if n != args.data and getattr(args, f"{n}_root", None)]
    if stray:
        raise UsageError(f"--{stray[0]}-root is given but --data is {args.data}; pass --data {stray[0]}, or drop "
                         f"--{stray[0]}-root")


def dataset_record(spec: DatasetSpec) -> dict:
    """What run.json (and a checkpoint) record of a dataset's classes: JSON-ready."""
    return {"name": spec.name, "classes": list(spec.classes), "palette": spec.palette.astype(int).tolist(),
            "has_background": bool(spec.has_background), "ignore_index": int(spec.ignore_index)}


def spec_from_record(record: dict) -> DatasetSpec:
    """The spec a ``dataset_record`` describes, for the scripts that read results (no loader)."""
    return DatasetSpec(name=record["name"], classes=tuple(record["classes"]),
                       palette=np.asarray(record["palette"], np.uint8).reshape(-1, 3),
                       has_background=bool(record["has_background"]), loader=None,
                       ignore_index=int(record.get("ignore_index", 255)))


def image_ids(dataset) -> list:
    """The image ids of a dataset from this package (``dataset.ids``)."""
    return list(dataset.ids)


__all__ = ["Data", "open_data", "check_root_flags", "dataset_record", "spec_from_record", "DatasetSpec", "DATASETS", "NAMES", "dataset_spec", "check_structure", "image_ids", "generated_palette",
           "acdc", "ade20k", "cityscapes", "folder", "voc"]

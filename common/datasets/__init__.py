"""Datasets beyond VOC, one adapter module each behind one small interface (``base.DatasetSpec``).

    spec = dataset_spec("cityscapes")                 # or "voc", "ade20k", "acdc"; "folder" needs its root
    spec.classes, spec.num_classes, spec.palette, spec.has_background, spec.ignore_index
    val = spec.eval_dataset("/data/cityscapes", "val")   # items: (PIL RGB image, PIL label of train ids / 255)
    val.ids[i], val.images[i]                           # the image id (file stem) and path of item i
    check_structure(spec, "ibe")                        # UsageError: Cityscapes has no background class

Layouts, label mappings and sources: docs/datasets.md. The scripts still read VOC through common.data; this
package is what ``--data cityscapes|ade20k|acdc|folder`` will go through.
"""
from ..cli import UsageError
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


def image_ids(dataset) -> list:
    """The image ids of a dataset from this package (``dataset.ids``)."""
    return list(dataset.ids)


__all__ = ["DatasetSpec", "DATASETS", "NAMES", "dataset_spec", "check_structure", "image_ids", "generated_palette",
           "acdc", "ade20k", "cityscapes", "folder", "voc"]

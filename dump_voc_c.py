"""Precompute corrupted val images (VOC-C, Cityscapes-C, ADE20K-C, ...) as lossless PNGs, reproducibly and resumably.

The paper precomputed the four slow corruptions (glass, motion, zoom blur and snow); that is the default:

    python dump_voc_c.py --data voc --voc-root /data/voc --workers 16          # -> VOC-C/
    python dump_voc_c.py --data synthetic --corruptions all --workers 2        # all 15 on the synthetic set
    for c in glass_blur motion_blur zoom_blur snow; do python dump_voc_c.py --corruptions $c; done
    python dump_voc_c.py --data cityscapes --cityscapes-root /data/cityscapes --preset segformer-cityscapes-c \
        --workers 16 --out Cityscapes-C                                        # 2048 x 1024, as evaluated
    python dump_voc_c.py --data ade20k --ade20k-root /data/ade --preset semsegbench-ade20k-c --out ADE20K-C

Any ``--data`` (common/datasets): the images are corrupted at the resolution they are evaluated at
(``common.data.eval_sample`` under --protocol: Cityscapes at its native 2048 x 1024), so that the costly
corruptions are paid once. ``--preset`` (common/presets.py) sets the corruptions, each one's severities and the
protocol of a published benchmark; ACDC dumps the val images of ``--acdc-conditions``.

Writes ``<out>/<corruption>/<severity>/<id>.png`` (``<id>``: the dataset's image id, e.g.
``frankfurt_000000_000294``), ``<out>/labels/<id>.png`` and ``<out>/manifest.json`` (protocol, size, seed rule,
package versions, the val set and its digest, the preset, counts). Every file is written under a temporary name and
renamed; a re-run skips files that decode to the right shape, so a killed dump resumes where it stopped.
``--verify`` recomputes a sample and compares pixels. Pixels equal ``common.corruptions.corrupt_image`` under
``--corruption-code`` (default imagenet-c, the notebook's package; docs/corruptions.md) and the seed rule.

A folder holds one dump: one made under another protocol, size, seed rule, package versions, preset or val set is
refused with one line naming the difference (more corruptions or severities are added to it); ``--overwrite``
starts it afresh, moving the old folder to ``<out>.replaced-<date>-<time>`` once the first image is written.
"""
import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from common import results, vocc
from common.cli import UsageError, add_data_arguments, check_at_least, run_cli
from common.corruptions import SLOW, add_code_argument, corrupt_image, corruption_versions, parse_corruptions, parse_severities
from common.data import PROTOCOLS, check_protocol_sizes, eval_sample, single_thread_opencv
from common.datasets import open_data
from common.folders import check_output_folder, git_commit, lock_folder, replace_folder, write_text
from common.presets import PRESETS, apply_preset, conditions_of


def dump_one(index, conditions, out, protocol, size, dataset, code, palette=True):
    """Decode image ``index`` once and write its label and every pending (corruption, severity) PNG.

    Returns (image_id, number of files written). Exceptions carry the image so the run can name it. ``palette``:
    the label PNG's colours (True: VOC's; else the dataset's class colours).
    """
    image_id = None
    try:
        image_id, image, label = eval_sample(dataset, index, protocol, size)
        written = 0
        if vocc.read_png(vocc.label_path(out, image_id), label.shape) is None:
            vocc.write_bytes(vocc.label_path(out, image_id), vocc.png_bytes(label, palette=palette))
            written += 1
        for corruption, severity in conditions:
            path = vocc.image_path(out, corruption, severity, image_id)
            if vocc.read_png(path, image.shape) is not None:
                continue  # done by an earlier (possibly killed) run; a torn file fails to decode
            vocc.write_bytes(path, vocc.png_bytes(corrupt_image(image, image_id, corruption, severity, code)))
            written += 1
        return image_id, written
    except UsageError:
        raise  # already names the file (a damaged image or label)
    except Exception as e:
        where = image_id or dataset.images[index]
        raise RuntimeError(f"image {where} ({dataset.images[index]}): {type(e).__name__}: {e}") from None


class DumpImages(torch.utils.data.Dataset):
    """Item ``index``: ``dump_one`` of that image, or the error that stopped it, returned rather than raised so that
    it reaches the dump's process as the one line it is (a DataLoader worker's exception arrives with its traceback
    in the message)."""

    def __init__(self, dataset, conditions, out, protocol, size, code, palette=True):
        self.dataset, self.conditions, self.out, self.protocol, self.size = dataset, conditions, out, protocol, size
        self.code, self.palette = code, palette

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return dump_one(index, self.conditions, self.out, self.protocol, self.size, self.dataset, self.code,
                            self.palette)
        except (RuntimeError, UsageError) as e:
            return e


def dump_rest(args, items, n):
    """Images 1 .. n-1 of ``items``, in this process (--workers 1) or in DataLoader worker processes; yields
    the number of files written for each image as it finishes. The first failure stops the run: images already
    queued in a worker are not started. A worker leaves when it sees the dump's process gone (a SIGKILL, say)."""
    if args.workers == 1 or n < 2:
        done = map(items.__getitem__, range(1, n))
    else:
        done = torch.utils.data.DataLoader(items, batch_size=None, sampler=range(1, n), num_workers=args.workers,
                                           in_order=False)
    for result in done:
        if isinstance(result, Exception):
            raise result
        yield result[1]


def verify(out, dataset, n, conditions, protocol, size, sample: int, code):
    """Recompute ``sample`` evenly spread (image, condition) pairs and compare them with the decoded PNGs.

    Pixels, not bytes: PNG is lossless, so equal pixels are what evaluation needs, and a dump written by
    an earlier PNG encoder setting still verifies."""
    pairs = [(i, c) for i in range(n) for c in conditions]
    picks = [pairs[k] for k in np.linspace(0, len(pairs) - 1, min(sample, len(pairs))).round().astype(int)]
    bad = 0
    for index, (corruption, severity) in tqdm(picks, desc="verify", disable=None, leave=False):
        image_id, image, _ = eval_sample(dataset, index, protocol, size)
        path = vocc.image_path(out, corruption, severity, image_id)
        want = corrupt_image(image, image_id, corruption, severity, code)
        got = vocc.read_png(path, want.shape)
        if got is None or not np.array_equal(got, want):
            print(f"verify: MISMATCH {path}", file=sys.stderr)
            bad += 1
    return len(picks), bad


def check_dump_args(args):
    """The (corruption, severity) conditions to dump, after the checks that need no file; ``--preset`` applied
    first (it fills the protocol flags, and refuses those given beside it or a preset of another dataset)."""
    apply_preset(args, get_args_parser(), args.data)
    corruptions = parse_corruptions(args.corruptions)
    severities = parse_severities(args.severities)
    if 0 in severities and args.preset_record is None:
        raise UsageError("--severities: 0 is the clean image, which is not dumped; use 1..5")
    if args.protocol != "native" and args.size < 32:
        raise UsageError(f"--size {args.size}: imagecorruptions needs images of at least 32x32")
    check_at_least("--limit", args.limit)
    check_at_least("--workers", args.workers)
    check_output_folder(args.out)
    return conditions_of(args, corruptions, severities)


def dump_identity(args, data) -> dict:
    """What makes the pixels, and which conditions: a folder holds one dump of it (the --limit is not part of it:
    each PNG is a function of its own image, and the manifest counts the images of each condition). For --data
    voc and synthetic these are the fields every VOC-C manifest has, with "preset" after them."""
    return {"protocol": args.protocol, "size": args.size if args.protocol != "native" else None,
            "corruption_code": args.corruption_code, "seed_rule": vocc.seed_rule(args.corruption_code),
            "versions": corruption_versions(), **vocc.data_identity(args.data, data.root, data.dataset),
            "preset": args.preset_record}


def open_dump(args, held, ident):
    """Take --out: (``fresh`` under --overwrite, else None; the manifest already there, else None), refusing a
    folder that holds another dump."""
    lock_folder(args.out, held, "dump_voc_c.py")
    fresh = replace_folder(args.out, held, "dump_voc_c.py") if args.overwrite else None
    if fresh:
        return fresh, None
    old = vocc.read_manifest(args.out)
    diff = None if old is None else vocc.manifest_difference(old, ident)
    if diff is not None:
        raise UsageError(f"{os.path.join(args.out, vocc.MANIFEST)}: this folder holds another dump, "
                         f"{results.describe(diff)}; use another --out, or --overwrite to start it afresh "
                         f"(the old dump is then moved aside, untouched)")
    return None, old


def write_manifest(folder, ident, done):
    manifest = {**ident, "png": vocc.PNG_ENCODING, "images": dict(sorted(done.items())), "git_commit": git_commit()}
    # The PNGs were renamed into place without an fsync each (BENCHMARKS.md, Decisions): flush them all now,
    # so that a manifest that survives a power cut never describes files that did not.
    os.sync()
    write_text(os.path.join(folder, vocc.MANIFEST), json.dumps(manifest, indent=1) + "\n")


def dump(args, dataset, n, conditions, ident, old, fresh, palette=True):
    """Write every missing file of ``conditions`` x the first ``n`` images, then the manifest; returns the
    number of files written.

    Image 0 is dumped first, in this process, and the manifest (counting only what was complete before) is
    written beside it, so that even a killed dump says which dump its files belong to; with ``fresh``
    (--overwrite) that is also when the new folder takes the old one's place."""
    done = dict((old or {}).get("images", {}))
    if args.workers > 1:
        # Each worker is one process on one core, so OpenCV's own thread pool would only fight the other workers.
        # Set here, before image 0 uses OpenCV in this process: a forked worker that sets it after the parent has
        # used the pool deadlocks (docs/reliability.md).
        single_thread_opencv()
    bar = tqdm(total=n, desc="images", unit="img", disable=None, dynamic_ncols=True)
    try:
        first = fresh.path if fresh else args.out
        written = dump_one(0, conditions, first, args.protocol, args.size, dataset, args.corruption_code,
                           palette)[1]
        bar.update()
        write_manifest(first, ident, done)
        if fresh:
            fresh.commit()
        for files in dump_rest(args, DumpImages(dataset, conditions, args.out, args.protocol, args.size,
                                                args.corruption_code, palette), n):
            written += files
            bar.update()
    except (RuntimeError, UsageError) as e:
        raise UsageError(f"dump stopped at {e}; files written so far are complete and a re-run resumes") from None
    finally:
        bar.close()
    # The manifest lists every condition present in the folder, so several runs (a shell loop over
    # corruptions) add up to one description of the dump.
    for c, s in conditions:
        done[f"{c}/{s}"] = max(n, done.get(f"{c}/{s}", 0))
    write_manifest(args.out, ident, done)
    return written


def main(args):
    conditions = check_dump_args(args)
    data = open_data(args, "val")
    dataset = data.dataset
    # VOC's labels keep the VOC palette (its dumps stay byte for byte what they were); others their classes'.
    palette = True if data.spec.name == "voc" else data.spec.palette
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    check_protocol_sizes(dataset, range(n), args.protocol)   # an image too small for it stops the run here
    ident = dump_identity(args, data)
    if args.verify:
        vocc.check_manifest(args.out, args.protocol, args.size, ident["versions"],
                            **{k: ident[k] for k in vocc.IDENTITY if k in ident and k not in ("protocol", "size")})
        checked, bad = verify(args.out, dataset, n, conditions, args.protocol, args.size, args.verify_sample,
                              args.corruption_code)
        print(f"verify: {checked - bad} of {checked} recomputed files match pixel for pixel")
        return 1 if bad else 0
    with contextlib.ExitStack() as held:
        fresh, old = open_dump(args, held, ident)
        size = ident["size"]
        corruptions = list(dict.fromkeys(c for c, _ in conditions))
        what = (f"preset {args.preset}" if args.preset else
                f"severities {sorted({s for _, s in conditions})}")
        print(f"dumping {len(conditions)} conditions x {n} {args.data} val images ({', '.join(corruptions)}; "
              f"{what}; corruption code {args.corruption_code}; protocol {args.protocol}"
              f"{f' {size}px' if size else ''}) to {args.out} with {args.workers} worker(s)", flush=True)
        t0 = time.perf_counter()
        written = dump(args, dataset, n, conditions, ident, old, fresh, palette)
        seconds = time.perf_counter() - t0
    rate = n / seconds if seconds > 0 else float("inf")
    print(f"done: {written} files written, {n * (len(conditions) + 1) - written} already there; "
          f"{seconds:.1f}s, {rate:.2f} images/s ({rate * len(conditions):.1f} corrupted images/s)")
    return 0


def get_args_parser():
    p = argparse.ArgumentParser(description="Dump corrupted val images (VOC-C, Cityscapes-C, ...) as lossless PNGs.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corruptions", nargs="+", default=list(SLOW),
                   help="names, short names or numbers; 'all' = the 15, 'held_out', 'slow', or a group "
                        "(noise, blur, weather, digital)")
    p.add_argument("--severities", nargs="+", default=["1", "2", "3", "4", "5"], help="severities in 1..5")
    add_data_arguments(p, "voc", help="which val set to corrupt: VOC 2012 val under --voc-root, the synthetic one, "
                                      "or cityscapes, ade20k, acdc, folder under their --<name>-root "
                                      "(docs/datasets.md)")
    add_code_argument(p)
    p.add_argument("--out", default="VOC-C", help="output folder (layout in the module docstring)")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="a published benchmark's protocol: sets --corruptions, each one's severities, --protocol and "
                        "--size (refused beside them, and for another dataset); docs/datasets.md, Presets")
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                   help="paper: Pillow-resize to --size x --size before corrupting; shortside: short side --size, "
                        "aspect kept; native: original resolution; keep_ratio: aspect kept, fitted into "
                        "4 --size x --size (mmsegmentation's test resize; ADE20K: --size 512)")
    p.add_argument("--size", type=int, default=224,
                   help="image side under --protocol paper (short side: shortside; short-side bound: keep_ratio)")
    p.add_argument("--workers", type=int, default=1, help="processes; a failure in any stops the run")
    p.add_argument("--limit", type=int, default=None, help="only the first N val images")
    p.add_argument("--overwrite", action="store_true",
                   help="start --out afresh when it holds another dump: the new dump is built beside it and takes "
                        "its place once its first image is written; the old folder is moved to "
                        "<out>.replaced-<date>-<time>, untouched (without this flag a different dump is refused)")
    p.add_argument("--verify", action="store_true",
                   help="instead of dumping, recompute --verify-sample files and compare their pixels (exit 1 on a "
                        "mismatch)")
    p.add_argument("--verify-sample", type=int, default=20, help="how many files --verify recomputes")
    return p


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))

"""Precompute corrupted VOC val images (VOC-C) as lossless PNGs, reproducibly and resumably.

The paper precomputed the four slow corruptions (glass, motion, zoom blur and snow); that is the default:

    python dump_voc_c.py --data voc --voc-root /data/voc --workers 16          # -> VOC-C/
    python dump_voc_c.py --data synthetic --corruptions all --workers 2        # all 15 on the synthetic set
    for c in glass_blur motion_blur zoom_blur snow; do python dump_voc_c.py --corruptions $c; done

Writes ``<out>/<corruption>/<severity>/<id>.png``, ``<out>/labels/<id>.png`` and ``<out>/manifest.json``
(protocol, size, seed rule, package versions, counts). Every file is written under a temporary name and
renamed; a re-run skips files that decode to the right shape, so a killed dump resumes where it stopped.
``--verify`` recomputes a sample and compares bytes. Pixels equal ``common.corruptions.corrupt_image``,
i.e. ``imagecorruptions.corrupt`` under PROTOCOL.md's seed rule.

A folder holds one dump: one made under another protocol, size, seed rule, package versions or val set is
refused with one line naming the difference (more corruptions or severities are added to it); ``--overwrite``
starts it afresh, moving the old folder to ``<out>.replaced-<date>-<time>`` once the first image is written.
"""
import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
from tqdm import tqdm

from common import results, vocc
from common.cli import UsageError, add_data_arguments, run_cli
from common.corruptions import SLOW, corrupt_image, corruption_versions, parse_corruptions, parse_severities
from common.data import PROTOCOLS, check_protocol_sizes, eval_sample, image_id, resolve_roots, voc_dataset
from common.outputs import OutputLock, check_output_folder, git_commit, prepare_output_folder, write_text

# Worker-process state: the dataset is opened once per worker, not pickled with every task.
_DATASET = None


def _process_start(pid):
    """The start time of process ``pid`` (clock ticks since boot), or None when it is gone, a zombie (killed,
    not yet reaped) or unknown (no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()   # the name before ")" may hold spaces
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]   # state (field 3), start time (field 22)


def _alive(pid, start):
    if start is not None:   # Linux: the same pid with the same start time (a reused pid has another)
        return _process_start(pid) == start
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _init_worker(voc_root, main_pid):
    global _DATASET
    _DATASET = voc_dataset(voc_root, "val")
    # Each worker is one process on one core: library thread pools would only fight the other workers
    # (measured: 2 workers at 1.55x of one with them, ~1.67x without).
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    # A pool worker outlives a dump killed with SIGKILL: nobody tells it, its parent is the forkserver
    # (which the workers themselves keep alive), and the task queue never reaches EOF because every
    # worker holds its write end too. So watch the dump's own process, and leave when it is gone.
    start = _process_start(main_pid)

    def watch():
        while _alive(main_pid, start):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def dump_one(index, conditions, out, protocol, size, dataset=None):
    """Decode image ``index`` once and write its label and every pending (corruption, severity) PNG.

    Returns (image_id, number of files written). Exceptions carry the image so the run can name it.
    """
    ds = dataset if dataset is not None else _DATASET
    image_id = None
    try:
        image_id, image, label = eval_sample(ds, index, protocol, size)
        written = 0
        if vocc.read_png(vocc.label_path(out, image_id), label.shape) is None:
            vocc.write_bytes(vocc.label_path(out, image_id), vocc.png_bytes(label, palette=True))
            written += 1
        for corruption, severity in conditions:
            path = vocc.image_path(out, corruption, severity, image_id)
            if vocc.read_png(path, image.shape) is not None:
                continue  # done by an earlier (possibly killed) run; a torn file fails to decode
            vocc.write_bytes(path, vocc.png_bytes(corrupt_image(image, image_id, corruption, severity)))
            written += 1
        return image_id, written
    except UsageError:
        raise  # already names the file (a damaged image or label)
    except Exception as e:
        where = image_id or ds.images[index]
        raise RuntimeError(f"image {where} ({ds.images[index]}): {type(e).__name__}: {e}") from None


def verify(out, dataset, n, conditions, protocol, size, sample: int):
    """Recompute ``sample`` evenly spread (image, condition) pairs and compare them with the decoded PNGs.

    Pixels, not bytes: PNG is lossless, so equal pixels are what evaluation needs, and a dump written by
    an earlier PNG encoder setting still verifies."""
    pairs = [(i, c) for i in range(n) for c in conditions]
    picks = [pairs[k] for k in np.linspace(0, len(pairs) - 1, min(sample, len(pairs))).round().astype(int)]
    bad = 0
    for index, (corruption, severity) in tqdm(picks, desc="verify", disable=None, leave=False):
        image_id, image, _ = eval_sample(dataset, index, protocol, size)
        path = vocc.image_path(out, corruption, severity, image_id)
        want = corrupt_image(image, image_id, corruption, severity)
        got = vocc.read_png(path, want.shape)
        if got is None or not np.array_equal(got, want):
            print(f"verify: MISMATCH {path}", file=sys.stderr)
            bad += 1
    return len(picks), bad


def main(args):
    corruptions = parse_corruptions(args.corruptions)
    severities = parse_severities(args.severities)
    if 0 in severities:
        raise UsageError("--severities: 0 is the clean image, which is not dumped; use 1..5")
    if args.protocol != "native" and args.size < 32:
        raise UsageError(f"--size {args.size}: imagecorruptions needs images of at least 32x32")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: must be at least 1")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    check_output_folder(args.out)
    versions = corruption_versions()
    voc_root, _ = resolve_roots(args.data, args.voc_root, None, args.synthetic_root, need_sbd=False)
    dataset = voc_dataset(voc_root, "val")
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    check_protocol_sizes(dataset, range(n), args.protocol)   # an image too small for it stops the run here
    size = args.size if args.protocol != "native" else None
    conditions = [(c, s) for c in corruptions for s in severities]
    # What makes the pixels: a folder holds one dump of it (the --limit is not part of it: each PNG is a
    # function of its own image, and the manifest counts the images of each condition).
    ident = {"protocol": args.protocol, "size": size, "seed_rule": vocc.SEED_RULE, "versions": versions,
             "data": args.data, "voc_root": os.path.abspath(voc_root), "split": "val",
             "image_ids_sha256": results.ids_sha256(image_id(dataset, i) for i in range(len(dataset)))}

    if args.verify:
        vocc.check_manifest(args.out, args.protocol, args.size, versions,
                            **{k: ident[k] for k in ("seed_rule", "data", "voc_root", "split", "image_ids_sha256")})
        checked, bad = verify(args.out, dataset, n, conditions, args.protocol, args.size, args.verify_sample)
        print(f"verify: {checked - bad} of {checked} recomputed files match pixel for pixel")
        return 1 if bad else 0
    prepare_output_folder(args.out)
    with contextlib.ExitStack() as held:
        held.enter_context(OutputLock(args.out, "dump_voc_c.py"))
        results.clear_stale(args.out)
        fresh, old = None, None
        if args.overwrite and results.has_contents(args.out):
            fresh = held.enter_context(results.Afresh(args.out))
            held.enter_context(OutputLock(fresh.folder, "dump_voc_c.py --overwrite"))
        else:
            old = vocc.read_manifest(args.out)
            diff = None if old is None else vocc.manifest_difference(old, ident)
            if diff is not None:
                raise UsageError(f"{os.path.join(args.out, vocc.MANIFEST)}: this folder holds another dump, "
                                 f"{results.describe(diff)}; use another --out, or --overwrite to start it afresh "
                                 f"(the old dump is then moved aside, untouched)")
        return dump(args, dataset, voc_root, n, corruptions, severities, conditions, ident, old, fresh)


def dump(args, dataset, voc_root, n, corruptions, severities, conditions, ident, old, fresh):
    """Write every missing file of ``conditions`` x the first ``n`` images, then the manifest.

    Image 0 is dumped first, in this process, and the manifest (counting only what was complete before) is
    written beside it, so that even a killed dump says which dump its files belong to; with ``fresh``
    (--overwrite) that is also when the new folder takes the old one's place."""
    size = ident["size"]
    print(f"dumping {len(conditions)} conditions x {n} images ({', '.join(corruptions)}; severities "
          f"{severities}; protocol {args.protocol}{f' {size}px' if size else ''}) to {args.out} "
          f"with {args.workers} worker(s)", flush=True)
    t0 = time.perf_counter()
    written = 0
    done = dict((old or {}).get("images", {}))

    def write_manifest(folder):
        manifest = {**ident, "png": vocc.PNG_ENCODING, "images": dict(sorted(done.items())),
                    "git_commit": git_commit()}
        # The PNGs were renamed into place without an fsync each (about 0.3 ms a file): flush them all now,
        # so that a manifest that survives a power cut never describes files that did not.
        os.sync()
        write_text(os.path.join(folder, vocc.MANIFEST), json.dumps(manifest, indent=1) + "\n")

    bar = tqdm(total=n, desc="images", unit="img", disable=None, dynamic_ncols=True)
    try:
        first = fresh.path if fresh else args.out
        written += dump_one(0, conditions, first, args.protocol, args.size, dataset)[1]
        bar.update()
        write_manifest(first)
        if fresh:
            fresh.commit()
        if args.workers == 1:
            for i in range(1, n):
                written += dump_one(i, conditions, args.out, args.protocol, args.size, dataset)[1]
                bar.update()
        elif n > 1:
            # forkserver, not fork: a child forked from a process whose torch/OpenMP thread pools have run
            # can hang on its first parallel op (seen when the dump runs inside a bigger Python process).
            ctx = multiprocessing.get_context("forkserver")
            with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(voc_root, os.getpid())) as pool:
                futures = [pool.submit(dump_one, i, conditions, args.out, args.protocol, args.size)
                           for i in range(1, n)]
                try:
                    for f in as_completed(futures):
                        written += f.result()[1]
                        bar.update()
                except BaseException:
                    for f in futures:  # stop at the first failure: queued images are not started
                        f.cancel()
                    raise
    except (RuntimeError, UsageError) as e:
        raise UsageError(f"dump stopped at {e}; files written so far are complete and a re-run resumes") from None
    finally:
        bar.close()
    seconds = time.perf_counter() - t0

    # The manifest lists every condition present in the folder, so several runs (a shell loop over
    # corruptions) add up to one description of the dump.
    for c, s in conditions:
        done[f"{c}/{s}"] = max(n, done.get(f"{c}/{s}", 0))
    write_manifest(args.out)
    rate = n / seconds if seconds > 0 else float("inf")
    print(f"done: {written} files written, {n * (len(conditions) + 1) - written} already there; "
          f"{seconds:.1f}s, {rate:.2f} images/s ({rate * len(conditions):.1f} corrupted images/s)")
    return 0


def get_args_parser():
    p = argparse.ArgumentParser(description="Dump corrupted VOC val images (VOC-C) as lossless PNGs.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corruptions", nargs="+", default=list(SLOW),
                   help="names, short names or numbers; 'all' = the 15, 'held_out', 'slow', or a group "
                        "(noise, blur, weather, digital)")
    p.add_argument("--severities", nargs="+", default=["1", "2", "3", "4", "5"], help="severities in 1..5")
    add_data_arguments(p, "voc", help="which val set to corrupt: VOC 2012 val under --voc-root, or the synthetic one")
    p.add_argument("--out", default="VOC-C", help="output folder (layout in the module docstring)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                   help="paper: Pillow-resize to --size x --size before corrupting; shortside: short side --size, "
                        "aspect kept; native: original resolution")
    p.add_argument("--size", type=int, default=224, help="image side under --protocol paper (short side: shortside)")
    p.add_argument("--workers", type=int, default=1, help="processes; a failure in any stops the run")
    p.add_argument("--limit", type=int, default=None, help="only the first N val images")
    p.add_argument("--overwrite", action="store_true",
                   help="start --out afresh when it holds another dump: the new dump is built beside it and takes "
                        "its place once its first image is written; the old folder is moved to "
                        "<out>.replaced-<date>-<time>, untouched (without this flag a different dump is refused)")
    p.add_argument("--verify", action="store_true",
                   help="instead of dumping, recompute --verify-sample files and compare bytes (exit 1 on a mismatch)")
    p.add_argument("--verify-sample", type=int, default=20, help="how many files --verify recomputes")
    return p


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))

"""What every script's command line shares: the one user-error type, ``run_cli``, and the common flags.

Anything the *user* can fix (a wrong path, a bad flag value, a malformed file) is raised as
``UsageError``; ``run_cli`` in every script catches it, prints ``error: <message>`` on stderr and
exits with status 2. So is a write the disk refuses (full, read-only, no permission: ``write_problem``).
Ctrl-C is one line saying what was kept, exit status 130; SIGTERM the same with 143, after the same clean-up
(temporary files removed on the way out). Everything else is a bug and keeps its traceback.

    p = argparse.ArgumentParser(...)
    add_data_arguments(p, default="voc", sbd=True)   # --data, --voc-root, [--sbd-root], --synthetic-root
    add_device_arguments(p, amp=True)                # --device, [--amp]
    run_cli(main, p)
"""
import errno
import os
import signal
import sys

DATA_CHOICES = ("voc", "synthetic", "cityscapes", "ade20k", "acdc", "folder")
# The datasets of common/datasets read from one root flag each: --cityscapes-root, --ade20k-root, ...
ROOTED_DATA = ("cityscapes", "ade20k", "acdc", "folder")
AMP_CHOICES = ("none", "bf16", "fp16")


class UsageError(Exception):
    """A problem with the user's input: message says what is wrong, which file, and what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a job scheduler, torchrun stopping its ranks), raised like Ctrl-C so that every ``finally``
    and ``except BaseException`` on the way out runs: temporary files are removed as on Ctrl-C."""


# What the user sees for the writes a disk refuses: the errno's cause in words (os.strerror's, made plainer).
DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}

# What run_cli says was kept after Ctrl-C / SIGTERM when the script does not say it better (``kept=``).
KEPT = "every finished file is kept and none is half-written; the same command continues where this one stopped"


def write_problem(e: BaseException, path=None):
    """The one line for an OSError that the user fixes (no space, read-only, no permission), naming the path
    (``path``, else the one the OSError carries); None for any other exception."""
    if not isinstance(e, OSError) or e.errno not in DISK_ERRORS:
        return None
    path = path or e.filename
    where = f"cannot write {path}" if path else "a write failed"
    return (f"{where}: {DISK_ERRORS[e.errno]}; free space or choose a writable place (--out) and run the same "
            f"command again (files written before are intact)")


def run_cli(main, parser, kept=None):
    """Parse arguments, run ``main(args)``, and turn a UsageError, or a write the disk refuses, into one stderr
    line + exit 2; Ctrl-C into one line + exit 130 (SIGTERM: 143). ``kept(args)`` says what an interrupted run
    kept and how to continue (default ``KEPT``)."""
    args = parser.parse_args()
    previous, hook = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    try:
        signal.signal(signal.SIGTERM, _terminate)
        sys.unraisablehook = _redeliver(hook)
    except ValueError:   # not the main thread: leave SIGTERM as it is
        previous = None
    try:
        try:
            return main(args)
        except Exception as e:
            # An error raised while an interrupt unwinds (torch.save's zip writer, cut mid-record, fails
            # again in its __exit__) is the interrupt's consequence: report the interrupt.
            interrupt = interrupt_behind(e)
            if interrupt is None:
                raise
            raise interrupt from None
    except UsageError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        line = write_problem(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
        try:
            note = kept(args) if kept else KEPT
        except Exception:   # never a traceback on the way out
            note = KEPT
        print(f"{what}: {note}", file=sys.stderr, flush=True)
        sys.exit(143 if isinstance(e, Terminated) else 130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
            sys.unraisablehook = hook


def interrupt_behind(e: BaseException):
    """The KeyboardInterrupt (or Terminated) that ``e`` was raised while handling, if any; else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__context__
    return None


def quiet_worker(worker_id=None) -> None:
    """DataLoader ``worker_init_fn`` for loaders that pass tensors: a worker hands each batch's shared memory to
    the main process over a connection served by a thread of its own (multiprocessing's resource_sharer). When
    Ctrl-C stops the main process mid-batch, that thread's broken connection printed a traceback after run_cli's
    one line; a connection error in a worker's side thread means the run is ending, so it is dropped."""
    import threading

    hook = sys.excepthook

    def quiet(kind, value, tb):
        if issubclass(kind, (OSError, EOFError)) and threading.current_thread() is not threading.main_thread():
            return
        hook(kind, value, tb)

    sys.excepthook = quiet


def _terminate(signum, frame):
    # Once: a second SIGTERM during the clean-up it starts ends the process the default way.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


def _redeliver(hook):
    """A signal that lands while Python runs a callback (a weakref's, a finaliser, the import lock's) raises
    there, and Python drops an exception raised there ("Exception ignored in ..."): the run would go on as if
    never interrupted. Send the signal again a moment later, when the main thread is back in ordinary code."""
    import threading

    def unraisable(info):
        if not isinstance(info.exc_value, KeyboardInterrupt):
            return hook(info)
        sig = signal.SIGTERM if isinstance(info.exc_value, Terminated) else signal.SIGINT
        if sig == signal.SIGTERM:
            signal.signal(signal.SIGTERM, _terminate)
        threading.Timer(0.05, os.kill, (os.getpid(), sig)).start()

    return unraisable


def one_line(message: str) -> str:
    """A UsageError raised in a DataLoader worker comes back wrapped in the worker's traceback text;
    keep only our own message, its last line."""
    if "Original Traceback" in message:
        last = message.strip().splitlines()[-1]
        return last.split("UsageError: ", 1)[-1]
    return message


def check_plain_name(name, source: str) -> str:
    """Return ``name`` if it can be used as one path component inside an output folder, else raise.

    Names that come from files or flags (a checkpoint's stored name, ``--names``, a split file's image ids)
    become folder and file names; ``../x``, ``a/b``, an absolute path or a hidden name would write outside the
    folder the user named, or beside it. ``source`` says where the name came from (a checkpoint path, a split
    file and line) for the message.
    """
    ok = (isinstance(name, str) and name not in ("", ".", "..") and not name.startswith(".")
          and "/" not in name and "\\" not in name and "\0" not in name and name == name.strip()
          and all(ch.isprintable() for ch in name))
    if not ok:
        raise UsageError(f"{source}: the name {name!r} cannot be used as a file name (it must be one plain name: "
                         f"no '/', '\\', leading '.', spaces at its ends or control characters); rename it")
    return name


def check_at_least(flag: str, value, low: int = 1) -> None:
    """One UsageError for a numeric flag below its smallest sensible value (None: the flag was not given)."""
    if value is not None and value < low:
        raise UsageError(f"{flag} {value}: must be at least {low}")


def add_data_arguments(p, default="voc", sbd=False, help=None) -> None:
    """--data, --voc-root, --synthetic-root (and --sbd-root for the scripts that train), and the root flag of
    every other dataset (common/datasets, docs/datasets.md)."""
    p.add_argument("--data", choices=DATA_CHOICES, default=default,
                   help=help or "voc = PASCAL VOC 2012 under --voc-root; synthetic = the generated VOC-format dataset "
                                "under --synthetic-root (written on first use); cityscapes, ade20k, acdc, folder: "
                                "that dataset under its --<name>-root (docs/datasets.md)")
    p.add_argument("--voc-root", default=None, help="folder that contains VOCdevkit/VOC2012 (--data voc)")
    if sbd:
        p.add_argument("--sbd-root", default=None,
                       help="folder that contains img/, cls/ and train_noval.txt (--data voc)")
    p.add_argument("--synthetic-root", default="data/synthetic",
                   help="where the synthetic dataset is, or is generated (--data synthetic)")
    p.add_argument("--cityscapes-root", default=None,
                   help="folder that contains leftImg8bit/ and gtFine/ (--data cityscapes; 19 train ids)")
    p.add_argument("--ade20k-root", default=None,
                   help="folder that contains ADEChallengeData2016/ (or is it) (--data ade20k; 150 classes)")
    p.add_argument("--acdc-root", default=None, help="folder that contains rgb_anon/ and gt/ (--data acdc)")
    p.add_argument("--acdc-conditions", default=None,
                   help="comma-separated ACDC conditions among fog,night,rain,snow (--data acdc; default all four)")
    p.add_argument("--folder-root", default=None,
                   help="folder with classes.txt, images/, labels/, train.txt, val.txt (--data folder)")


def add_device_arguments(p, amp=True, default=None, amp_help="autocast precision for the forward") -> None:
    """--device (default: cuda when available) and, where a model runs in bulk, --amp."""
    p.add_argument("--device", default=default,
                   help="cuda (the current GPU, or LOCAL_RANK's under torchrun), cuda:N or cpu"
                        + ("" if default else "; default: cuda when available"))
    if amp:
        p.add_argument("--amp", choices=AMP_CHOICES, default="none", help=amp_help)

"""The one exception type that the scripts turn into a one-line message and exit status 2.

Anything the *user* can fix (a wrong path, a bad flag value, a malformed file) is raised as
``UsageError``; ``run_cli`` in every script catches it, prints ``error: <message>`` on stderr and
exits with status 2. Everything else is a bug and keeps its traceback.
"""
import sys


class UsageError(Exception):
    """A problem with the user's input: message says what is wrong, which file, and what to do."""


def run_cli(main, parser):
    """Parse arguments, run ``main(args)``, and turn a UsageError into one stderr line + exit 2."""
    args = parser.parse_args()
    try:
        return main(args)
    except UsageError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        sys.exit(2)


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

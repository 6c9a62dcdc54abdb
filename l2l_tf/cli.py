"""What the absl scripts in `experiments/` share: user errors as one line and exit code 2.

A user mistake (a bad flag, a missing file) must not end in a traceback: scripts raise
`UsageError` (turning the library's `ValueError`s about configuration into it with
`configuration_errors`) and `run` prints `error: <message>` and exits with code 2, having
written nothing.
"""

import importlib
import os
import sys
import tempfile

from absl import app, flags, logging

from l2l_tf import networks


class UsageError(Exception):
    """A mistake in how a script was called; the message names the problem and the fix."""


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _fail(f"{error}. See --helpfull.")


def _fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run(main):
    """`absl.app.run(main)` with flag errors and user errors reported as one line, exit 2."""

    def guarded(argv):
        if len(argv) > 1:
            _fail(f"unexpected arguments {argv[1:]}: give everything as --flag=value.")
        try:
            return main(argv)
        except (UsageError, FileNotFoundError) as error:
            _fail(str(error))

    logging.set_verbosity(logging.WARNING)
    app.run(guarded, flags_parser=_parse_flags)


def require(module, extra, package=None):
    """Imports an optional dependency, or fails with one line naming the extra to install
    (`package`: its name on PyPI, where that is not the module's)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"{module} is not installed, and this script needs it: pip install "
            f"\".[{extra}]\" in the l2l_tf checkout (or pip install {package or module})."
        ) from None


class configuration_errors:
    """Context manager: a `ValueError` raised while building from flags is a `UsageError`."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is not None and issubclass(kind, ValueError):
            raise UsageError(str(error)) from None
        return False


TEMPORARY_PREFIX = networks.TEMPORARY_PREFIX


def write_text_atomically(path, text):
    """Writes `text` to `path` through a temporary file and a rename: never a half file.

    A process killed before the rename leaves the temporary file (`TEMPORARY_PREFIX...`)
    beside `path`, never a half-written `path`; train.py removes such files when it starts.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=TEMPORARY_PREFIX)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp_path, networks.default_file_mode())  # mkstemp makes 0600 files
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


"""Imported first by the scripts: imports TensorFlow with its start-up chatter silenced.

TensorFlow 2.21 writes INFO lines (oneDNN, CUDA drivers) to stderr while it is imported,
before `TF_CPP_MIN_LOG_LEVEL` is honoured, so a user error would not be the only line a
script prints. Standard error is pointed at /dev/null for the import alone; an import that
fails still raises, and its traceback is printed once stderr is back.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_saved_stderr = os.dup(2)
_devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(_devnull, 2)
try:
    import tensorflow  # noqa: F401
    import tensorflow.python.platform.build_info  # noqa: F401
    tensorflow.config.list_logical_devices()  # device start-up logs here, not later
finally:
    os.dup2(_saved_stderr, 2)
    os.close(_devnull)
    os.close(_saved_stderr)

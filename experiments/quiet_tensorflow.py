"""Imported first by the scripts: imports TensorFlow with its start-up chatter silenced.

It also starts TensorFlow's runtime (except for train.py's multi-worker and TPU strategies,
which must configure it themselves), so it applies train.py's --logical_cpus first.

TensorFlow 2.21 writes INFO lines (oneDNN, CUDA drivers) to stderr while it is imported,
before `TF_CPP_MIN_LOG_LEVEL` is honoured, so a user error would not be the only line a
script prints. Standard error is pointed at /dev/null for the import alone; an import that
fails still raises, and its traceback is printed once stderr is back.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_saved_stderr = os.dup(2)
_devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(_devnull, 2)
try:
    import tensorflow  # noqa: F401

    # train.py's --logical_cpus must split the CPU before the runtime starts, which is here.
    for arg in sys.argv[1:]:
        if arg.startswith("--logical_cpus=") and arg.split("=", 1)[1].isdigit():
            count = int(arg.split("=", 1)[1])
            if count > 0:
                tensorflow.config.set_logical_device_configuration(
                    tensorflow.config.list_physical_devices("CPU")[0],
                    [tensorflow.config.LogicalDeviceConfiguration()] * count)
    # Device start-up logs here, not later; but multi-worker and TPU strategies must set up
    # the runtime themselves, so it is left to them.
    if not any(arg in ("--strategy=multi_worker", "--strategy=tpu") for arg in sys.argv[1:]):
        tensorflow.config.list_logical_devices()
finally:
    os.dup2(_saved_stderr, 2)
    os.close(_devnull)
    os.close(_saved_stderr)

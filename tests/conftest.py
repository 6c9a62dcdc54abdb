"""Test set-up: quiet TensorFlow, offline MNIST, and small shared helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_SHARED_TFDS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tensorflow_datasets")
if "TFDS_DATA_DIR" not in os.environ and os.path.isdir(_SHARED_TFDS):
    os.environ["TFDS_DATA_DIR"] = os.path.abspath(_SHARED_TFDS)

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "mnist: needs the MNIST TFDS data dir (TFDS_DATA_DIR)")


@pytest.fixture
def mnist_data_dir():
    data_dir = os.environ.get("TFDS_DATA_DIR")
    if not data_dir or not os.path.isdir(os.path.join(data_dir, "mnist")):
        pytest.fail("MNIST is not prepared in TFDS_DATA_DIR; see ../shared/data/README.md")
    return data_dir

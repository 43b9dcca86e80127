"""Fixtures for the face-detection tests; every setting here ends with this package of tests."""
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
try:
    import transferlab  # noqa: F401
except ImportError:  # running from a plain checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from .synthetic import write_csv_dataset  # noqa: E402


@pytest.fixture(scope="package")
def synthetic_train(tmp_path_factory) -> Path:
    return write_csv_dataset(tmp_path_factory.mktemp("faces_train"), 150, seed=0)


@pytest.fixture(scope="package")
def synthetic_test(tmp_path_factory) -> Path:
    return write_csv_dataset(tmp_path_factory.mktemp("faces_test"), 40, seed=1)


TRAINED_EPOCHS = 5  # enough for the fine-tuned detector to beat the pretrained one on held-out faces


@pytest.fixture(scope="package")
def trained_run(tmp_path_factory, synthetic_train):
    """A detector run on the one engine (every epoch run: no early stopping)."""
    from transferlab.api import train

    return train(synthetic_train, model="blazeface_front", out=tmp_path_factory.mktemp("runs") / "faces",
                 epochs=TRAINED_EPOCHS,
                 batch_size=32, patience=0, box_augment={"zoom_out_p": 0.0}, progress=False)


@pytest.fixture(scope="package")
def real_faces(shared_datasets):
    """Samples of the shared real photos' train split, read in place (tests using it are marked shared)."""
    from transferlab.detect.data import load_faces

    return load_faces(shared_datasets / "faces" / "train.csv").samples

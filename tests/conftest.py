import os
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def short_tmp():
    """A short temp dir: AF_UNIX socket paths are limited to 107 bytes, pytest's tmp_path is long."""
    path = Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _quiet_torch_threads():
    # Tests share 2 cores with the daemons they start.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield

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


@pytest.fixture(scope="module")
def recipes_from_this_module(request):
    """Lets `module:attr` recipe names load from the test module that asks for it (the
    allow-list a node reads from $FLOCKD_RECIPE_MODULES)."""
    from flockd.fl.recipe import RECIPE_MODULES_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RECIPE_MODULES_ENV, request.module.__name__)
        yield

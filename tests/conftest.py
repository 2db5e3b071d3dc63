import os
import tempfile
from pathlib import Path

import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)  # for fixtures that act on a failure
    return report


@pytest.fixture
def short_tmp(request):
    """A short temp dir: AF_UNIX socket paths are limited to 107 bytes, pytest's tmp_path is long.
    When the test failed, the end of every daemon log in it goes to stderr first: pytest
    shows it with the failure, and the directory is gone after."""
    path = Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))
    yield path
    import shutil
    import sys

    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for log in sorted(path.glob("**/flockd.log")):
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print(f"--- {log.relative_to(path)} (last {len(tail)} lines)", *tail, sep="\n", file=sys.stderr)
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

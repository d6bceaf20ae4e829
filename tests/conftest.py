import ctypes
import gc
import logging
import shutil
import tempfile

import pytest
import torch

import zoo
from zoo.registry import get_entry


try:  # glibc keeps freed heap pages; malloc_trim hands them back (elsewhere: nothing to do)
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError, TypeError):
    _malloc_trim = None

SUITE_DISK_GB = 2.3  # the default suite's peak in $TMPDIR (README, "Run the tests")


def pytest_report_header(config) -> str:
    """Free space where the tests write: a disk that fills mid-run fails dozens of tests at random."""
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free / 1e9
    line = f"free space in {folder}: {free:.1f} GB (the default suite writes at most {SUITE_DISK_GB} GB there)"
    if free < SUITE_DISK_GB + 0.5:
        line += "\nWARNING: too little; free some disk or point TMPDIR at a folder with more room"
    return line


@pytest.fixture(scope="module", autouse=True)
def _free_module_memory(request):
    """When a test module ends, drop what it cached (``functools.cache`` results: nets, checkpoints) and hand the
    freed heap back to the OS, so the suite's peak memory is one module's, not the sum of all of them."""
    yield
    for value in list(vars(request.module).values()):
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_logging_errors(monkeypatch):
    """Fail the test in which a log handler could not write (logging prints "--- Logging error ---" and goes on)."""
    errors = []
    report = logging.Handler.handleError

    def handle_error(self, record):
        errors.append(f"{type(self).__name__} could not log {record.getMessage()!r}")
        report(self, record)

    monkeypatch.setattr(logging.Handler, "handleError", handle_error)
    yield
    if errors:
        pytest.fail("logging error(s): " + "; ".join(errors), pytrace=False)


@pytest.fixture
def float32_packing(monkeypatch):
    """Pack float32 weights whatever this CPU's default (``Linear.pack_float32`` is off on Intel CPUs)."""
    from zoo.nets.pe_vit import Linear

    monkeypatch.setattr(Linear, "pack_float32", True)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    """A folder for files a module's tests share, removed when they end (a passing test's ``tmp_path`` goes at once)."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


ALL_MODELS = zoo.list_pretrained_models()
# one checkpoint per architecture: a -Tiling release has its base's (test_registry checks it), so the numerical
# comparisons run once for both
ARCHITECTURES = [n for n in ALL_MODELS if not get_entry(n).variant.endswith("-Tiling")]


def entry_of(name: str):
    return get_entry(name)

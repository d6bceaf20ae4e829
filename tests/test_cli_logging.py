"""The CLI's log handler writes to ``sys.stderr`` as it is at each message, so a stream that was replaced and
closed (pytest's capture between tests, a notebook cell) never gets a "Logging error ... closed file"."""

import io
import logging
import sys

from zoo.cli import _configure_logging


def test_cli_log_handler_follows_sys_stderr(monkeypatch):
    log = logging.getLogger("zoo")
    monkeypatch.setattr(log, "handlers", [])
    monkeypatch.setattr(log, "level", log.level)
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    _configure_logging(quiet=False)
    log.info("one")
    first.close()  # the stream the handler was set up with is gone
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    _configure_logging(quiet=False)  # a second run adds no second handler
    errors = []
    monkeypatch.setattr(logging.Handler, "handleError", lambda self, record: errors.append(record))
    log.info("two")
    assert errors == [] and second.getvalue() == "pe-zoo: two\n" and len(log.handlers) == 1

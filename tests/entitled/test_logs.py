"""The brake on log floods."""

from __future__ import annotations

import logging

from entitled.logs import RepeatFilter


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, msg, None, None)


def test_repeats_are_held_back_and_counted() -> None:
    f = RepeatFilter(window_s=60)
    assert f.filter(_record("Unable connect to node %s"))
    assert not any(f.filter(_record("Unable connect to node %s")) for _ in range(1000))
    assert f.filter(_record("another message"))
    f.window_s = 0
    later = _record("Unable connect to node %s")
    assert f.filter(later)
    assert "and 1000 more like it" in later.msg

"""Logging for the `entitled` processes: the application's own records shown at the chosen
level, and a brake on floods of identical records (aiokafka logs every failed reconnect,
tens of thousands of lines while a broker restarts)."""

from __future__ import annotations

import logging
import time


class RepeatFilter(logging.Filter):
    """Lets the first record of each (logger, message template) through per `window_s`,
    then says how many it held back."""

    def __init__(self, window_s: float = 5.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        first, held = self._seen.get(key, (0.0, 0))
        if now - first < self.window_s:
            self._seen[key] = (first, held + 1)
            return False
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it)"
        return True


# Loggers of libraries that are quiet below WARNING whatever the root level: stripe-python
# logs every request it makes (URL, request id; bodies at DEBUG), which is nobody's business in
# our logs and must never risk carrying what a key or a customer sent.
QUIET = ("stripe",)


def quiet_libraries() -> None:
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure(level: str = "info") -> None:
    """Root logging at `level` to stderr, with repeats of one message held back."""
    quiet_libraries()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

"""A writer bug, loaded as a plugin (ENTITLED_RULE_PLUGINS) by the isolation tests: every
write of mirrored rows raises, whatever the event. The worker must stop loudly, not
dead-letter the whole log."""

from __future__ import annotations

from typing import Any

from projections import upserts


async def broken_write_rows(*args: Any, **kwargs: Any) -> None:
    raise ValueError("a bug in the writer")


upserts.write_rows = broken_write_rows  # type: ignore[assignment]

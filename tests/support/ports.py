"""`free_port`: the one helper for an OS-chosen free TCP port (the service launcher's)."""

from __future__ import annotations

from launcher.services._process import free_port

__all__ = ["free_port"]

"""entitled.loops: the worker's, relay's and hydrator's loops are uvloop's. Pure."""

from __future__ import annotations

import asyncio

import uvloop

from entitled import loops


def test_install_makes_every_new_loop_a_uvloop_one() -> None:
    try:
        loops.install()
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop_policy(None)  # the test process's own again
    loop = asyncio.new_event_loop()
    assert not isinstance(loop, uvloop.Loop)
    loop.close()

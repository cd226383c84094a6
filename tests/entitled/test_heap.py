"""entitled.heap: what a process built to start is kept out of later collections. Pure."""

from __future__ import annotations

import gc

from entitled import heap


def test_freeze_moves_what_lives_now_out_of_every_collection_and_collects_first() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    Cycle()  # garbage in a cycle: only a collection frees it, and freeze must not keep it
    kept = Cycle()
    gc.unfreeze()
    try:
        heap.freeze()
        assert gc.get_freeze_count() > 0
        assert not any(type(o) is Cycle for o in gc.get_objects())  # frozen or collected
        assert kept.me is kept
    finally:
        gc.unfreeze()
    assert sum(type(o) is Cycle for o in gc.get_objects()) == 1  # the live one, back

"""The ingest under load while the broker restarts: it answers 503 while Kafka is away and
200 again by itself soon after it is back; every 200 is in the log.

The focused reproduction of what the chaos test saw: writes that time out while the broker
is down leave the idempotent producer with a gap in its sequence numbers, and without a
reset every later write to those partitions is refused (OutOfOrderSequenceNumber).
This stops and restarts the SESSION Kafka; it is restored in `finally`.
"""

from __future__ import annotations

import itertools
import time

from entitled.settings import Settings
from launcher import services as svc
from launcher.workload import Workload
from tests.support.kafka import log_records
from tests.support.load import Poster
from tests.support.polling import wait_until
from tests.support.processes import Procs
from tests.support.system import start_system

SECRET = "whsec_test_secret"


def test_ingest_answers_200_again_after_a_kafka_restart(
    settings: Settings, services_settings: Settings, procs: Procs
) -> None:
    events = list(itertools.islice(Workload(customers=600, seed=11).events(), 1200))
    system = start_system(procs, workers=0, api=False)
    poster = Poster(system.ingest_urls, events, SECRET, rate=100, overall_s=90).start()
    wait_until(lambda: len(poster.acked) > 300, 60, "the first 300 acks", procs)
    svc.stop_kafka(services_settings)
    try:
        time.sleep(3.0)  # the fault: the broker stays away this long under load
    finally:
        svc.start_kafka(services_settings)
    back = time.monotonic()
    acked_before = len(poster.acked)
    wait_until(
        lambda: len(poster.acked) > acked_before + 100 or poster.done.is_set(),
        60,
        "acks after the restart",
        procs,
    )
    first_after = min((t for t in poster.acked.values() if t > back), default=None)
    poster.join(180)
    in_log = {r.event_id for r in log_records(settings)}
    assert set(poster.acked) <= in_log, "an event answered 200 is not in the log"
    assert poster.statuses.get("503", 0) > 0, "the fault did not happen under load"
    assert first_after is not None and first_after - back < 30, (
        f"no 200 within 30 s of the broker's return; statuses {dict(poster.statuses)}\n"
        f"{system.ingests[0].tail(20)}"
    )
    assert not poster.gave_up, (
        f"{len(poster.gave_up)} of {len(events)} events never got a 200 after the restart; "
        f"statuses {dict(poster.statuses)}\n{system.ingests[0].tail(20)}"
    )

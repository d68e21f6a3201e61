"""Keep Python's cyclic garbage collector off the objects built at startup.

By the time the gateway serves, it holds a few hundred thousand long-lived
objects (imported modules, the FastAPI app and its pydantic schemas, the site
configuration, device profiles, 3,000 meters' state). CPython's collector
walks all of them in every full collection, and a steady stream of messages
triggers full collections often: measured on the MQTT intake
(``bench/mqtt_ingest.py``), a third of the gateway's CPU per event went to
walking objects that never become garbage. ``gc.freeze()`` moves everything
alive at that moment into a permanent generation the collector skips; objects
made later are collected as usual, and frozen ones are still freed by
reference counting when the last reference goes.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def settle_heap() -> None:
    """Collect once, then freeze what survives (call once the service is built)."""
    gc.collect()
    gc.freeze()
    log.info("startup objects frozen for the collector count=%d", gc.get_freeze_count())

"""Slots for requests that hold a web thread while they wait: waiting or streaming /v1 chat completions.

Under gunicorn's threaded workers (gunicorn.conf.py) each request holds one of web.threads threads until it
answers. A completion that waits for its job, or a stream, can hold its thread for minutes; if all threads
waited, the process would stop answering /healthz, the pages and the API. So each process admits at most
web.threads - RESERVED_THREADS waiting requests at once, and answers the next one 429 (Retry-After) at once.
"""

from __future__ import annotations

import threading
from typing import Callable

from flask import current_app

from shared.errors import TooManyJobs

RESERVED_THREADS = 2  # threads per web process kept for requests that do not wait
RETRY_AFTER = 5  # seconds a refused waiting request is told to wait before retrying
_create_lock = threading.Lock()


class WaitSlots:
    """A non-blocking counter of the waiting requests one process admits."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._free = threading.BoundedSemaphore(capacity)

    def take(self) -> Callable[[], None]:
        """Take a slot and return the function that gives it back (once, however often it is called).

        Raises TooManyJobs (429) when all are held by other waiting requests.
        """
        if not self._free.acquire(blocking=False):
            raise TooManyJobs(f"this web process already holds {self.capacity} waiting or streaming completions "
                              f"(web.workers x (web.threads - {RESERVED_THREADS}) per server); retry shortly, "
                              "or raise web.threads", retry_after=RETRY_AFTER)
        held = [True]
        lock = threading.Lock()

        def release_slot() -> None:
            with lock:
                if held[0]:
                    held[0] = False
                    self._free.release()

        return release_slot


def wait_slots() -> WaitSlots:
    """Return the current app's slots, sized from web.threads."""
    slots = current_app.extensions.get("instaboost_wait_slots")
    if slots is None:
        with _create_lock:
            slots = current_app.extensions.get("instaboost_wait_slots")
            if slots is None:
                from web.context import services

                threads = services().settings.web.threads
                slots = current_app.extensions["instaboost_wait_slots"] = WaitSlots(max(1, threads - RESERVED_THREADS))
    return slots

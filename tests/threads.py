"""Test helpers for calls made while another thread holds a program's lock."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def held_elsewhere(lock: threading.Lock, release_after: float = 0.2) -> Iterator[None]:
    """Hold ``lock`` on another thread while the body runs, and let it go
    ``release_after`` seconds after the body starts: a call that waits for the
    lock goes on after that, one that refuses to wait sees it held."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    timer = threading.Timer(release_after, release.set)
    timer.start()
    try:
        yield
    finally:
        release.set()
        timer.cancel()
        thread.join()

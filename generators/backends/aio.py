"""Synchronous streaming over asynchronous requests, for the HTTP backends.

    with LoopThread() as loop:
        for tag, result in bounded_stream(requests, lambda tag, conv: loop.submit(coro(conv)), limit=16):
            ...

`LoopThread` runs an asyncio event loop in a daemon thread, so sync code (a generator, a
Prefect task, code already inside an event loop) can submit coroutines to it. `bounded_stream`
pulls (tag, conversation) items lazily from an iterator in the caller's thread, keeps at most
`limit` submitted-but-not-yielded (backpressure: an item is pulled only when one has been
handed back), yields results in completion order, and cancels what is in flight when the
consumer stops early or a request fails.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

Future = concurrent.futures.Future


class LoopThread:
    """An asyncio loop in a daemon thread; `submit` schedules a coroutine from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="prefmill-http", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine) -> Any:
        return self.submit(coro).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bounded_stream(requests: Iterator[tuple[Any, Any]], start: Callable[[Any, Any], Future],
                   limit: int) -> Iterator[tuple[Any, Any]]:
    """Yield (tag, result) as futures finish; at most `limit` pulled and not yet yielded."""
    done: queue.SimpleQueue[tuple[Any, Future]] = queue.SimpleQueue()
    live: set[Future] = set()
    exhausted = False
    try:
        while True:
            while not exhausted and len(live) < limit:
                try:
                    tag, conv = next(requests)
                except StopIteration:
                    exhausted = True
                    break
                fut = start(tag, conv)
                live.add(fut)
                fut.add_done_callback(lambda f, tag=tag: done.put((tag, f)))
            if not live:
                return
            tag, fut = done.get()
            live.discard(fut)
            yield tag, fut.result()          # a failed request raises here; `finally` cancels the rest
    finally:
        for fut in live:
            fut.cancel()
        concurrent.futures.wait(live, timeout=30)

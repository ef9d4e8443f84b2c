"""Terminal progress for long stages: a rich bar on a TTY, periodic log lines otherwise.
Stages take a plain `progress(done, total)` callback; this module makes one."""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("prefmill.progress")
Callback = Callable[[int, int], None]


@contextlib.contextmanager
def stage_progress(label: str, *, extra: Callback | None = None) -> Iterator[Callback]:
    """Yield a callback that shows progress of one stage; `extra` is called too (e.g. budgets)."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task(label, total=None)

            def cb(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)
                if extra:
                    extra(done, total)

            yield cb
        return
    last = [0.0]

    def cb(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 10 or done >= total:
            log.info("%s: %d/%d", label, done, total)
            last[0] = now
        if extra:
            extra(done, total)

    yield cb

"""The state of one review server: the queue, who has decided what, short leases so two people
on one server are not shown the same pair at once, the answers' display order, and decisions.

    session = ReviewSession(queue, ReviewLog(store, "demo.reviews"), per_pair=1)
    pos = session.next_for("alice", Filters())          # queue position, or None when done
    session.decide("alice", pair_id, "A", note="")      # one atomic commit to the reviews table

The order is random per (pair, reviewer) but deterministic (a hash), so a reload or a restart
shows the same sides. A pair leaves a reviewer's queue once they decided it (skip included), and
everyone's queue once `per_pair` people gave a real decision; canaries are shown to everyone.
Decisions come from the reviews table on every request (refreshed incrementally), so a second
server or a restart sees them.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass

import polars as pl

from filters.reviews import CHOICES, decision_of
from pipelines import keys
from pipelines.reviews import Queue, ReviewLog, review_id

LEASE_S = 600.0
NOTE_MAX = 2000


def page_id(pair_id: str) -> str:
    """The pair's id in page URLs: opaque, so a canary's id does not show in the address bar."""
    return keys.content_hash("review-page", pair_id)[:24]


@dataclass(frozen=True)
class Filters:
    """Queue filters from the page's query string (empty = any)."""

    round: str = ""
    strategy: str = ""
    kind: str = ""
    reason: str = ""
    status: str = ""

    def expr(self) -> pl.Expr:
        e = pl.lit(True)
        if self.round:
            e &= pl.col("round").cast(pl.String) == self.round
        if self.strategy:
            e &= pl.col("strategy") == self.strategy
        if self.kind:
            e &= pl.col("kinds").list.contains(self.kind)
        if self.reason:
            fam = pl.col("reason_family")
            e &= fam.is_null() if self.reason == "none" else fam == self.reason
        if self.status:
            e &= pl.col("status") == self.status
        return e | pl.col("canary")          # canaries are attention checks: they stay in every view

    def query(self) -> str:
        from urllib.parse import urlencode
        return urlencode({k: v for k, v in self.__dict__.items() if v})


class ReviewSession:
    def __init__(self, queue: Queue, log: ReviewLog, *, per_pair: int = 1):
        if per_pair < 1:
            raise ValueError(f"per_pair={per_pair}; expected at least 1 decision per pair")
        self.queue, self.log, self.per_pair = queue, log, per_pair
        c = queue.candidates
        self.comparisons: list[str] = c["comparison"].to_list()
        self.canary: list[bool] = c["canary"].to_list()
        pair_ids = c["pair_id"].to_list()
        self.pages = [page_id(p) for p in pair_ids]
        self.position = {**{p: i for i, p in enumerate(pair_ids)}, **{p: i for i, p in enumerate(self.pages)}}
        self._pos_of = {cmp: i for i, cmp in enumerate(self.comparisons)}
        self._lock = threading.RLock()
        self._leases: dict[str, tuple[str, float]] = {}       # comparison -> (reviewer, since)
        self._views: dict[Filters, tuple[list[int], set[int]]] = {}
        self._state_ver = -2
        self._mine: dict[str, dict[str, str]] = {}             # reviewer -> comparison -> decision
        self._votes: dict[str, int] = {}                       # comparison -> real decisions

    # -- decided state -----------------------------------------------------------------------
    def _state(self) -> None:
        ver, rows = self.log.snapshot()
        if ver == self._state_ver:
            return
        c = rows.with_columns((pl.min_horizontal("chosen_id", "rejected_id") + "|"
                               + pl.max_horizontal("chosen_id", "rejected_id")).alias("cmp"))
        mine: dict[str, dict[str, str]] = {}
        for who, cmp, decision in c.select("reviewer", "cmp", "decision").iter_rows():
            mine.setdefault(who, {})[cmp] = decision
        real = c.filter((pl.col("decision") != "skip") & ~pl.col("canary").fill_null(False))
        self._votes = dict(real.group_by("cmp").len().iter_rows())
        self._mine, self._state_ver = mine, ver

    def decided(self, reviewer: str, pos: int) -> str | None:
        with self._lock:
            self._state()
            return self._mine.get(reviewer, {}).get(self.comparisons[pos])

    def view(self, f: Filters) -> list[int]:
        """Queue positions that pass the filters, in queue order (cached per filter set)."""
        if f not in self._views:
            idx = self.queue.candidates.with_row_index("_i").filter(f.expr())["_i"].to_list()
            self._views[f] = (idx, set(idx))
        return self._views[f][0]

    def _closed(self, reviewer: str, now: float) -> set[int]:
        """Positions not open to `reviewer`: decided by them, decided enough, leased to someone else.
        Built from the decisions and leases (small), never by scanning the queue."""
        out = {self._pos_of[c] for c in self._mine.get(reviewer, {}) if c in self._pos_of}
        out |= {self._pos_of[c] for c, n in self._votes.items() if n >= self.per_pair and c in self._pos_of}
        out |= {self._pos_of[c] for c, (who, t) in self._leases.items() if who != reviewer and now - t <= LEASE_S}
        return out

    def _open(self, reviewer: str, pos: int, now: float) -> bool:
        cmp = self.comparisons[pos]
        if cmp in self._mine.get(reviewer, {}):
            return False
        if not self.canary[pos] and self._votes.get(cmp, 0) >= self.per_pair:
            return False
        lease = self._leases.get(cmp)
        return lease is None or lease[0] == reviewer or now - lease[1] > LEASE_S

    def next_for(self, reviewer: str, f: Filters) -> int | None:
        """The first open position of the filtered queue; leased to `reviewer` (their older lease ends)."""
        with self._lock:
            self._state()
            now = time.monotonic()
            for pos in self.view(f):
                if self._open(reviewer, pos, now):
                    self.lease(reviewer, pos, now)
                    return pos
        return None

    def lease(self, reviewer: str, pos: int, now: float | None = None) -> None:
        """Hold `pos` for `reviewer` (their other lease ends); someone else's live lease is kept."""
        with self._lock:
            now = time.monotonic() if now is None else now
            cmp = self.comparisons[pos]
            for k in [k for k, (who, _) in self._leases.items() if who == reviewer and k != cmp]:
                del self._leases[k]
            held = self._leases.get(cmp)
            if held is None or (held[0] != reviewer and now - held[1] > LEASE_S):
                self._leases[cmp] = (reviewer, now)

    def upcoming(self, reviewer: str, f: Filters, *, limit: int) -> list[int]:
        """The next `limit` open positions of the filtered queue, without leasing them."""
        with self._lock:
            self._state()
            closed = self._closed(reviewer, time.monotonic())
            out: list[int] = []
            for pos in self.view(f):
                if len(out) >= limit:
                    break
                if pos not in closed:
                    out.append(pos)
            return out

    def progress(self, reviewer: str, f: Filters) -> dict[str, int]:
        with self._lock:
            self._state()
            view = self.view(f)
            closed = self._closed(reviewer, time.monotonic()) & self._views[f][1]
            return {"mine": len(self._mine.get(reviewer, {})), "left": len(view) - len(closed), "total": len(view),
                    "all": sum(self._votes.values())}

    # -- a pair as shown -----------------------------------------------------------------------
    def shown_first(self, pos: int, reviewer: str) -> str:
        """Which answer is displayed as A: a hash of (comparison, reviewer), so it never changes."""
        h = keys.content_hash("display-order", self.comparisons[pos], reviewer)
        return "chosen" if int(h[:8], 16) % 2 == 0 else "rejected"

    def decide(self, reviewer: str, pair_id: str, choice: str, note: str = "") -> tuple[bool, str]:
        """Commit one decision on a pair (its pair_id or page id). Returns (written, decision);
        written is False when this reviewer had already decided the pair (nothing is written twice)."""
        pos = self.position.get(pair_id)
        if pos is None:
            raise ValueError(f"unknown pair {pair_id!r}; it is not in the queue of {self.queue.ref}")
        if choice not in CHOICES:
            raise ValueError(f"unknown choice {choice!r}; expected one of {', '.join(CHOICES)}")
        row = self.queue.candidates.row(pos, named=True)
        shown = self.shown_first(pos, reviewer)
        with self._lock:
            lease = self._leases.get(self.comparisons[pos])
            seconds = time.monotonic() - lease[1] if lease and lease[0] == reviewer else None
        decision = decision_of(choice, shown)
        written = self.log.commit({
            "review_id": review_id(row["chosen_id"], row["rejected_id"], reviewer), "pair_id": row["pair_id"],
            "pairs_table": str(self.queue.ref), "prompt_id": row["prompt_id"], "chosen_id": row["chosen_id"],
            "rejected_id": row["rejected_id"], "decision": decision, "choice": choice, "shown_first": shown,
            "status": row["status"], "drop_reason": row["drop_reason"], "canary": bool(row["canary"]),
            "reviewer": reviewer, "note": (note or "").strip()[:NOTE_MAX] or None, "seconds": seconds,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")})
        with self._lock:
            held = self._leases.get(self.comparisons[pos])
            if held and held[0] == reviewer:
                del self._leases[self.comparisons[pos]]
        return written, decision

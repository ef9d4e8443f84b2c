"""`prefmill review TABLE[@V]`: people review disputed pairs in a local web page; each decision is
one atomic commit to the versioned `reviews` table.

    prefmill review demo.r1.pairs@3                       # serve http://127.0.0.1:8765/
    prefmill review demo.r1.pairs@3 --reviewer alice --port 0 --canaries 10
    prefmill review demo.r1.pairs@3 --report [--json]     # judge-vs-human agreement, no server

The queue holds the version's kept pairs and the pairs its stage dropped (quarantine), ordered
by dispute: position-swap flips, scorer disagreement, smallest margins, length-ratio outliers,
then a random sample. The server binds 127.0.0.1 unless --host says otherwise. Decisions go to
--reviews (default: RECIPE.reviews for a table RECIPE.rN.pairs); the pairs stage applies them
with its `reviews:` option. Ctrl-C stops the server and records the session's lineage.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import TYPE_CHECKING

from flows.cli import UserError

if TYPE_CHECKING:
    from pipelines.reviews import Queue, QueueConfig, ReviewLog
    from pipelines.store import Store


def register(subparsers) -> None:
    p = subparsers.add_parser("review", help="review disputed pairs in a local web page, or print the judge-vs-human "
                              "report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", metavar="TABLE[@VERSION]", help="pairs table to review (latest version when no @V)")
    p.add_argument("--store", default=None, help="store folder or object-store URI, e.g. s3://bucket/prefix (default $PREFMILL_STORE or ./store)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--reviewer", default=None, help="reviewer id (default: the OS user); each browser can change it")
    p.add_argument("--reviews", default=None, help="reviews table (default RECIPE.reviews, or 'reviews')")
    p.add_argument("--per-pair", type=int, default=1, help="decisions wanted per pair before it leaves everyone's "
                   "queue (default 1)")
    p.add_argument("--canaries", type=int, default=0, help="canary pairs (intact vs corrupted answer) mixed into the "
                   "queue (default 0)")
    p.add_argument("--canary-every", type=int, default=15, help="one canary per this many queue positions")
    p.add_argument("--canary-tables", nargs="+", default=(), metavar="NAME[@V]", help="scores / judgments tables "
                   "where a judge scored the canaries' corrupted answers (judge accuracy on canaries)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random tier and the canary draw")
    p.add_argument("--report", action="store_true", help="print the judge-vs-human report and exit")
    p.add_argument("--json", action="store_true", help="with --report: one JSON document")
    p.set_defaults(func=run)


def _reviewer(args: argparse.Namespace) -> str:
    from flows.review.app import check_reviewer

    try:
        return check_reviewer(args.reviewer if args.reviewer is not None else getpass.getuser())
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"{e}; pass --reviewer NAME") from None


def run(args: argparse.Namespace) -> int:
    from pipelines.reviews import QueueConfig, ReviewLog, build_queue, default_reviews_table
    from pipelines.store import Store, TableRef

    TableRef.parse(args.ref)                         # a bad name or a path fails here, before the store opens
    store = Store(args.store, create=False)
    ref = store.ref(args.ref)
    reviews = args.reviews or default_reviews_table(ref.name)
    store.path(reviews)
    for flag, value, low in (("--per-pair", args.per_pair, 1), ("--canaries", args.canaries, 0),
                             ("--canary-every", args.canary_every, 2)):
        if value < low:
            raise UserError(f"{flag} {value} is too small; pass {low} or more")
    if args.canary_tables and not args.canaries:
        raise UserError("--canary-tables needs --canaries N (the canaries whose scores those tables hold)")
    cfg = QueueConfig(canaries=args.canaries, canary_every=args.canary_every, seed=args.seed,
                      canary_tables=tuple(args.canary_tables))
    queue = build_queue(store, ref, cfg)
    if args.report:
        from flows.review.report import format_report, review_report
        rep = review_report(store, ref, reviews=reviews, queue=queue)
        sys.stdout.write(json.dumps(rep, indent=2, default=str) + "\n" if args.json else format_report(rep))
        return 0
    return _serve(args, store, queue, ReviewLog(store, reviews), reviewer=_reviewer(args), cfg=cfg)


def _serve(args: argparse.Namespace, store: Store, queue: Queue, log: ReviewLog, *, reviewer: str,
           cfg: QueueConfig) -> int:
    from flows.review.app import create_app, serve
    from flows.review.report import format_report, review_report
    from flows.review.session import ReviewSession
    from pipelines.reviews import record_session

    session = ReviewSession(queue, log, per_pair=args.per_pair)
    local = args.host in ("127.0.0.1", "localhost", "::1")
    hosts = ["127.0.0.1", "localhost", "::1", "[::1]"] if local else None
    app = create_app(session, default_reviewer=reviewer, allowed_hosts=hosts,
                     report=lambda: format_report(review_report(store, queue.ref, reviews=log.table, queue=queue)))
    kinds = dict(queue.candidates.group_by("status").len().iter_rows())
    if not local:
        print(f"prefmill review: warning: listening on {args.host}: anyone who can reach this address can read the "
              "pairs and write reviews", file=sys.stderr)

    def banner(url: str) -> None:
        print(f"prefmill review: {url} (reviewer {reviewer}; {queue.candidates.height} pairs in the queue: "
              f"{', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}; decisions -> {log.table}); Ctrl-C stops",
              flush=True)

    serve(app, host=args.host, port=args.port, banner=banner)
    n = app.state.decisions
    rec = record_session(store, log.table, queue.ref, decisions=n,
                         config={"reviewer": reviewer, "per_pair": args.per_pair, "queue": cfg.model_dump()})
    done = f"; {rec} recorded with lineage" if rec else ""
    print(f"prefmill review: {n} decisions this session{done}", flush=True)
    return 0

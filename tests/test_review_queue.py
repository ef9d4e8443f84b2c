"""The review queue and the reviews table on a store built by the real pipelines: kept and dropped
candidates in dispute order, filters, exactly-once decisions across processes, the session's
leases and display order, the app's guards, the CLI's errors and report, and apply_reviews on
the stored pairs.

Run as a script it is one decision writer: python tests/test_review_queue.py STORE WID GO_FILE
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from review_support import build_fixture  # noqa: E402

SHARED = 12


def _row(i: int, reviewer: str) -> dict:
    from pipelines.reviews import review_id
    a, b = f"s{i:03d}a", f"s{i:03d}b"
    return {"review_id": review_id(a, b, reviewer), "pair_id": f"pair{i}", "pairs_table": "t@0", "prompt_id": f"p{i}",
            "chosen_id": a, "rejected_id": b, "decision": "chosen", "choice": "A", "shown_first": "chosen",
            "status": "kept", "drop_reason": None, "canary": False, "reviewer": reviewer, "note": None,
            "seconds": 1.0, "created_at": "2026-01-01T00:00:00"}


def writer_main(argv: list[str]) -> None:
    from pipelines.reviews import ReviewLog
    from pipelines.store import Store
    root, wid, go = argv
    log = ReviewLog(Store(root), "demo.reviews")
    print("ready", flush=True)
    while not Path(go).exists():
        time.sleep(0.005)
    written = []
    rows = [_row(i, "ann" if i % 2 else "bob") for i in range(SHARED)] + [_row(100 + i, wid) for i in range(4)]
    for r in rows:
        if log.commit(r):
            written.append(r["review_id"])
    print(json.dumps(written), flush=True)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return build_fixture(tmp_path_factory.mktemp("review") / "store", n_prompts=40)


def test_queue_holds_kept_and_dropped_pairs_in_dispute_order(fx):
    from pipelines.reviews import TIERS, build_queue
    q = build_queue(fx.store, fx.pairs)
    c = q.candidates
    kept = fx.store.read(fx.pairs)
    assert set(kept["pair_id"]) <= set(c["pair_id"])
    quarantine = fx.store.read("quarantine")
    pair_drops = quarantine.filter(pl.col("stage") == "pairs")
    assert {"tie", "scorer_disagreement", "position_swap_flip"} <= set(pair_drops["reason"])

    def comparisons(rows: pl.DataFrame) -> set[str]:
        out = set()
        for p in map(json.loads, rows["payload"]):
            a, b = p.get("chosen_id", p.get("sample_a")), p.get("rejected_id", p.get("sample_b"))
            if a and b:      # a tie between two identical rows names one sample
                out.add("|".join(sorted([a, b])))
        return out

    assert comparisons(pair_drops) <= set(c["comparison"])                  # every dropped comparison is queued
    dropped = c.filter(pl.col("status") == "dropped")
    assert set(dropped["pair_id"]) <= set(pair_drops["row_key"]) and dropped.height > 0
    assert set(dropped["drop_reason"]) <= set(pair_drops["reason"])
    flips = comparisons(quarantine.filter(pl.col("reason") == "position_swap_flip"))
    assert flips and flips <= set(c["comparison"])                           # a flip is queued (or flags its pair)
    assert c.filter(pl.col("comparison").is_in(list(flips)))["flip"].all()
    assert c["comparison"].n_unique() == c.height
    tiers = c["tier"].to_list()
    assert tiers == sorted(tiers) and c["tier_name"][0] == TIERS[0]         # flips first, random sample last
    assert c.filter(pl.col("tier_name") == "position_swap_flip")["flip"].all()
    assert c.filter(pl.col("tier_name") == "scorer_disagreement")["disagree"].all()
    ratio = c.filter(pl.col("tier_name") == "length_ratio")["length_ratio"].to_list()
    assert ratio == sorted(ratio, reverse=True)
    assert c["chosen_text"].null_count() == 0 and c["prompt"].null_count() == 0 and c["chosen_model"].null_count() == 0
    assert set(c["round"]) == {1} and q.primary == "rm" and not q.notes
    assert q.checks["scorer"].unique().to_list() == ["rules"]
    flipped = c.filter(pl.col("status") == "judged").row(0, named=True)
    sig = q.signals.filter((pl.col("comparison") == flipped["comparison"]) & (pl.col("scorer") == "judge"))
    assert sig["verdict"].n_unique() == 2                                    # both orders shown, they disagree


def test_a_pairs_table_without_lineage_queues_its_kept_rows(fx):
    from pipelines.reviews import build_queue
    fx.store.append("raw.pairs", fx.store.read(fx.pairs), kind="pairs")
    q = build_queue(fx.store, "raw.pairs")
    assert q.candidates.height == fx.store.count(fx.pairs) and set(q.candidates["status"]) == {"kept"}
    assert q.notes and "no lineage record" in q.notes[0] and q.candidates["chosen_text"].null_count() == 0


def test_canaries_are_mixed_in_at_fixed_positions(fx):
    from pipelines.reviews import QueueConfig, build_queue
    q = build_queue(fx.store, fx.pairs, QueueConfig(canaries=3, canary_every=5))
    pos = q.candidates.with_row_index("i").filter(pl.col("canary"))["i"].to_list()
    assert pos == [5, 11, 17]
    can = q.candidates.filter(pl.col("canary"))
    assert can["rejected_id"].str.starts_with("canary-").all() and (can["status"] == "canary").all()
    assert (can["chosen_text"] != can["rejected_text"]).all()


def test_judge_accuracy_on_planted_canaries(fx):
    from flows.review.report import review_report
    from pipelines import keys
    from pipelines.reviews import QueueConfig, build_queue, canary_samples
    q = build_queue(fx.store, fx.pairs, QueueConfig(canaries=3))
    planted = canary_samples(q)
    assert planted.height == 3 and planted["sample_id"].str.starts_with("canary-").all()
    fx.store.append("demo.r1.canaries", planted, kind="samples")
    rm = fx.store.read("demo.r1.scores.rm").select("sample_id", "score")
    chosen = dict(zip(rm["sample_id"], rm["score"]))
    can = q.candidates.filter(pl.col("canary"))
    delta = [-1.0, -1.0, 1.0]              # the rm prefers the corrupted answer on one canary of three
    rows = [{"score_id": keys.score_id(r["rejected_id"], "rm"), "sample_id": r["rejected_id"],
             "prompt_id": r["prompt_id"], "scorer": "rm", "score": chosen[r["chosen_id"]] + d}
            for r, d in zip(can.iter_rows(named=True), delta)]
    sc = pl.DataFrame(rows).with_columns(pl.lit(None, pl.List(pl.Struct({"name": pl.String, "value": pl.Float64})))
                                         .alias("attributes"), *[pl.lit(None, t).alias(c) for c, t in
                                         [("spread", pl.Float64), ("text", pl.String), ("details", pl.String)]])
    fx.store.append("demo.r1.scores.canary.rm", sc, kind="scores")
    cfg = QueueConfig(canaries=3, canary_tables=("demo.r1.scores.canary.rm",))
    rep = review_report(fx.store, fx.pairs, reviews="none.reviews", cfg=cfg)
    (rm_row,) = rep["canaries"]["scorers"]
    assert rm_row["scorer"] == "rm" and (rm_row["agreement"]["k"], rm_row["agreement"]["n"]) == (2, 3)
    with pytest.raises(Exception, match="unknown table 'nope'"):
        build_queue(fx.store, fx.pairs, QueueConfig(canaries=3, canary_tables=("nope",)))


def test_decisions_commit_exactly_once_across_processes(tmp_path):
    root, go = tmp_path / "store", tmp_path / "go"
    from pipelines.store import Store
    Store(root)
    procs = [subprocess.Popen([sys.executable, __file__, str(root), f"w{i}", str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    written = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        written += json.loads(out.strip().splitlines()[-1])
    rows = Store(root).read("demo.reviews")
    assert rows.height == SHARED + 3 * 4 == len(written)              # nothing lost, nothing twice
    assert sorted(rows["review_id"]) == sorted(written) and rows["review_id"].n_unique() == rows.height


def test_session_leases_order_and_idempotent_decisions(fx, tmp_path):
    from flows.review.session import Filters, ReviewSession
    from pipelines.reviews import QueueConfig, ReviewLog, build_queue
    q = build_queue(fx.store, fx.pairs, QueueConfig(canaries=2, canary_every=4))
    s = ReviewSession(q, ReviewLog(fx.store, "t1.reviews"))
    a, b = s.next_for("alice", Filters()), s.next_for("bob", Filters())
    assert a == 0 and b == 1                                        # alice holds 0: bob gets the next
    assert s.next_for("alice", Filters()) == 0                     # a reload keeps her pair
    pid = q.candidates["pair_id"][a]
    assert s.decide("alice", pid, "A") == (True, s.shown_first(a, "alice"))
    assert s.decide("alice", pid, "B")[0] is False                 # same reviewer again: nothing written
    assert s.next_for("bob", Filters()) == 1 and s.next_for("alice", Filters()) == 2
    s.decide("bob", q.candidates["pair_id"][1], "skip")
    assert s.next_for("carol", Filters()) == 1                     # a skip does not count as a decision
    shown = [s.shown_first(i, "alice") for i in range(q.candidates.height)]
    assert shown == [s.shown_first(i, "alice") for i in range(q.candidates.height)]
    assert 0.25 < shown.count("chosen") / len(shown) < 0.75
    assert shown != [s.shown_first(i, "bob") for i in range(q.candidates.height)]
    canary = q.candidates.with_row_index("i").filter(pl.col("canary"))["i"][0]
    s.decide("alice", q.candidates["pair_id"][canary], "A")
    assert s.decided("bob", canary) is None and canary in s.view(Filters(status="kept"))
    flips = s.view(Filters(reason="position_swap_flip"))
    assert all(q.candidates["reason_family"][i] == "position_swap_flip" or q.candidates["canary"][i] for i in flips)
    assert s.progress("alice", Filters())["mine"] == 2
    with pytest.raises(ValueError, match="unknown choice"):
        s.decide("alice", q.candidates["pair_id"][3], "maybe")
    rows = ReviewLog(fx.store, "t1.reviews").rows()
    assert rows.height == 3 and set(rows["reviewer"]) == {"alice", "bob"}
    r = rows.filter(pl.col("pair_id") == pid).row(0, named=True)
    assert r["choice"] == "A" and r["decision"] == r["shown_first"] and r["pairs_table"] == fx.pairs


def test_a_decision_landing_while_another_request_reads_is_seen_next(fx):
    """Alice's decision commits just after Bob's request read the log (two server threads): her
    next request still sees it, so she is never sent back to the pair she just decided."""
    from flows.review.session import Filters, ReviewSession
    from pipelines.reviews import ReviewLog, build_queue

    class Racing(ReviewLog):
        go, committed = threading.Event(), threading.Event()
        racing = False

        def snapshot(self):
            out = super().snapshot()
            if self.racing:                                 # alice's commit lands right after this read
                self.racing = False
                self.go.set()
                assert self.committed.wait(60)
            return out

        def commit(self, row):
            assert self.go.wait(60)
            written = super().commit(row)
            self.committed.set()
            return written

    q = build_queue(fx.store, fx.pairs)
    log = Racing(fx.store, "race.reviews")
    s = ReviewSession(q, log)
    a, b = s.next_for("alice", Filters()), s.next_for("bob", Filters())
    alice = threading.Thread(target=s.decide, args=("alice", q.candidates["pair_id"][a], "A"))
    alice.start()                                          # her decision waits at the commit
    log.racing = True
    assert s.next_for("bob", Filters()) == b                       # bob's read; alice's commit lands after it
    alice.join(60)
    assert s.decided("alice", a) is not None and s.next_for("alice", Filters()) not in (a, None)


def test_app_guards_forms_hosts_and_headers(fx):
    from fastapi.testclient import TestClient
    from flows.review.app import create_app
    from flows.review.session import ReviewSession
    from pipelines.reviews import ReviewLog, build_queue
    s = ReviewSession(build_queue(fx.store, fx.pairs), ReviewLog(fx.store, "t2.reviews"))
    app = create_app(s, default_reviewer="alice", report=lambda: "report text", allowed_hosts=["127.0.0.1", "localhost"])
    c = TestClient(app, base_url="http://127.0.0.1")
    r = c.get("/")
    assert r.status_code == 200 and "/pair/" in str(r.url)
    assert "script-src 'self'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"
    pid = str(r.url).split("/pair/")[1].split("?")[0]
    assert c.post("/decide", data={"token": "forged", "pair_id": pid, "choice": "A"}).status_code == 403
    token = r.text.split('name="token" value="')[1].split('"')[0]
    assert c.post("/decide", data={"token": token, "pair_id": pid, "choice": "Z"}).status_code == 400
    assert c.post("/decide", data={"token": token, "pair_id": "nope", "choice": "A"}).status_code == 400
    assert c.post("/reviewer", data={"token": token, "name": "<b>x</b>"}).status_code == 400
    assert TestClient(app, base_url="http://evil.example").get("/healthz").status_code == 400
    assert c.get("/pair/doesnotexist").status_code == 404
    ok = c.post("/decide", data={"token": token, "pair_id": pid, "choice": "tie", "note": "close call"})
    assert ok.status_code == 200 and pid not in str(ok.url)
    c.post("/reviewer", data={"token": token, "name": "dora"})
    assert 'value="dora"' in c.get("/next").text
    assert "report text" in c.get("/report").text and c.get("/queue").status_code == 200
    rows = ReviewLog(fx.store, "t2.reviews").rows()
    assert rows.select("reviewer", "decision", "note").rows() == [("alice", "tie", "close call")]


def test_canary_pages_do_not_give_themselves_away(fx):
    from fastapi.testclient import TestClient
    from flows.review.app import create_app
    from flows.review.session import ReviewSession
    from pipelines.reviews import QueueConfig, ReviewLog, build_queue
    q = build_queue(fx.store, fx.pairs, QueueConfig(canaries=2, canary_every=3))
    s = ReviewSession(q, ReviewLog(fx.store, "t3.reviews"))
    c = TestClient(create_app(s, default_reviewer="alice", report=lambda: ""), base_url="http://127.0.0.1")
    pos = q.candidates.with_row_index("i").filter(pl.col("canary"))["i"][0]
    page = c.get(f"/pair/{s.pages[pos]}")
    assert page.status_code == 200 and "canary" not in page.text.lower() and "corrupt" not in page.text.lower()
    assert "canary" not in c.get("/queue").text.lower()
    for _ in range(4):                                  # the queue reaches the canary under an opaque URL
        r = c.get("/next")
        assert "canary" not in str(r.url)
        token = r.text.split('name="token" value="')[1].split('"')[0]
        c.post("/decide", data={"token": token, "pair_id": str(r.url).split("/pair/")[1].split("?")[0], "choice": "A"})
    rows = ReviewLog(fx.store, "t3.reviews").rows()
    assert rows["canary"].sum() == 1 and rows.filter(pl.col("canary"))["status"].item() == "canary"


@pytest.mark.parametrize("ref,msg", [("../x", "invalid table name"), ("store/tables/demo.r1.pairs", "invalid table name"),
                                     ("/tmp/x", "invalid table name"), ("x/..", "invalid table name"),
                                     ("nope@0", "unknown table 'nope'"), ("demo.r1.pairs@99", "has no version 99"),
                                     ("demo.r1.samples", "not pairs")])
def test_cli_rejects_bad_tables_with_one_line(fx, capsys, ref, msg):
    from flows.cli import main
    assert main(["review", ref, "--store", str(fx.root), "--report"]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1 and err.startswith("prefmill: error:")


@pytest.mark.parametrize("extra,msg", [(["--reviewer", "a b"], "reviewer name 'a b' is not allowed"),
                                       (["--canaries", "-1"], "--canaries -1 is too small"),
                                       (["--per-pair", "0"], "--per-pair 0 is too small"),
                                       (["--canary-tables", "x"], "--canary-tables needs --canaries"),
                                       (["--reviews", "../escape"], "invalid table name"),
                                       (["--port", "99999"], "cannot listen on 127.0.0.1:99999")])
def test_cli_rejects_bad_options_with_one_line(fx, capsys, extra, msg):
    from flows.cli import main
    assert main(["review", fx.pairs, "--store", str(fx.root), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err


def test_cli_report_and_apply_reviews_on_stored_pairs(fx, capsys):
    from filters.reviews import apply_reviews, review_counts
    from flows.cli import main
    from flows.review.session import ReviewSession
    from pipelines import keys
    from pipelines.reviews import ReviewLog, build_queue
    q = build_queue(fx.store, fx.pairs)
    s = ReviewSession(q, ReviewLog(fx.store, "demo.reviews"), per_pair=2)
    kept = q.candidates.filter(pl.col("status") == "kept")["pair_id"].to_list()[:4]
    plan = dict(zip(kept, ["agree", "swap", "tie", "both_bad"]))
    for pid, what in plan.items():
        pos = s.position[pid]
        shown = s.shown_first(pos, "ann")
        choice = {"agree": "A" if shown == "chosen" else "B", "swap": "B" if shown == "chosen" else "A"}.get(what, what)
        s.decide("ann", pid, choice)
    assert main(["review", fx.pairs, "--store", str(fx.root), "--report", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["rows"] >= 4 and rep["decisions"]["tie"] >= 1
    assert {r["scorer"] for r in rep["agreement"]["scorers"]} >= {"rm", "rules", "judge"}
    assert main(["review", fx.pairs, "--store", str(fx.root), "--report"]) == 0
    assert "| rm | score |" in capsys.readouterr().out
    pairs = fx.store.read(fx.pairs)
    out = apply_reviews(pairs.lazy(), fx.store.scan("demo.reviews")).collect()
    out = out.with_columns(pl.struct("prompt_id", "chosen_id", "rejected_id", "strategy").map_elements(
        lambda r: keys.pair_id(r["prompt_id"], r["chosen_id"], r["rejected_id"], r["strategy"]),
        return_dtype=pl.String).alias("new_id"))
    changed = out.filter((pl.col("new_id") != pl.col("pair_id")) | pl.col("drop_reason").is_not_null())
    assert sorted(changed["pair_id"]) == sorted(k for k, v in plan.items() if v != "agree")
    assert dict(zip(changed["pair_id"], changed["drop_reason"])) == {
        k: {"swap": None, "tie": "human_tie", "both_bad": "human_both_bad"}[v] for k, v in plan.items() if v != "agree"}
    assert review_counts(out.lazy())["swapped"] == 1


if __name__ == "__main__":
    writer_main(sys.argv[1:])

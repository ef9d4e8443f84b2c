"""Reports from a hand-built store: two rounds of evals, scores, eval answers, pairs with
quarantined drops and models -> a self-contained HTML page and a Markdown twin; a store with only a
pairs table still gets a report."""
from __future__ import annotations

import base64
import json
import re

import polars as pl
import pytest

from flows.cli import main as cli_main
from flows.report import round_of, write_report
from pipelines.keys import content_hash, pair_id
from pipelines.schemas import get_schema
from pipelines.stage import StageRun

PNG = b"\x89PNG\r\n\x1a\n"


def _pairs(n: int, seed: int) -> pl.DataFrame:
    rows = []
    for i in range(n):
        pid = content_hash("p", i)
        m = [{"role": "user", "content": f"q{i}"}]
        rows.append({"pair_id": pair_id(pid, f"c{seed}{i}", f"r{seed}{i}", "bvw"), "prompt_id": pid, "prompt": m,
                     "chosen": [{"role": "assistant", "content": "good " * (i % 5 + 1)}],
                     "rejected": [{"role": "assistant", "content": "bad"}], "chosen_id": f"c{seed}{i}",
                     "rejected_id": f"r{seed}{i}", "chosen_score": 1.0 + seed, "rejected_score": 0.0,
                     "margin": 1.0 + seed, "strategy": "bvw"})
    return pl.DataFrame(rows, schema=get_schema("pairs").schema)


def _write_pairs(store, name: str, n: int, seed: int, drops: list[tuple[str, str]]) -> None:
    run = StageRun(store, stage="pairs", output=name, kind="pairs", config={"seed": seed})
    frame = _pairs(n, seed)
    run.write(frame)
    run.quarantine([(k, reason, {"k": k}) for k, reason in drops])
    run.finish(rows_in=n + len(drops), target_keys=frame.get_column("pair_id").to_list())


@pytest.fixture
def loop_store(store):
    evals = []
    for rnd, model, pr, kl, length in [(0, "q-r0-base", 0.20, None, 40.0), (1, "q-r1-dpo", 0.31, 0.05, 46.0),
                                       (2, "q-r2-dpo", 0.43, 0.12, 52.0)]:
        for metric, value in [("pass_rate", pr), ("mean_reward", pr * 2), ("mean_length_tokens", length),
                              ("kl_to_reference", kl), ("win_rate_vs_previous", None if rnd == 0 else 0.6)]:
            if value is not None:
                evals.append({"eval_id": content_hash("e", rnd, metric), "model": model, "round": rnd, "metric": metric,
                              "value": value, "n": 50, "details": json.dumps({"stderr": 0.01})})
    store.append("q.evals", pl.DataFrame(evals), kind="evals")
    answers = [{"sample_id": content_hash("a", m, i), "prompt_id": content_hash("p", i), "policy": m, "policy_revision": "x",
                "sample_index": 0, "seed": 0, "sampling": "{}", "completion": "ok", "finish_reason": "stop",
                "prompt_tokens": 5, "completion_tokens": base + i % 7, "is_reference": False}
               for m, base in [("q-r0-base", 38), ("q-r1-dpo", 44), ("q-r2-dpo", 50)] for i in range(20)]
    store.append("q.eval_responses", pl.DataFrame(answers), kind="samples")
    for rnd in (1, 2):
        scores = [{"score_id": content_hash("s", rnd, i), "sample_id": content_hash("x", rnd, i), "prompt_id": "p",
                   "scorer": "rule", "score": float((i * 7 + rnd) % 5) / 4 + 0.1 * rnd, "attributes": None, "spread": None,
                   "text": None, "details": None} for i in range(40)]
        store.append(f"q.r{rnd}.scores", pl.DataFrame(scores), kind="scores")
    _write_pairs(store, "q.r1.pairs", 12, 1, [("a", "low_margin"), ("b", "low_margin"), ("c", "position_swap")])
    _write_pairs(store, "q.r2.pairs", 4, 99, [("z", "stale")])  # an earlier run with another config
    _write_pairs(store, "q.r2.pairs", 15, 2, [("d", "low_margin")])
    models = [{"model_id": content_hash("m", r), "name": f"q-r{r}-dpo", "path": f"/m/{r}", "base_model": "q-r0-base",
               "reference_model": "q-r0-base", "dataset": f"q.r{r}.pairs@1", "trainer": "dpo", "config": "{}",
               "metrics": "{}", "round": r} for r in (1, 2)]
    store.append("q.models", pl.DataFrame(models), kind="models")
    return store


def test_round_of_table_names():
    assert [round_of(n) for n in ("quickstart.r2.pairs", "r1_scores_rm", "quickstart.pairs", "error.rate")] == [2, 1, None, None]


def test_loop_report_html_and_markdown(loop_store, tmp_path):
    path = write_report(loop_store, tmp_path / "rep", recipe="q")
    assert path == tmp_path / "rep" / "report.html"
    page, md = path.read_text(), (tmp_path / "rep" / "report.md").read_text()
    for title in ("Eval metrics by round", "Reward distribution", "Length drift", "Pairs kept and dropped",
                  "All drops by reason", "Models", "Stage runs"):
        assert title in page and f"## {title}" in md
    # metrics table: one row per round, values from the evals table
    assert "| 2 | q-r2-dpo | 0.43 | 0.86 | 0.6 | 0.12 | 52 |" in md
    assert "| 0 | q-r0-base | 0.2 | 0.4 | - | - | 40 |" in md
    # pairs kept and dropped by reason per round
    assert "| q.r1.pairs | 1 | 12 | 2 | 2 | 1 |" in md and "| q.r2.pairs | 2 | 15 | 3 | 1 | 0 |" in md
    assert "dropped: stale" not in md  # the earlier run's drops do not count against the latest version
    assert "| q.r2.pairs | 2 | pairs | stale | 1 |" in md  # ... but the full drop log still lists them
    # eval answer length per round (means 38+3, 44+3, 50+3 over i % 7)
    means = re.findall(r"\| ([012]) \| 20 \| ([\d.]+) \|", md)
    assert [(r, round(float(m))) for r, m in means] == [("0", 41), ("1", 47), ("2", 53)]
    # self-contained: every image inline and a valid PNG; no external fetches
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 4 and all(base64.b64decode(i)[:8] == PNG for i in imgs)
    assert "http://" not in page and "https://" not in page and 'src="figures' not in page
    for name in ("metrics", "rewards", "lengths", "pairs"):
        assert (tmp_path / "rep" / "figures" / f"{name}.png").read_bytes()[:8] == PNG and f"figures/{name}.png" in md


def test_store_with_only_pairs_still_reports(store, tmp_path, capsys):
    store.append("only.pairs", _pairs(5, 0), kind="pairs")
    assert cli_main(["report", "--store", str(store.root), "--out", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / "report.html")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| only.pairs | - | 5 | 1 |" in md and "Eval metrics" not in md and "| only.pairs | 0 | pairs |" in md


def test_empty_store_and_missing_store(store, tmp_path, capsys):
    page = write_report(store, tmp_path / "e").read_text()
    assert "Nothing to report yet" in page
    assert cli_main(["report", "--store", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "no prefmill store" in capsys.readouterr().err

"""Pure step logic (filters/steps.py): splitting, arithmetic rule labels, Monte-Carlo aggregation,
the first-wrong-step pair strategy on hand-made cases, TRL's stepwise export loading with
`datasets`, and the shipped math word problems (deterministic, verifiable, splittable)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from filters import drops
from filters.pairing import PAIR_COLUMNS
from filters.steps import (StepSplitConfig, arithmetic_errors, first_wrong, first_wrong_step_pairs, mc_step_scores,
                           prompt_text, reached_answer, rule_labels, split_steps, step_prefix, step_texts,
                           stepwise_rows)
from pipelines.schemas import get_schema, validate

ROOT = Path(__file__).resolve().parents[1]
ANSWER = "Let me think.\nStep 1: 3 + 4 = 7 apples.\n\nStep 2: 7 × 2 = 15\nStep 3: So the answer is 15."


def test_numbered_split_keeps_preamble_and_exact_prefixes():
    cfg = StepSplitConfig(mode="numbered")
    spans = split_steps(ANSWER, cfg)
    assert step_texts(ANSWER, spans) == ["Let me think.\nStep 1: 3 + 4 = 7 apples.", "Step 2: 7 × 2 = 15",
                                         "Step 3: So the answer is 15."]
    assert step_prefix(ANSWER, spans, 0) == "Let me think.\nStep 1: 3 + 4 = 7 apples.\n\n"
    assert step_prefix(ANSWER, spans, 1) == "Let me think.\nStep 1: 3 + 4 = 7 apples.\n\nStep 2: 7 × 2 = 15\n"
    assert step_prefix(ANSWER, spans, 2) == ANSWER
    assert split_steps("1. add\n2) subtract\n**Step 3:** done", cfg) and len(split_steps("1. add\n2) sub", cfg)) == 2
    assert split_steps("no numbered steps here\njust text", cfg) == []


def test_lines_and_separator_split():
    assert step_texts(ANSWER, split_steps(ANSWER, StepSplitConfig(mode="lines")))[:2] == ["Let me think.",
                                                                                          "Step 1: 3 + 4 = 7 apples."]
    sep = StepSplitConfig(mode="separator", separator=" ки")
    text = "a = 1 ки b = 2 ки  ки c"
    assert step_texts(text, split_steps(text, sep)) == ["a = 1", "b = 2", "c"]
    assert split_steps("   \n\n  ", StepSplitConfig(mode="lines")) == []


@pytest.mark.parametrize("bad, needle", [({"mode": "numbered", "pattern": "(unclosed"}, "not a valid regex"),
                                         ({"mode": "separator", "separator": ""}, "separator is empty"),
                                         ({"mode": "sentences"}, "'lines', 'numbered' or 'separator'")])
def test_split_config_errors_are_one_line(bad, needle):
    with pytest.raises(ValidationError) as e:
        StepSplitConfig(**bad)
    msg = e.value.errors()[0]["msg"]
    assert needle in msg and "\n" not in msg


def test_arithmetic_rule():
    assert arithmetic_errors("12 + 3 * 2 = 18 and $1,200 / 3 = 400; 10 / 3 = 3.33; 2 × (3 + 4) = 14") == []
    assert arithmetic_errors("7 x 2 = 15") == ["7 x 2 = 15"]
    assert arithmetic_errors("2 + 3 = 5 x 2 = 11") == ["5 x 2 = 11"]          # chains are checked link by link
    assert arithmetic_errors("so 3n = -117 - 3 = -120, n = -120 / 3 = -40") == []
    assert arithmetic_errors("Step 2: 12 + 3 * 2 = 30") == ["12 + 3 * 2 = 30"]   # precedence, no partial match
    assert rule_labels(["1 + 1 = 2", "no arithmetic", "9 - 4 = 6"]) == [True, True, False]


def test_mc_aggregation_hard_soft_and_first_wrong():
    cont = pl.DataFrame({"label_id": ["a"] * 6 + ["b"] * 2, "step": [0, 0, 0, 1, 1, 1, 0, 0],
                         "text": ["x \\boxed{5}", "x 4", "x 6", "the answer is 5", "5", "no"] + ["7", "8"],
                         "reference": ["\\boxed{5}"] * 6 + ["#### 8"] * 2})
    cont = cont.with_columns(reached_answer().alias("reached"))
    assert cont["reached"].to_list() == [True, False, False, True, True, False, False, True]
    hard = mc_step_scores(cont.lazy(), mode="hard").collect()
    assert hard.select("label_id", "step", "hits", "tries", "label").rows() == [
        ("a", 0, 1, 3, True), ("a", 1, 2, 3, True), ("b", 0, 1, 2, True)]
    soft = mc_step_scores(cont.lazy(), mode="soft", threshold=0.5).collect()
    assert soft["label"].to_list() == [False, True, True]
    assert soft["score"].to_list() == pytest.approx([1 / 3, 2 / 3, 0.5])
    lab = pl.DataFrame({"labels": [[True, False, False], [True, True], [False]]})
    assert lab.select(first_wrong()).to_series().to_list() == [1, None, 0]


def _labelled(rows):
    return pl.DataFrame(rows, orient="row", schema={"prompt_id": pl.String, "sample_id": pl.String,
                                                    "first_wrong_step": pl.Int32, "n_steps": pl.Int32,
                                                    "drop_reason": pl.String})


CASES = [
    ("p1", "A", None, 3, None), ("p1", "B", 1, 4, None), ("p1", "C", 0, 2, None),
    ("p2", "D", 2, 5, None), ("p2", "E", 2, 3, None),
    ("p3", "F", None, 2, None),
    ("p4", "G", None, 2, None), ("p4", "H", 3, 6, None),
    ("p5", "I", None, 2, "invalid_score"), ("p5", "J", 0, 2, None),
]


def test_first_wrong_step_best_vs_worst():
    frame = _labelled(CASES)
    out = first_wrong_step_pairs(frame.lazy()).collect()
    assert out.columns == [*PAIR_COLUMNS, drops.DROP]
    got = {r["prompt_id"]: r for r in out.to_dicts()}
    assert (got["p1"]["chosen_id"], got["p1"]["rejected_id"], got["p1"]["chosen_score"], got["p1"]["margin"]) == \
        ("A", "C", 5.0, 5.0)                                    # no wrong step beats all; C is wrong at step 0
    assert got["p2"]["drop_reason"] == "first_wrong_step_tie" and got["p2"]["margin"] == 0
    assert got["p3"]["drop_reason"] == "no_valid_pair" and got["p3"]["chosen_id"] is None
    assert (got["p4"]["chosen_id"], got["p4"]["rejected_id"]) == ("G", "H")   # none wrong beats a later error
    assert got["p5"]["drop_reason"] == "no_valid_pair"          # a dropped row never enters a pair
    kept, dropped = (f.collect() for f in drops.split(out.lazy()))
    assert sorted(kept["prompt_id"]) == ["p1", "p4"] and sorted(dropped["prompt_id"]) == ["p2", "p3", "p5"]
    shuffled = first_wrong_step_pairs(frame.sample(fraction=1.0, shuffle=True, seed=3).lazy()).collect()
    assert shuffled.sort("prompt_id").rows() == out.sort("prompt_id").rows()


def test_first_wrong_step_all_pairs_and_margin():
    frame = _labelled(CASES[:5])
    out = first_wrong_step_pairs(frame.lazy(), mode="all_pairs").collect().sort("prompt_id", "chosen_id",
                                                                                 "rejected_id")
    assert out.select("prompt_id", "chosen_id", "rejected_id", "drop_reason").rows() == [
        ("p1", "A", "B", None), ("p1", "A", "C", None), ("p1", "B", "C", None),
        ("p2", "D", "E", "first_wrong_step_tie")]
    capped = first_wrong_step_pairs(frame.lazy(), mode="all_pairs", max_pairs_per_prompt=1).collect()
    assert capped.filter(pl.col("prompt_id") == "p1").select("chosen_id", "rejected_id").rows() == [("A", "C")]
    strict = first_wrong_step_pairs(frame.lazy(), min_margin=2).collect()
    assert strict.filter(pl.col("prompt_id") == "p1")["drop_reason"].to_list() == [None]          # margin 5
    small = first_wrong_step_pairs(_labelled([("q", "a", 1, 3, None), ("q", "b", 0, 3, None)]).lazy(), min_margin=2)
    assert small.collect()["drop_reason"].to_list() == ["margin_below:2.0"]
    with pytest.raises(ValueError, match="min_margin"):
        first_wrong_step_pairs(frame.lazy(), min_margin=-1)


def _step_label_rows() -> pl.DataFrame:
    rows = [{"label_id": "l1", "sample_id": "s1", "prompt_id": "p1",
             "prompt": [{"role": "user", "content": "What is 2 + 3?"}], "steps": ["2 + 3 = 5", "The answer is 5."],
             "labels": [True, True], "step_scores": [1.0, 1.0], "n_steps": 2, "first_wrong_step": None,
             "method": "monte_carlo", "labeller": "x", "k": 2, "calls": 4, "details": "{}"},
            {"label_id": "l0", "sample_id": "s2", "prompt_id": "p2",
             "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "4 x 4?"}],
             "steps": ["4 x 4 = 15"], "labels": [False], "step_scores": [0.0], "n_steps": 1, "first_wrong_step": 0,
             "method": "rule", "labeller": "y", "k": 0, "calls": 0, "details": "{}"}]
    return validate(pl.DataFrame(rows, schema=get_schema("step_labels").schema), "step_labels")


def test_stepwise_export_loads_with_datasets(tmp_path):
    import datasets

    rows = stepwise_rows(_step_label_rows()).collect()
    assert rows.columns[:3] == ["prompt", "completions", "labels"]
    assert rows["prompt"].to_list() == ["system: Be brief.\n\nuser: 4 x 4?", "What is 2 + 3?"]
    assert rows["prompt"].to_list()[0] == prompt_text([{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "4 x 4?"}])
    ds = datasets.Dataset(rows.to_arrow())
    ds.save_to_disk(str(tmp_path / "hf"))
    back = datasets.load_from_disk(str(tmp_path / "hf"))
    assert back.features["completions"].feature.dtype in ("string", "large_string")
    assert back.features["labels"].feature.dtype == "bool"
    assert back[1]["completions"] == ["2 + 3 = 5", "The answer is 5."] and back[1]["labels"] == [True, True]
    rows.write_ndjson(tmp_path / "train.jsonl")
    js = datasets.load_dataset("json", data_files=str(tmp_path / "train.jsonl"), split="train")
    assert js[0]["labels"] == [False] and js.num_rows == 2


def test_math_word_problems_file_is_deterministic_and_verifiable():
    from filters.math_answer import answers_match, extract_reference

    proc = subprocess.run([sys.executable, str(ROOT / "recipes/data/make_math_word_problems.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    df = pl.read_ndjson(ROOT / "recipes/data/math_word_problems.jsonl")
    assert df.height >= 200 and df["prompt"].n_unique() == df.height
    assert df.columns == ["prompt", "reference", "answer"] and df["answer"].dtype == pl.Int64
    assert df.select(answers_match(extract_reference(pl.col("reference")), pl.col("answer").cast(pl.String))
                     ).to_series().all()
    cfg = StepSplitConfig(mode="numbered")
    for ref in df["reference"]:
        steps = step_texts(ref, split_steps(ref, cfg))
        assert len(steps) >= 2 and all(rule_labels(steps)), ref
    assert df["answer"].max() > 10_000 and df["answer"].min() < 10
    assert len({json.loads(line)["prompt"].split()[1] for line in
                (ROOT / "recipes/data/math_word_problems.jsonl").read_text().splitlines()}) >= 5

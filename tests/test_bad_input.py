"""Bad input through the real CLI: each case gives ONE line on stderr naming the problem and the
fix, a non-zero exit code, no traceback, and leaves the store exactly as it was (same files, same
table versions). Plus the scoring stage's handling of NaN / infinite scores and unreadable judge
replies (quarantined with the raw text, never scored).
"""
from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
from pathlib import Path

import polars as pl
import pytest
import torch

from flows.cli import main
from pipelines import keys
from pipelines.store import Store

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def snapshot(root: Path) -> tuple[list[str], dict[str, int]]:
    """Every path under the store and every table's latest version."""
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []
    versions = {}
    if (root / "tables").is_dir():
        st = Store(root, create=False)
        versions = {t: st.version(t) for t in st.tables(include_internal=True)}
    return files, versions


@pytest.fixture
def filled(tmp_path) -> Path:
    """A store with one complete table, so 'unchanged' means something."""
    from pipelines.stage import StageRun

    store = Store(tmp_path / "store")
    run = StageRun(store, stage="sample", output="r1_samples", kind="samples", config={"t": 1})
    run.write(pl.DataFrame({"sample_id": ["a", "b"], "prompt_id": "p", "policy": "tiny", "policy_revision": "r0",
                            "sample_index": [0, 1], "seed": 0, "sampling": "{}", "completion": ["x", "y"],
                            "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 4,
                            "is_reference": False}))
    run.finish(rows_in=2, target_keys=["a", "b"])
    return store.root


def one_line_error(capfd, argv: list[str], store: Path | None, *, needles: tuple[str, ...]) -> str:
    """Run the CLI; assert exit != 0, exactly one non-empty stderr line with every needle, no
    traceback, and the store unchanged. Returns the line."""
    before = snapshot(store) if store is not None else None
    rc = main(argv)
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0, (rc, out, err)
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err[-3000:]}"
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    if store is not None:
        assert snapshot(store) == before, "the store changed"
    return lines[0]


def write_recipe(tmp_path: Path, body: str, *, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(body)
    return p


def seeds(tmp_path: Path, lines: list[str], name: str = "seeds.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join(ln + "\n" for ln in lines))
    return p


def recipe_text(seed_path: Path, model: str | Path, *, policy_extra: str = "", extra: str = "") -> str:
    return (f"name: bad\nrounds: {{count: 0}}\npolicy: {{kind: transformers, model: '{model}'{policy_extra}}}\n"
            f"prompts: {{seeds: {{path: '{seed_path}'}}, heldout_fraction: 0.0}}\n"
            "sampling: {n: 2, max_tokens: 4, temperature: 0.0}\nscoring: [{kind: rule_instructions}]\n"
            f"report: {{out: '{seed_path.parent / 'report'}'}}\n" + extra)


def closed_port() -> int:
    """A port nothing listens on: bound and released (not reused for a listener here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# recipes
# --------------------------------------------------------------------------------------------
def test_malformed_yaml(tmp_path, filled, capfd):
    r = write_recipe(tmp_path, "name: bad\nprompts: {seeds: {path: x.jsonl}\nsampling: [n: 4\n")
    one_line_error(capfd, ["run", str(r), "--store", str(filled)], filled,
                   needles=("malformed YAML", "line", "fix"))


@pytest.mark.parametrize("body,needles", [
    ("samplng: {n: 2}\n", ("unknown key samplng", "did you mean 'sampling'")),
    ("sampling: {temprature: 0.5}\n", ("unknown key sampling.temprature", "did you mean 'temperature'")),
    ("policy: {kind: transformers, modle: x}\n", ("unknown key policy.modle", "did you mean 'model'")),
])
def test_unknown_recipe_keys_get_a_suggestion(tmp_path, filled, capfd, body, needles):
    s = seeds(tmp_path, ['{"prompt": "hi"}'])
    r = write_recipe(tmp_path, f"name: bad\nprompts: {{seeds: {{path: '{s}'}}}}\n" + body)
    one_line_error(capfd, ["run", str(r), "--store", str(filled)], filled, needles=needles)


@pytest.mark.parametrize("body,needles", [
    ("sampling: {n: four}\n", ("sampling.n", "integer", "four")),
    ("sampling: {temperature: -1}\n", ("sampling.temperature", "greater than or equal to 0")),
    ("policy: {kind: tgi}\n", ("policy.kind", "'vllm', 'openai', 'transformers' or 'vllm_server'")),
    ("rounds: {count: [1, 2]}\n", ("rounds.count", "integer")),
])
def test_wrong_types_name_the_key_and_the_expected_type(tmp_path, filled, capfd, body, needles):
    s = seeds(tmp_path, ['{"prompt": "hi"}'])
    r = write_recipe(tmp_path, f"name: bad\nprompts: {{seeds: {{path: '{s}'}}}}\n" + body)
    one_line_error(capfd, ["run", str(r), "--store", str(filled)], filled, needles=needles)


def test_bad_override_value(tmp_path, filled, capfd):
    s = seeds(tmp_path, ['{"prompt": "hi"}'])
    r = write_recipe(tmp_path, f"name: bad\nprompts: {{seeds: {{path: '{s}'}}}}\n")
    one_line_error(capfd, ["run", str(r), "--store", str(filled), "--set", "sampling.n=0"], filled,
                   needles=("sampling.n", "greater than or equal to 1"))


def test_missing_seed_file(tmp_path, filled, capfd):
    r = write_recipe(tmp_path, recipe_text(tmp_path / "nope.jsonl", tmp_path))
    one_line_error(capfd, ["run", str(r), "--store", str(filled)], filled, needles=("nope.jsonl", "does not exist"))


def test_missing_model_path(tmp_path, filled, capfd):
    s = seeds(tmp_path, ['{"prompt": "hi"}'])
    r = write_recipe(tmp_path, recipe_text(s, tmp_path / "no-such-model"))
    one_line_error(capfd, ["run", str(r), "--store", str(filled)], filled,
                   needles=("no-such-model", "does not exist", "local folder"))


def test_unreachable_endpoint(tmp_path, filled, capfd):
    s = seeds(tmp_path, ['{"prompt": "hi"}'])
    port = closed_port()
    body = (f"name: bad\nrounds: {{count: 0}}\npolicy: {{kind: openai, model: m, base_url: "
            f"'http://127.0.0.1:{port}/v1', max_retries: 0, timeout_s: 2}}\n"
            f"prompts: {{seeds: {{path: '{s}'}}, heldout_fraction: 0.0}}\nscoring: [{{kind: rule_instructions}}]\n"
            f"report: {{out: '{tmp_path / 'report'}'}}\n")
    r = write_recipe(tmp_path, body)
    one_line_error(capfd, ["run", str(r), "--store", str(filled)], filled,
                   needles=(f"127.0.0.1:{port}", "start the server or fix base_url"))


@pytest.mark.parametrize("lines,needles", [
    (['{"text": "hi"}', '{"text": "there"}'], ("no column 'prompt'", "prompt_column")),
    (['{"prompt": 5}', '{"prompt": 6}'], ("prompt", "dtype", "expected String")),
])
def test_seed_file_with_missing_or_mistyped_column(tmp_path, filled, capfd, lines, needles, tiny_model_dir):
    s = seeds(tmp_path, lines)
    r = write_recipe(tmp_path, recipe_text(s, tiny_model_dir))
    one_line_error(capfd, ["run", str(r), "--store", str(filled)], filled, needles=needles)


def test_empty_seed_file(tmp_path, filled, capfd, tiny_model_dir):
    s = seeds(tmp_path, [])
    r = write_recipe(tmp_path, recipe_text(s, tiny_model_dir))
    one_line_error(capfd, ["run", str(r), "--store", str(filled)], filled, needles=("empty", "seeds"))


@pytest.mark.parametrize("broken,needles", [
    ("config_empty", ("config.json without model_type", "save_pretrained")),
    ("weights_empty", ("empty weights file", "model.safetensors")),
    ("no_tokenizer", ("no tokenizer", "tokenizer.save_pretrained")),
    ("missing_shard", ("missing or empty weights file", "model-00002-of-00002.safetensors")),
])
def test_half_copied_model_folder_fails_before_any_write(tmp_path, capfd, tiny_model_dir, broken, needles):
    """A folder with config.json and a weights file can still be unusable (an empty config, a
    zero-byte weights file, no tokenizer): caught before the store folder is even created."""
    bad = tmp_path / "model"
    shutil.copytree(tiny_model_dir, bad)
    if broken == "config_empty":
        (bad / "config.json").write_text("{}")
    elif broken == "weights_empty":
        next(bad.glob("*.safetensors")).write_bytes(b"")
    elif broken == "missing_shard":          # an index naming a shard the copy lost
        (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    else:
        for f in bad.iterdir():
            if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
                f.unlink()
    s = seeds(tmp_path, ['{"prompt": "hi"}'])
    r = write_recipe(tmp_path, recipe_text(s, bad))
    store = tmp_path / "new-store"
    one_line_error(capfd, ["run", str(r), "--store", str(store)], None, needles=needles)
    assert not store.exists(), "nothing written, not even the store folder"


@pytest.mark.parametrize("tokenizer", ["spm.model", "qwen.tiktoken", "tekken.json", "tokenizer_config.json"])
def test_model_folders_with_other_tokenizer_files_pass_the_check(tmp_path, tiny_model_dir, tokenizer):
    from generators.models.registry import check_model_folder

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    for f in folder.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            f.unlink()
    (folder / tokenizer).write_text("{}")
    assert check_model_folder(folder) == folder


def test_dry_run_does_not_convert_the_built_in_model(tmp_path, capfd, monkeypatch):
    """`--dry-run` writes nothing: a built-in model not converted yet stays unconverted (its
    packaged weights are only looked up)."""
    monkeypatch.setenv("PREFMILL_CACHE", str(tmp_path / "cache"))
    assert main(["run", str(ROOT / "recipes/quickstart.yaml"), "--dry-run"]) == 0
    assert "r2.eval" in capfd.readouterr().out
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_test_split_the_seeds_leave_empty_is_an_error_before_any_write(tmp_path, capfd, tiny_model_dir, dry_run):
    s = seeds(tmp_path, [json.dumps({"prompt": f"question number {i}?"}) for i in range(20)])
    body = recipe_text(s, tiny_model_dir).replace("rounds: {count: 0}", "rounds: {count: 1}") \
        .replace("heldout_fraction: 0.0", "heldout_fraction: 0.001")
    r = write_recipe(tmp_path, body)
    store = tmp_path / "new-store"
    argv = ["run", str(r), "--store", str(store)] + (["--dry-run"] if dry_run else [])
    one_line_error(capfd, argv, None, needles=("heldout_fraction=0.001", "none of the 20 seed prompts",
                                               "raise prompts.heldout_fraction"))
    assert not store.exists()


def test_dry_run_checks_the_seeds_and_the_model_folders(tmp_path, capfd):
    s = seeds(tmp_path, [])
    r = write_recipe(tmp_path, recipe_text(s, "smollm2"))
    one_line_error(capfd, ["run", str(r), "--dry-run"], None, needles=("no rows", "add prompts"))
    s = seeds(tmp_path, ['{"prompt": "hi"}'], name="ok.jsonl")
    r = write_recipe(tmp_path, recipe_text(s, tmp_path / "no-such-model"), name="m.yaml")
    one_line_error(capfd, ["run", str(r), "--dry-run"], None, needles=("no-such-model", "does not exist"))


def test_python_dash_m_gives_the_same_one_line_errors(tmp_path):
    """`python -m flows.cli` (how `accelerate launch -m flows.cli train` runs it) loads the module as
    __main__; its user errors must still be one line and exit 2, not crashes with a trace file."""
    import os
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFMILL_LOG_DIR": str(tmp_path / "logs")}
    cases = [(["train", "--data", "x@0", "--config", str(tmp_path / "none.yaml"), "--store", str(tmp_path)],
              "does not exist"),
             (["export", "x", "--out", str(tmp_path / "o"), "--split", "test=1.5", "--store", str(tmp_path)],
              "between 0 and 1"),
             (["export", "x", "--format", "csv", "--out", str(tmp_path / "o")], "invalid choice: 'csv'")]
    (tmp_path / "tables").mkdir()
    for argv, needle in cases:
        p = subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr[-2000:]
    assert not (tmp_path / "logs").exists(), "no crash log: these are user errors"


@pytest.mark.parametrize("server", ["temporary", "own"])
def test_a_failure_inside_a_run_prints_lines_not_tracebacks(server, tmp_path, tiny_model_dir):
    """Weights that pass the folder check but do not load (a corrupt safetensors header) fail inside
    the sampling task: exit 1, Prefect's one-line records naming the task and the flow run, then
    `prefmill: error:` naming the crash log; no traceback on the console (the log file and the
    Prefect server keep it). On the default temporary Prefect API those three lines are all (its
    queued logs reach it before it stops); on a server of the user's own, Prefect's INFO lines too."""
    import os
    import sys

    bad = tmp_path / "model"
    shutil.copytree(tiny_model_dir, bad)
    weights = next(bad.glob("*.safetensors"))
    with weights.open("r+b") as fh:
        fh.write(b"\0" * 64)
    r = write_recipe(tmp_path, recipe_text(seeds(tmp_path, ['{"prompt": "hi"}']), bad))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFMILL_LOG_DIR": str(tmp_path / "logs"),
           "PREFECT_HOME": str(tmp_path / "prefect")}
    if server == "temporary":
        env.pop("PREFECT_API_URL", None)
    elif not env.get("PREFECT_API_URL"):
        pytest.skip("the test session runs without a Prefect server of its own")
    p = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(r), "--store", str(tmp_path / "store")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and (server == "temporary" or "| INFO " not in ln)]
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(lines) == 3, p.stderr[-3000:]
    assert lines[-1].startswith("prefmill: error: SafetensorError: ") and "full trace: " in lines[-1]
    assert "r1.sample" in lines[0] and "Failed" in lines[0], p.stderr
    trace = next((tmp_path / "logs").iterdir()).read_text()
    assert trace.startswith("Traceback") and "stage_tasks.py" in trace and "SafetensorError" in trace
    if server == "own":                                    # the server kept the traceback
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import LogFilter, LogFilterLevel
        from prefect.client.schemas.sorting import LogSort

        with get_client(sync_client=True) as client:      # newest first: the session's server has many
            logs = client.read_logs(log_filter=LogFilter(level=LogFilterLevel(ge_=40)), limit=50,
                                    sort=LogSort.TIMESTAMP_DESC)
        assert any("SafetensorError" in lg.message and "Traceback" in lg.message for lg in logs)


# --------------------------------------------------------------------------------------------
# store, tables, versions
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,needles", [
    (["datasets", "show", "../r1_samples"], ("invalid table name", "'..'")),
    (["datasets", "show", "a/b"], ("invalid table name", "no '/'")),
    (["datasets", "log", "..."], ("invalid table name",)),
    (["datasets", "show", "r1_samples@99"], ("no version 99", "0..")),
    (["datasets", "show", "r1_samples@-1"], ("bad version",)),
    (["datasets", "show", "no_such_table"], ("unknown table", "datasets list")),
    (["datasets", "diff", "r1_samples@0", "r1_samples@7"], ("no version 7",)),
    (["export", "../../etc@0", "--format", "jsonl"], ("invalid table name",)),
    (["export", "r1_samples@42", "--format", "jsonl"], ("no version 42",)),
])
def test_bad_table_names_and_versions(filled, tmp_path, capfd, argv, needles):
    extra = ["--out", str(tmp_path / "out")] if argv[0] == "export" else []
    one_line_error(capfd, [*argv, *extra, "--store", str(filled)], filled, needles=needles)
    assert not (tmp_path / "out").exists()


def test_store_path_that_is_a_file(tmp_path, capfd):
    f = tmp_path / "store.txt"
    f.write_text("not a store")
    for cmd in (["datasets", "list"], ["datasets", "show", "x@0"], ["report", "--out", str(tmp_path / "rep")]):
        one_line_error(capfd, [*cmd, "--store", str(f)], None, needles=("is a file", "--store"))
    assert f.read_text() == "not a store" and not (tmp_path / "rep").exists()


def test_run_with_store_path_that_is_a_file(tmp_path, capfd):
    f = tmp_path / "store.txt"
    f.write_text("not a store")
    s = seeds(tmp_path, ['{"prompt": "hi"}'])
    r = write_recipe(tmp_path, recipe_text(s, tmp_path))
    one_line_error(capfd, ["run", str(r), "--store", str(f)], None, needles=("is a file", "--store"))


def test_store_that_does_not_exist_is_not_created_by_reads(tmp_path, capfd):
    missing = tmp_path / "nowhere"
    one_line_error(capfd, ["datasets", "list", "--store", str(missing)], None, needles=("no prefmill store",))
    assert not missing.exists()


def _console(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "prefmill"), *argv], capture_output=True, text=True,
                          timeout=300)


def test_console_script_bad_yaml_and_bad_version(tmp_path, filled):
    r = write_recipe(tmp_path, "name: [unclosed\n")
    before = snapshot(filled)
    for argv in (["run", str(r), "--store", str(filled)], ["datasets", "show", "r1_samples@99", "--store", str(filled)]):
        p = _console(*argv)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
        assert lines[0].startswith("prefmill: error: ")
    assert snapshot(filled) == before


# --------------------------------------------------------------------------------------------
# scores that are not numbers, replies that cannot be read
# --------------------------------------------------------------------------------------------
def _seed_store(store, *, prompts: int = 2, n: int = 3) -> int:
    P, S = [], []
    for i in range(prompts):
        msgs = [{"role": "user", "content": f"question {i}?"}]
        pid = keys.prompt_id(msgs)
        P.append({"prompt_id": pid, "messages": msgs, "task_type": "open_qa", "constraints": None,
                  "reference": None, "source": "test", "topic_id": None, "split": "train"})
        for j in range(n):
            sid = keys.sample_id(pid, policy="p", revision="r", sampling={}, seed=0, index=j)
            S.append({"sample_id": sid, "prompt_id": pid, "policy": "p", "policy_revision": "r", "sample_index": j,
                      "seed": 0, "sampling": "{}", "completion": f"reply {j} to {i}", "finish_reason": "stop",
                      "prompt_tokens": 3, "completion_tokens": 3, "is_reference": False})
    store.append("prompts", pl.DataFrame(P), kind="prompts")
    store.append("samples", pl.DataFrame(S), kind="samples")
    return len(S)


def _poison(src: Path, dst: Path, how: str) -> Path:
    """A copy of the tiny reward model whose score head yields NaN or +-inf for every input."""
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(src, dst)
    model = AutoModelForSequenceClassification.from_pretrained(dst)
    with torch.no_grad():
        if how == "nan":
            model.score.weight.fill_(math.nan)
        else:        # one hidden unit amplified past float32's range: |score| overflows to inf
            model.model.norm.weight.zero_()
            model.model.norm.weight[0] = 1e20
            model.score.weight.zero_()
            model.score.weight[0, 0] = 1e30
    model.save_pretrained(dst)
    return dst


@pytest.mark.parametrize("how", ["nan", "inf"])
def test_non_finite_scores_are_quarantined_not_scored(store, tiny_reward_dir, tmp_path, how):
    from pipelines.scoring import score_samples

    n = _seed_store(store)
    rm = _poison(tiny_reward_dir, tmp_path / f"{how}-rm", how)
    ref = score_samples(store, samples="samples", prompts="prompts", scorer_cfg={"kind": "rm", "model": str(rm)},
                        output="scores")
    assert store.read(ref).height == 0
    q = store.read("quarantine").filter(pl.col("table") == "scores")
    assert q.height == n and set(q["reason"]) == {"non_finite_score"}
    shown = {json.loads(p)["score"] for p in q["payload"]}
    assert shown <= ({"nan"} if how == "nan" else {"inf", "-inf"}), shown


def test_unparseable_judge_replies_are_quarantined_with_raw_text(store):
    from generators.backends.base import Completion
    from pipelines.scoring import score_samples

    class Scripted:
        model_id, revision = "scripted", "r0"

        def load(self): ...

        def close(self): ...

        def generate(self, conversations, sampling):
            out = []
            for conv in conversations:
                text = conv[0]["content"]
                reply = "Score: 4" if "reply 0" in text else "I would rather not grade this. <<" + text[-12:]
                out.append([Completion(reply)] * sampling.n)
            return out

    n = _seed_store(store)
    ref = score_samples(store, samples="samples", prompts="prompts", output="scores_judge", backend=Scripted(),
                        scorer_cfg={"kind": "judge", "backend": {"model": "scripted"}})
    assert store.read(ref)["score"].to_list() == [4.0, 4.0]
    q = store.read("quarantine").filter(pl.col("table") == "scores_judge")
    assert q.height == n - 2 and all(r.startswith("unparseable_judge_reply") for r in q["reason"])
    raws = [json.loads(p)["raw"] for p in q["payload"]]
    assert all("I would rather not grade this" in r for r in raws)


# --------------------------------------------------------------------------------------------
# scale-out (issue 13): an unknown engine, an unreachable cluster
# --------------------------------------------------------------------------------------------
def test_unknown_scale_engine_in_the_recipe(tmp_path, filled, capfd, tiny_model_dir):
    r = write_recipe(tmp_path, recipe_text(seeds(tmp_path, ['{"prompt": "hi"}']), tiny_model_dir,
                                           extra="scale: {engine: spark}\n"))
    one_line_error(capfd, ["run", str(r), "--store", str(filled)], filled, needles=("scale.engine", "spark", "dask"))


@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_unreachable_cluster_address(tmp_path, filled, capfd, tiny_model_dir, engine):
    r = write_recipe(tmp_path, recipe_text(seeds(tmp_path, ['{"prompt": "hi"}']), tiny_model_dir))
    address = f"tcp://127.0.0.1:{closed_port()}" if engine == "dask" else f"127.0.0.1:{closed_port()}"
    one_line_error(capfd, ["run", str(r), "--store", str(filled), "--scale", engine, "--cluster", address], filled,
                   needles=(f"cannot reach the {'Dask scheduler' if engine == 'dask' else 'Ray cluster'}", address,
                            "fix scale.address"))

"""`prefmill train` (flows/cmd_train.py): one process in-process, two CPU processes under
`accelerate launch` (gloo), and bad inputs as one-line errors with exit code 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from flows.cli import main
from pipelines.keys import pair_id, prompt_id
from pipelines.schemas import empty
from trainers.registry import list_models

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "trainer: dpo\nloss: sigmoid\nmax_steps: 2\nbatch_size: 2\nlearning_rate: 1.0e-3\nmax_length: 64\n"


def _pairs(store, n: int = 8) -> str:
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Name a colour, number {i}."}]
        pid = prompt_id(prompt)
        rows.append(dict(pair_id=pair_id(pid, f"c{i}", f"r{i}", "t"), prompt_id=pid, prompt=prompt,
                         chosen=[{"role": "assistant", "content": "Blue" + "!" * (i % 3)}],
                         rejected=[{"role": "assistant", "content": "I refuse to answer that question."}],
                         chosen_id=f"c{i}", rejected_id=f"r{i}", chosen_score=1.0, rejected_score=0.0, margin=1.0,
                         strategy="t"))
    v = store.append("r1_pairs", pl.DataFrame(rows, schema=empty("pairs").schema), kind="pairs")
    return f"r1_pairs@{v}"


def _config(tmp_path, text: str = CONFIG) -> str:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return str(path)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _check_model(store, out: Path) -> dict:
    from transformers import AutoModelForCausalLM

    models = list_models(store)
    assert models.height == 1, models
    row = models.row(0, named=True)
    assert row["path"] == str(out.resolve()) and row["trainer"] == "dpo/sigmoid"
    metrics = json.loads(row["metrics"])
    assert [s for s, _ in metrics["loss_curve"]] == [1, 2]
    AutoModelForCausalLM.from_pretrained(row["path"])
    return metrics


def test_train_one_process(store, tiny_model_dir, tmp_path, capsys):
    data = _pairs(store)
    out = tmp_path / "m"
    rc, stdout, err = cli(capsys, "train", "--data", data, "--config", _config(tmp_path), "--store", str(store.root),
                          "--policy", str(tiny_model_dir), "--out", str(out), "--name", "cli-dpo")
    assert rc == 0, err
    assert "trained cli-dpo (dpo/sigmoid)" in stdout and "2 logged steps" in stdout
    assert _check_model(store, out)["epochs"] == 0.5         # 2 steps x 2 pairs of 8
    rc, stdout, err = cli(capsys, "models", "list", "--store", str(store.root), "--json")
    assert rc == 0, err
    doc = json.loads(stdout)
    assert [(m["name"], m["path"]) for m in doc["registered"]] == [("cli-dpo", str(out.resolve()))] and doc["note"] is None
    assert [b["name"] for b in doc["builtin"]] == ["smollm2"]


@pytest.mark.slow
def test_train_reward_model_from_a_recipe_file(store, tiny_model_dir, tmp_path, capsys):
    """`--config RECIPE.yaml` takes the recipe's training section; here a Bradley-Terry reward model
    (trainer: reward) on the pairs, whose folder then loads as a sequence classifier."""
    from transformers import AutoModelForSequenceClassification

    data = _pairs(store)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((ROOT / "recipes/quickstart.yaml").read_text().split("\ntraining:")[0]
                      + "\ntraining: {trainer: reward, max_steps: 2, batch_size: 2, max_length: 64}\n")
    out = tmp_path / "rm"
    rc, stdout, err = cli(capsys, "train", "--data", data, "--config", str(recipe), "--store", str(store.root),
                          "--policy", str(tiny_model_dir), "--out", str(out), "--name", "cli-rm")
    assert rc == 0, err
    row = list_models(store).row(0, named=True)
    assert row["trainer"] == "reward" and row["name"] == "cli-rm"
    assert [s for s, _ in json.loads(row["metrics"])["loss_curve"]] == [1, 2]
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 1


@pytest.mark.slow
def test_train_process_reward_model_on_step_labels(store, tiny_model_dir, tmp_path, capsys):
    from test_trainers_prm import _store_rows, toy_rows
    from transformers import AutoModelForTokenClassification

    data = _store_rows(store, toy_rows(8))
    out = tmp_path / "prm"
    rc, stdout, err = cli(capsys, "train", "--data", data, "--config",
                          _config(tmp_path, "trainer: prm\nmax_steps: 2\nbatch_size: 2\nmax_length: 96\n"),
                          "--store", str(store.root), "--policy", str(tiny_model_dir), "--out", str(out), "--name", "cli-prm")
    assert rc == 0, err
    row = list_models(store).row(0, named=True)
    assert row["trainer"] == "prm" and [s for s, _ in json.loads(row["metrics"])["loss_curve"]] == [1, 2]
    assert AutoModelForTokenClassification.from_pretrained(out).config.num_labels == 2


@pytest.mark.slow
def test_train_two_cpu_processes_register_one_model(store, tiny_model_dir, tmp_path):
    data = _pairs(store)
    out = tmp_path / "ddp"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # --multi_gpu is accelerate's switch for its torch.distributed launcher; without a GPU the two
    # processes train on the CPU over gloo (accelerate's --cpu alone starts a single process)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "flows.cli", "train",
           "--data", data,
           "--config", _config(tmp_path), "--store", str(store.root), "--policy", str(tiny_model_dir),
           "--out", str(out), "--name", "ddp-dpo"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("trained ddp-dpo") == 1, res.stdout           # only the main process reports
    metrics = _check_model(store, out)
    assert metrics["epochs"] == 1.0          # 2 steps x 2 processes x 2 pairs of 8: the processes shared the data
    assert all(x == x for _, x in metrics["loss_curve"])                 # finite (not NaN)
    assert (out / ".prefmill-complete").is_file()


@pytest.mark.parametrize("case", ["unknown_table", "no_config", "bad_yaml", "unknown_trainer", "unknown_field",
                                  "bad_value", "wrong_kind", "reference_unused"])
def test_bad_inputs_are_one_line_errors(case, store, tiny_model_dir, tmp_path, capsys):
    data = _pairs(store)
    config = _config(tmp_path)
    argv = ["train", "--data", data, "--config", config, "--store", str(store.root), "--policy", str(tiny_model_dir),
            "--out", str(tmp_path / "m")]
    expect = {
        "unknown_table": ("unknown table 'nope'", lambda a: a.__setitem__(2, "nope@0")),
        "no_config": ("does not exist", lambda a: a.__setitem__(4, str(tmp_path / "missing.yaml"))),
        "bad_yaml": ("not valid YAML", lambda a: a.__setitem__(4, _config(tmp_path, "trainer: dpo\nloss: [x\n"))),
        "unknown_trainer": ("unknown trainer 'dpo2'; expected one of dpo, kto, rft, reward, prm",
                            lambda a: a.__setitem__(4, _config(tmp_path, "trainer: dpo2\n"))),
        "unknown_field": ("bogus: Extra inputs are not permitted",
                          lambda a: a.__setitem__(4, _config(tmp_path, CONFIG + "bogus: 1\n"))),
        "bad_value": ("unknown loss 'dpo9'", lambda a: a.__setitem__(4, _config(tmp_path, "loss: dpo9\n"))),
        "wrong_kind": ("holds pairs rows; trainer rft reads sft tables",
                       lambda a: a.__setitem__(4, _config(tmp_path, "trainer: rft\nmax_steps: 1\n"))),
        "reference_unused": ("uses no reference model", lambda a: a.extend(
            ["--reference", str(tiny_model_dir)]) or a.__setitem__(4, _config(tmp_path, "trainer: reward\n"))),
    }[case]
    expect[1](argv)
    rc, out, err = cli(capsys, *argv)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expect[0] in lines[0], err
    assert not store.exists("models")

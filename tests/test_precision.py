"""dtype: auto resolves to the precision the hardware computes natively, and every backend and the
trainers run in what it resolved to."""
from __future__ import annotations

import json

import pytest
import torch

from generators.backends import precision
from generators.backends.precision import resolve_dtype
from trainers.config import PreferenceConfig


@pytest.fixture
def flags(monkeypatch):
    """Pretend the CPU has the given flags (and no override)."""
    monkeypatch.delenv(precision.ENV, raising=False)

    def set_flags(*names: str) -> None:
        monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(names))
    return set_flags


def test_explicit_dtypes_are_kept(flags):
    flags("avx512_bf16")
    for d in ("float32", "bfloat16", "float16"):
        assert resolve_dtype(d, device="cpu") == d


@pytest.mark.parametrize("cpu_flags, want", [
    (("avx512f", "avx512_bf16"), "bfloat16"),     # Zen 4+, Cooper Lake
    (("amx_bf16", "amx_tile"), "bfloat16"),        # Sapphire Rapids+
    (("avx512f", "avx512bw"), "float32"),          # AVX-512 without bf16: emulated, so float32
    (("avx2",), "float32"),
    ((), "float32"),                               # flags unreadable (not Linux)
])
def test_auto_on_cpu_follows_native_bf16(flags, cpu_flags, want):
    flags(*cpu_flags)
    assert resolve_dtype("auto", device="cpu") == want


def test_override_and_bad_override(flags, monkeypatch):
    flags("avx2")
    monkeypatch.setenv(precision.ENV, "1")
    assert resolve_dtype("auto", device="cpu") == "bfloat16"
    monkeypatch.setenv(precision.ENV, "0")
    flags("avx512_bf16")
    monkeypatch.setenv(precision.ENV, "0")
    assert resolve_dtype("auto", device="cpu") == "float32"
    monkeypatch.setenv(precision.ENV, "yes")
    with pytest.raises(ValueError, match="PREFMILL_CPU_BF16='yes'; set it to 1"):
        resolve_dtype("auto", device="cpu")


def test_real_cpu_flags_are_read():
    # on Linux the flags line is found (every x86-64 CPU has sse2; other arches have some flags)
    if not precision.Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo")
    assert precision._cpu_flags()


@pytest.mark.parametrize("native, bf16", [(True, True), (False, False)])
def test_training_auto_is_autocast_where_native(monkeypatch, native, bf16):
    if torch.cuda.is_available():
        pytest.skip("the CPU rule")
    monkeypatch.setenv(precision.ENV, "1" if native else "0")
    cfg = PreferenceConfig(dtype="auto")
    assert cfg.precision == ("bfloat16" if bf16 else "float32")
    assert cfg.trl_kwargs("out")["bf16"] is bf16
    assert PreferenceConfig(dtype="float32").trl_kwargs("out")["bf16"] is False


def test_transformers_backend_loads_in_the_resolved_dtype(monkeypatch, tiny_model_dir):
    from generators.backends.hf import TransformersBackend

    for env, want in (("1", torch.bfloat16), ("0", torch.float32)):
        monkeypatch.setenv(precision.ENV, env)
        be = TransformersBackend(tiny_model_dir, dtype="auto")
        be.load()
        try:
            model, _ = be._need()
            assert next(model.parameters()).dtype == want and be.dtype == str(want).removeprefix("torch.")
        finally:
            be.close()


def test_vllm_server_command_passes_the_resolved_dtype(monkeypatch, tmp_path):
    from generators.backends.vllm_server import VLLMServerBackend

    be = VLLMServerBackend(tmp_path, model_id="m", dtype="auto")
    monkeypatch.setenv(precision.ENV, "1")
    cmd = be.command(8100, cpu=True)
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
    monkeypatch.setenv(precision.ENV, "0")
    cmd = be.command(8100, cpu=True)
    assert cmd[cmd.index("--dtype") + 1] == "float32"


def test_trained_model_records_the_resolved_precision(monkeypatch, tiny_model_dir, tmp_path):
    import polars as pl

    from pipelines.keys import pair_id, prompt_id
    from pipelines.schemas import empty
    from pipelines.store import Store
    from trainers.dpo import train_dpo

    monkeypatch.setenv(precision.ENV, "1")
    prompt = [{"role": "user", "content": "Name a colour."}]
    pid = prompt_id(prompt)
    rows = [dict(pair_id=pair_id(pid, f"c{i}", f"r{i}", "t"), prompt_id=pid, prompt=prompt,
                 chosen=[{"role": "assistant", "content": "Blue."}],
                 rejected=[{"role": "assistant", "content": "I cannot say."}], chosen_id=f"c{i}", rejected_id=f"r{i}",
                 chosen_score=1.0, rejected_score=0.0, margin=1.0, strategy="t") for i in range(2)]
    store = Store(tmp_path / "store")
    v = store.append("pairs", pl.DataFrame(rows, schema=empty("pairs").schema), kind="pairs")
    cfg = PreferenceConfig(dtype="auto", batch_size=2, max_steps=1, max_length=64, learning_rate=1e-5)
    rec = train_dpo(store, data=f"pairs@{v}", policy=tiny_model_dir, config=cfg, output_dir=tmp_path / "m", name="t")
    assert rec.config["dtype"] == "auto" and rec.config["precision"] == "bfloat16"


def test_precision_benchmark_runs_its_sides_apart(capsys):
    from benchmarks.precision import main

    main(["--parts", "matmul", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "cpu native bf16:" in out and "matmul float32:" in out and "matmul bfloat16:" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("bf16_speedup: matmul ") and float(last.split()[-1]) > 0


def test_bad_override_is_a_one_line_error_before_anything_is_written(monkeypatch, tmp_path, capsys):
    from flows.cli import main

    monkeypatch.setenv(precision.ENV, "yes")
    store = tmp_path / "store"
    assert main(["run", "recipes/quickstart.yaml", "--dry-run", "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PREFMILL_CPU_BF16='yes'; set it to 1" in err[0]
    assert not store.exists()


def test_sampling_lineage_records_the_resolved_precision_outside_keys_and_fingerprint(monkeypatch, tiny_model_dir,
                                                                                     tmp_path, capsys):
    # dtype auto answers differently on a CPU with native bf16 and on one without: the completion
    # record's usage stats say which precision the run resolved; keys and fingerprint do not
    # change with it (a run fact like batch size), so a store resumed elsewhere keeps its rows
    import polars as pl

    from flows.cli import main
    from generators.backends.hf import TransformersBackend
    from pipelines.lineage import LINEAGE_TABLE
    from pipelines.prompts import prompt_row, prompts_frame
    from pipelines.sampling import SamplingStageConfig, sample_stage
    from pipelines.store import Store

    got = {}
    for env, want in (("1", "bfloat16"), ("0", "float32")):
        monkeypatch.setenv(precision.ENV, env)
        store = Store(tmp_path / f"store{env}")
        store.append("prompts", prompts_frame([prompt_row([{"role": "user", "content": "Name a colour."}],
                                                          task_type="open_qa", source="test")]), kind="prompts")
        be = TransformersBackend(tiny_model_dir, dtype="auto", model_id="tiny")
        be.engine_kind = "transformers"        # as make_backend sets it
        assert be.precision is None           # not resolved before load
        be.load()
        try:
            out = sample_stage(store, be, SamplingStageConfig(n=2, temperature=0.0, max_tokens=4, split="all"),
                               prompts="prompts", output="s", stream=False)
        finally:
            be.close()
        rec = store.read(LINEAGE_TABLE).filter(pl.col("table") == "s").row(0, named=True)
        stats = json.loads(rec["stats"])
        capsys.readouterr()
        assert main(["datasets", "log", "s", "--store", str(store.root)]) == 0     # what `datasets log` prints
        assert stats["precision"] == want and stats["engine"] == "transformers"
        assert f"on transformers  precision {want}" in capsys.readouterr().out
        got[want] = (rec["fingerprint"], sorted(store.read(out)["sample_id"].to_list()))
    assert got["bfloat16"] == got["float32"]

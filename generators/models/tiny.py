"""Tiny random Llama models with a real (trained byte-level BPE) tokenizer and a ChatML chat
template, for tests and framework-overhead benchmarks. A few hundred KB; built in about a second;
loadable by transformers, vLLM and TRL alike.

    python -m generators.models.tiny OUT_DIR [--reward]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = Path(__file__).with_name("tiny_corpus.txt")


def build_tokenizer(out: Path, *, vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(CORPUS)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_tiny_llama(out: str | Path, *, seed: int = 0, num_labels: int | None = None, hidden: int = 128,
                     layers: int = 2, heads: int = 2, vocab_size: int = 512) -> Path:
    """Write a random-init Llama (CausalLM, or SequenceClassification with `num_labels` heads)
    plus tokenizer to `out`; return the path. Deterministic for a given seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, vocab_size=vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=2048, tie_word_embeddings=True, torch_dtype="float32",
                      bos_token_id=None, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                      pad_token_id=tok.pad_token_id)
    if num_labels is None:
        model = LlamaForCausalLM(cfg)
    else:
        cfg.num_labels = num_labels
        model = LlamaForSequenceClassification(cfg)
    model.to(torch.float32).save_pretrained(out)
    gen = out / "generation_config.json"
    if num_labels is None:
        gen.write_text(json.dumps({"eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--reward", type=int, default=None, metavar="HEADS", help="build a reward model with HEADS outputs")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(build_tiny_llama(a.out, seed=a.seed, num_labels=a.reward))


if __name__ == "__main__":
    main()

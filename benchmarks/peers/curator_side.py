"""bespokelabs-curator side of benchmarks/vs_peers.py (runs in /work/peer-venvs/curator).

    /work/peer-venvs/curator/bin/python benchmarks/peers/curator_side.py JOB.json

Set-up as curator's docs show for a vLLM server (docs/local_models.md, "Online Inference with
Local Models"): backend "litellm", model "hosted_vllm/NAME", backend_params base_url, a dummy
HOSTED_VLLM_API_KEY. Two curator.LLM subclasses: the sampler asks for n=4 choices in one request
(generation_params n, return_completions_object=True so parse sees every choice and returns one
row per choice), the judge renders the shared judge template and parses `Score: d`. Pairs are
built from the judge's dataset in plain Python: curator has no cross-row step.

backend_params beyond the docs' example, each for a documented reason: max_requests_per_minute
and max_tokens_per_minute set far above what the server can do (a vLLM server sends no rate-limit
headers, so curator would otherwise fall back to 200 requests and 100k tokens per minute),
max_concurrent_requests = the job's concurrency (same as every side), and invalid_finish_reasons
= ["content_filter"] (the default also counts "length" as a failure and retries it, but these
samples are meant to stop at max_tokens).
"""
from __future__ import annotations

import os
import sys
from typing import Any

from bespokelabs import curator
from jinja2 import Template

from common import best_vs_worst, finish, load_job, parse_score


def _text(choice: Any) -> str:
    msg = choice["message"] if isinstance(choice, dict) else choice.message
    content = msg["content"] if isinstance(msg, dict) else msg.content
    return content or ""


class Sampler(curator.LLM):
    """n completions per prompt from one request."""

    return_completions_object = True

    def prompt(self, row: dict) -> list[dict[str, str]]:
        return [{"role": "user", "content": row["prompt"]}]

    def parse(self, row: dict, response: dict) -> list[dict[str, Any]]:
        return [{"prompt": row["prompt"], "response": _text(c)} for c in response["choices"]]


class Judge(curator.LLM):
    """Pointwise judge: the shared template, `Score: d` parsed from the reply."""

    template: Template

    def prompt(self, row: dict) -> list[dict[str, str]]:
        text = self.template.render(instruction=row["prompt"], response=row["response"]).strip()
        return [{"role": "user", "content": text}]

    def parse(self, row: dict, response: str) -> dict[str, Any]:
        return {"prompt": row["prompt"], "response": row["response"], "score": parse_score(response)}


def main(job_path: str) -> None:
    job = load_job(job_path)
    os.environ.setdefault("HOSTED_VLLM_API_KEY", "EMPTY")
    backend = {"base_url": job["base_url"], "max_requests_per_minute": 1_000_000,
               "max_tokens_per_minute": 1_000_000_000, "max_concurrent_requests": job["concurrency"],
               "invalid_finish_reasons": ["content_filter"], "max_retries": 3, "request_timeout": 600}
    model = f"hosted_vllm/{job['model']}"
    sampler = Sampler(model_name=model, backend="litellm", backend_params=backend,
                      generation_params={"n": job["n"], "temperature": job["temperature"], "top_p": job["top_p"],
                                         "max_tokens": job["max_tokens"]})
    samples = sampler([{"prompt": p} for p in job["prompts"]]).dataset
    Judge.template = Template(job["judge_template"])
    judge = Judge(model_name=model, backend="litellm", backend_params=backend,
                  generation_params={"temperature": job["judge_temperature"], "max_tokens": job["judge_max_tokens"]})
    scored = judge(samples).dataset.to_list()
    finish(job, best_vs_worst(scored), samples=len(samples), scored=sum(r["score"] is not None for r in scored))


if __name__ == "__main__":
    main(sys.argv[1])

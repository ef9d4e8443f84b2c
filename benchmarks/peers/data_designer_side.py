"""NVIDIA Data Designer side of benchmarks/vs_peers.py (runs in /work/peer-venvs/data-designer).

    /work/peer-venvs/data-designer/bin/python benchmarks/peers/data_designer_side.py JOB.json

Set-up from Data Designer's docs: a ModelProvider of provider_type "openai" whose endpoint is the
vLLM server (Model Providers page: "works with ... vLLM"); a seed DataFrame (DataFrameSeedSource,
ORDERED) with one row per (prompt, sample index), since an LLM column makes one request per cell
and has no `n`; an LLMTextColumnConfig for the sample, a second one rendering the shared judge
template, and a full-column CustomColumnConfig parsing `Score: d` ("use full_column for
vectorized operations"). Pairs: Data Designer columns must keep the row count ("put aggregation
at a workflow boundary"), so best-vs-worst runs in pandas on the created dataset.

Throughput settings (Architecture & Performance page): max_parallel_requests is the per-model
ceiling; the policy alias gets concurrency x n (the same number of sequences in flight as the
sides that send n=4 per request), the judge alias the job's concurrency; buffer_size and the
row-group horizon stay at their defaults (1000 and 3), which the page calls good for most cases.
The judge alias skips the start-up health check (ModelConfig.skip_health_check): its probe is a
greedy "Hello!", to which the random tiny model answers only whitespace, failing the check.
"""
from __future__ import annotations

import sys
from pathlib import Path

import data_designer.config as dd
import pandas as pd
from data_designer.interface import DataDesigner

from common import best_vs_worst, finish, load_job, parse_score


def main(job_path: str) -> None:
    job = load_job(job_path)
    provider = dd.ModelProvider(name="bench-vllm", endpoint=job["base_url"], provider_type="openai", api_key="EMPTY")
    policy = dd.ModelConfig(alias="policy", model=job["model"], provider="bench-vllm",
                            inference_parameters=dd.ChatCompletionInferenceParams(
                                temperature=job["temperature"], top_p=job["top_p"], max_tokens=job["max_tokens"],
                                max_parallel_requests=job["concurrency"] * job["n"], timeout=600))
    judge = dd.ModelConfig(alias="judge", model=job["model"], provider="bench-vllm",
                           inference_parameters=dd.ChatCompletionInferenceParams(
                               temperature=job["judge_temperature"], max_tokens=job["judge_max_tokens"],
                               max_parallel_requests=job["concurrency"], timeout=600),
                           skip_health_check=True)
    seeds = pd.DataFrame([{"instruction": p, "sample_index": i} for p in job["prompts"] for i in range(job["n"])])

    @dd.custom_column_generator(required_columns=["judgment"])
    def score(df: pd.DataFrame) -> pd.DataFrame:
        df["score"] = [parse_score(t) for t in df["judgment"]]
        return df

    builder = dd.DataDesignerConfigBuilder(model_configs=[policy, judge])
    builder.with_seed_dataset(dd.DataFrameSeedSource(df=seeds), sampling_strategy=dd.SamplingStrategy.ORDERED)
    builder.add_column(dd.LLMTextColumnConfig(name="response", prompt="{{ instruction }}", model_alias="policy"))
    builder.add_column(dd.LLMTextColumnConfig(name="judgment", prompt=job["judge_template"], model_alias="judge"))
    builder.add_column(dd.CustomColumnConfig(name="score", generator_function=score,
                                             generation_strategy=dd.GenerationStrategy.FULL_COLUMN))
    designer = DataDesigner(artifact_path=Path(job["work"]) / "artifacts", model_providers=[provider])
    designer.set_run_config(dd.RunConfig(disable_early_shutdown=False))
    result = designer.create(builder, num_records=len(seeds), dataset_name="vs-peers")
    df = result.load_dataset()
    rows = [{"prompt": r.instruction, "response": r.response, "score": r.score} for r in df.itertuples()]
    finish(job, best_vs_worst(rows), samples=len(df), scored=int(df["score"].notna().sum()))


if __name__ == "__main__":
    main(sys.argv[1])

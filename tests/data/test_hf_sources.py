"""Hugging Face ``datasets`` sources: parquet, arrow and save_to_disk, as data.source values."""

import json

import pytest
from datasets import Dataset, DatasetDict
from tests_support import SHARED

from fedlm.config import load_config
from fedlm.data.federated import build_federated_data
from fedlm.data.sources import CLIENT_KEY, load_records
from fedlm.errors import DataError
from fedlm.models.tokenizers import byte_tokenizer

USER = {"role": "user", "content": "Hi?"}


def _rows(n: int = 12) -> list[dict]:
    """Conversations of three clients (north, south, east), with a category label."""
    return [{"client": ["north", "south", "east"][i % 3], "category": f"k{i % 2}",
             "messages": [USER, {"role": "assistant", "content": f"Answer number {i}."}]} for i in range(n)]


def _cfg(**kv):
    return load_config(None, [f"{k}={v}" for k, v in kv.items()]).data


def _save(kind: str, folder, rows) -> object:
    ds = Dataset.from_list(rows)
    if kind == "parquet":
        ds.to_parquet(str(folder / "d.parquet"))
        return folder / "d.parquet"
    if kind == "arrow":
        ds.save_to_disk(str(folder / "saved"))
        return next((folder / "saved").glob("*.arrow"))
    ds.save_to_disk(str(folder / "saved"))
    return folder / "saved"


@pytest.mark.parametrize("source", ["parquet", "arrow", "hf_disk"])
def test_each_table_source_gives_the_rows_with_their_conversations(tmp_path, source):
    path = _save(source, tmp_path, _rows())
    cfg = _cfg(**{"data.source": source, "data.path": path, "data.client_field": "client"})
    records = load_records(cfg, cache_dir=tmp_path / "cache")
    assert records == _rows()


def test_an_arrow_file_in_the_ipc_file_format_is_read_too(tmp_path):
    import pyarrow as pa

    table = pa.table({"client": ["a", "b"], "text": ["one", "two"]})
    with pa.ipc.new_file(str(tmp_path / "d.arrow"), table.schema) as writer:  # Feather v2, not a stream
        writer.write_table(table)
    cfg = _cfg(**{"data.source": "arrow", "data.path": tmp_path / "d.arrow", "data.client_field": "client"})
    assert load_records(cfg, cache_dir=tmp_path) == [{"client": "a", "text": "one"}, {"client": "b", "text": "two"}]


@pytest.mark.parametrize("source", ["parquet", "hf_disk"])
def test_natural_partition_by_the_client_column_then_formatting(tmp_path, source):
    path = _save(source, tmp_path, _rows())
    cfg = _cfg(**{"data.source": source, "data.path": path, "data.client_field": "client", "data.seq_len": 256})
    data = build_federated_data(cfg, byte_tokenizer(), cache_dir=tmp_path / "cache")
    assert data.format == "messages" and data.ids() == ["east", "north", "south"]
    assert all(len(c.train) + len(c.heldout) == 4 for c in data.clients.values())


def test_any_partitioner_works_over_a_table(tmp_path):
    path = _save("parquet", tmp_path, _rows(40))
    cfg = _cfg(**{"data.source": "parquet", "data.path": path, "data.partition": "dirichlet", "data.num_clients": 3,
                  "data.label_field": "category", "data.seq_len": 256, "data.dirichlet_alpha": 5.0})
    data = build_federated_data(cfg, byte_tokenizer(), cache_dir=tmp_path / "cache")
    assert data.ids() == ["client_0", "client_1", "client_2"]
    assert sum(sum(c.labels.values()) for c in data.clients.values()) == 40


def test_a_folder_of_parquet_shards_is_read_in_file_order(tmp_path):
    rows = _rows(9)
    (tmp_path / "data").mkdir()
    for i in range(3):
        Dataset.from_list(rows[3 * i: 3 * i + 3]).to_parquet(str(tmp_path / "data" / f"train-{i:05d}.parquet"))
    cfg = _cfg(**{"data.source": "parquet", "data.path": tmp_path / "data", "data.client_field": "client"})
    assert [r["messages"][1]["content"] for r in load_records(cfg, cache_dir=tmp_path / "c")] == [
        f"Answer number {i}." for i in range(9)]


def test_a_dataset_dict_reads_data_split(tmp_path):
    DatasetDict({"train": Dataset.from_list(_rows(6)), "test": Dataset.from_list(_rows(3))}).save_to_disk(
        str(tmp_path / "dd"))
    base = {"data.source": "hf_disk", "data.path": tmp_path / "dd", "data.client_field": "client"}
    assert len(load_records(_cfg(**base), cache_dir=tmp_path)) == 6
    assert len(load_records(_cfg(**base, **{"data.split": "test"}), cache_dir=tmp_path)) == 3
    with pytest.raises(DataError, match=r"data.split='dev' is not a split of .*\['test', 'train'\], set data.split"):
        load_records(_cfg(**base, **{"data.split": "dev"}), cache_dir=tmp_path)


def test_a_folder_per_client_may_hold_parquet_files(tmp_path):
    (tmp_path / "clients").mkdir()
    for name in ("a", "b"):
        Dataset.from_list([{"text": f"{name} {i}"} for i in range(3)]).to_parquet(
            str(tmp_path / "clients" / f"{name}.parquet"))
    cfg = _cfg(**{"data.source": "folder", "data.path": tmp_path / "clients"})
    assert [r[CLIENT_KEY] for r in load_records(cfg, cache_dir=tmp_path)] == ["a"] * 3 + ["b"] * 3


def test_a_malformed_table_row_names_the_file_and_row(tmp_path):
    rows = _rows(3)
    rows[2]["messages"] = [USER, {"role": "bot", "content": "x"}]
    path = _save("parquet", tmp_path, rows)
    cfg = _cfg(**{"data.source": "parquet", "data.path": path, "data.client_field": "client"})
    with pytest.raises(DataError, match=rf"{path} row 2: messages\[1\] has role 'bot'"):
        load_records(cfg, cache_dir=tmp_path)


def test_a_table_without_the_fields_names_its_columns(tmp_path):
    path = _save("parquet", tmp_path, [{"client": "a", "body": "x"}])
    cfg = _cfg(**{"data.source": "parquet", "data.path": path, "data.client_field": "client"})
    with pytest.raises(DataError, match=r"has no column\(s\) \['text'\]; columns are \['client', 'body'\]"):
        load_records(cfg, cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("source", "make", "error"),
    [
        ("hf_disk", lambda p: p / "plain", "is not a folder written by save_to_disk"),
        ("hf_disk", lambda p: _save("parquet", p, _rows(2)), "is a file, but data.source=hf_disk expects the folder"),
        ("parquet", lambda p: p / "plain", "is a folder without .parquet files"),
        ("parquet", lambda p: p / "plain" / "x.txt", r"x.txt: cannot be read as parquet"),
        ("parquet", lambda p: p / "absent.parquet", "does not exist"),
    ],
)
def test_wrong_paths_are_clear_errors(tmp_path, source, make, error):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("not a table")
    cfg = _cfg(**{"data.source": source, "data.path": make(tmp_path), "data.client_field": "client"})
    with pytest.raises(DataError, match=error):
        load_records(cfg, cache_dir=tmp_path)


@pytest.mark.skipif(not (SHARED / "medquad.jsonl").is_file(),
                    reason="needs the shared MedQuAD copy (../shared/datasets/medquad.jsonl)")
def test_real_medquad_as_parquet_gives_the_nine_nih_sources(tmp_path):
    rows = [json.loads(line) for line in (SHARED / "medquad.jsonl").read_text(encoding="utf-8").splitlines()]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "medquad.parquet"))
    cfg = _cfg(**{"data.source": "parquet", "data.path": tmp_path / "medquad.parquet", "data.client_field": "source",
                  "data.prompt_field": "question", "data.response_field": "answer", "data.context_field": "null"})
    records = load_records(cfg, cache_dir=tmp_path)
    counts = {}
    for r in records:
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    assert counts == {"GHR": 5430, "GARD": 5389, "NIDDK": 1192, "NINDS": 1088, "MPlusHealthTopics": 981,
                      "NIHSeniorHealth": 769, "CancerGov": 729, "NHLBI": 559, "CDC": 270}  # the shared README's figures

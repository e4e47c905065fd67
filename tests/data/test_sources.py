import json

import pytest

from fedlm.config import load_config
from fedlm.data.federated import build_federated_data
from fedlm.data.sources import CLIENT_KEY, load_records
from fedlm.errors import DataError
from fedlm.models.tokenizers import byte_tokenizer


def _cfg(**kv):
    return load_config(None, [f"{k}={v}" for k, v in kv.items()]).data


def test_malformed_jsonl_rows_are_reported_with_file_and_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"client": "a", "text": "ok"}\n{not json}\n{"client": "a"}\n\n["x"]\n')
    cfg = _cfg(**{"data.source": "jsonl", "data.path": f, "data.client_field": "client"})
    with pytest.raises(DataError) as err:
        load_records(cfg, cache_dir=tmp_path)
    msg = str(err.value)
    assert f"{f}:2: not valid JSON" in msg
    assert f"{f}:3: missing field(s) ['text']" in msg
    assert f"{f}:5: expected an object" in msg
    assert "3 malformed row(s)" in msg and "skip_malformed" in msg


def test_skip_malformed_keeps_the_good_rows_and_warns(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"client": "a", "text": "ok"}\n{not json}\n')
    cfg = _cfg(**{"data.source": "jsonl", "data.path": f, "data.client_field": "client", "data.skip_malformed": True})
    with pytest.warns(UserWarning, match=r"d.jsonl:2"):
        records = load_records(cfg, cache_dir=tmp_path)
    assert records == [{"client": "a", "text": "ok"}]


@pytest.mark.parametrize("sep", [",", ";"])
def test_csv_with_either_separator(tmp_path, sep):
    f = tmp_path / "d.csv"
    f.write_text(f"client{sep}text\na{sep}hello there\nb{sep}\"semi{sep}colon\"\n")
    cfg = _cfg(**{"data.source": "csv", "data.path": f, "data.client_field": "client"})
    records = load_records(cfg, cache_dir=tmp_path)
    assert [r["client"] for r in records] == ["a", "b"]
    assert records[1]["text"] == f"semi{sep}colon"


def test_csv_row_with_extra_cells_is_reported(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("client,text\na,hello,extra\nb,fine\n")
    cfg = _cfg(**{"data.source": "csv", "data.path": f, "data.client_field": "client"})
    with pytest.raises(DataError, match=r"d.csv:2: 3 cells for 2 columns"):
        load_records(cfg, cache_dir=tmp_path)


def test_folder_per_client_and_file_per_client(tmp_path):
    for client in ("north", "south"):
        (tmp_path / "dirs" / client).mkdir(parents=True)
        (tmp_path / "dirs" / client / "notes.txt").write_text(f"para one of {client}\n\npara two")
    cfg = _cfg(**{"data.source": "folder", "data.path": tmp_path / "dirs"})
    records = load_records(cfg, cache_dir=tmp_path)
    assert [r[CLIENT_KEY] for r in records] == ["north", "north", "south", "south"]

    (tmp_path / "files").mkdir()
    for i in range(2):
        (tmp_path / "files" / f"local_training_{i}.json").write_text(
            json.dumps([{"instruction": "q", "context": "", "response": f"a{i}"}]))
    cfg = _cfg(**{"data.source": "folder", "data.path": tmp_path / "files", "data.glob": "local_training_*.json"})
    assert [r[CLIENT_KEY] for r in load_records(cfg, cache_dir=tmp_path)] == ["local_training_0", "local_training_1"]


def test_missing_path_is_a_clear_error(tmp_path):
    cfg = _cfg(**{"data.source": "jsonl", "data.path": tmp_path / "nope.jsonl", "data.client_field": "c"})
    with pytest.raises(DataError, match="does not exist"):
        load_records(cfg, cache_dir=tmp_path)


def test_federated_split_is_per_client_and_seeded(lm_data, tmp_path):
    cfg = _cfg(**{"data.source": "jsonl", "data.path": lm_data, "data.client_field": "client",
                  "data.seq_len": 32, "data.min_client_chars": 0, "data.heldout_fraction": 0.25})
    tok = byte_tokenizer()
    a = build_federated_data(cfg, tok, cache_dir=tmp_path)
    b = build_federated_data(cfg, tok, cache_dir=tmp_path)
    assert a.ids() == ["alpha", "beta", "delta", "gamma"]
    for cid, c in a.clients.items():
        assert c.train == b.clients[cid].train and c.heldout == b.clients[cid].heldout
        total = len(c.train) + len(c.heldout)
        assert len(c.heldout) == max(1, round(total * 0.25))
        assert not any(ex in c.train for ex in c.heldout)
    s = a.summary()
    assert s["clients"] == 4 and s["format"] == "lm"



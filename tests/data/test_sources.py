import json

import pytest
from tests_support import write_lm_jsonl

from fedlm.config import load_config
from fedlm.data.federated import build_federated_data
from fedlm.data.formatting import IGNORE
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




# ------------------------------------------------------------------ TRL conversational rows

SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
DIALOGUES = {
    "north": [
        [SYSTEM, {"role": "user", "content": "What is the boiling point of water?"},
         {"role": "assistant", "content": "100 degrees Celsius at sea level."},
         {"role": "user", "content": "And at altitude?"},
         {"role": "assistant", "content": "Lower, because the air pressure is lower."}],
        [SYSTEM, {"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven."}],
        [SYSTEM, {"role": "user", "content": "Is ice denser than water?"}, {"role": "assistant", "content": "No, it floats."}],
    ],
    "south": [
        [SYSTEM, {"role": "user", "content": "Largest planet?"}, {"role": "assistant", "content": "Jupiter."},
         {"role": "user", "content": "Smallest?"}, {"role": "assistant", "content": "Mercury."},
         {"role": "user", "content": "Thanks."}],
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}],
        [SYSTEM, {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4."}],
    ],
}


def _write_messages(path, dialogues=DIALOGUES):
    with path.open("w") as fh:
        for client, convs in dialogues.items():
            for messages in convs:
                fh.write(json.dumps({"client": client, "messages": messages}) + "\n")
    return path


def _segments(tok, ex):
    runs, prev = [], IGNORE
    for tid, lab in zip(ex["input_ids"], ex["labels"], strict=True):
        if lab != IGNORE:
            runs.append([tid]) if prev == IGNORE else runs[-1].append(tid)
        prev = lab
    return [tok.decode(r) for r in runs]


def test_messages_jsonl_trains_on_assistant_turns_exactly(tmp_path):
    f = _write_messages(tmp_path / "chats.jsonl")
    cfg = _cfg(**{"data.source": "jsonl", "data.path": f, "data.client_field": "client", "data.seq_len": 512,
                  "data.heldout_fraction": 0.34})
    tok = byte_tokenizer()
    data = build_federated_data(cfg, tok, cache_dir=tmp_path)
    assert data.format == "messages" and data.ids() == ["north", "south"]
    for cid, convs in DIALOGUES.items():
        client = data.clients[cid]
        examples = client.train + client.heldout
        assert len(examples) == len(convs)
        for ex in examples:
            text = tok.decode(ex["input_ids"])
            conv = next(c for c in convs if tok.apply_chat_template(c, tokenize=False) == text)
            # the unmasked label tokens are the assistant turns, each with its end-of-turn marker
            assert _segments(tok, ex) == [f"{m['content']}<|im_end|>\n" for m in conv if m["role"] == "assistant"]
            masked = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab == IGNORE])
            assert all(m["content"] in masked for m in conv if m["role"] != "assistant")
        assert all(r["messages"] in convs for r in client.heldout_rows)


def test_prompt_completion_jsonl_trains_on_the_completion(tmp_path):
    f = tmp_path / "pc.jsonl"
    rows = [{"prompt": f"Count to {i}:", "completion": " " + " ".join(map(str, range(1, i + 1)))} for i in range(2, 8)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(**{"data.source": "jsonl", "data.path": f, "data.partition": "iid", "data.num_clients": 2,
                  "data.seq_len": 64})
    tok = byte_tokenizer()
    data = build_federated_data(cfg, tok, cache_dir=tmp_path)
    assert data.format == "prompt_completion"
    completions = {r["completion"] + "<|endoftext|>" for r in rows}
    for client in data.clients.values():
        for ex in client.train + client.heldout:
            assert _segments(tok, ex)[0] in completions and len(_segments(tok, ex)) == 1


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ({"client": "a", "messages": [{"role": "human", "content": "hi"}]}, "has role 'human'; roles are system, user, assistant"),
        ({"client": "a", "messages": [{"role": "user", "content": {"text": "hi"}}]}, "content must be a string, got dict"),
        ({"client": "a", "messages": []}, "empty conversation"),
        ({"client": "a", "messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "missing field(s) ['client']"),
    ],
)
def test_malformed_conversations_name_file_line_and_fix(tmp_path, line, error):
    f = tmp_path / "chats.jsonl"
    good = {"client": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    f.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    cfg = _cfg(**{"data.source": "jsonl", "data.path": f, "data.client_field": "client"})
    with pytest.raises(DataError) as err:
        load_records(cfg, cache_dir=tmp_path)
    assert f"{f}:2: " in str(err.value) and error in str(err.value)
    assert "skip_malformed" in str(err.value)
    skip = _cfg(**{"data.source": "jsonl", "data.path": f, "data.client_field": "client", "data.skip_malformed": True})
    with pytest.warns(UserWarning, match=r"chats.jsonl:2: "):
        assert load_records(skip, cache_dir=tmp_path) == [good]


# ------------------------------------------------------------------ hostile and unlucky input


def test_latin1_bytes_are_an_error_naming_file_line_offset_and_fix(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"client": "a", "text": "ok"}\n{"client": "a", "text": "caf\xe9"}\n')
    cfg = _cfg(**{"data.source": "jsonl", "data.path": f, "data.client_field": "client"})
    with pytest.raises(DataError) as err:
        load_records(cfg, cache_dir=tmp_path)
    msg = str(err.value)
    # line 1 is 29 characters + newline = 30 bytes; the é is column 29 of line 2: offset 30 + 28
    assert f"{f}:2: byte 0xe9 at offset 58 (column 29)" in msg
    assert "not valid utf-8" in msg and "data.encoding=latin-1" in msg and "re-save the file as UTF-8" in msg
    latin = _cfg(**{"data.source": "jsonl", "data.path": f, "data.client_field": "client", "data.encoding": "latin-1"})
    assert load_records(latin, cache_dir=tmp_path)[1]["text"] == "café"


@pytest.mark.parametrize(("source", "content"), [("csv", b"client,text\na,caf\xe9\n"), ("text", b"one\n\ncaf\xe9"),
                                                 ("json", b'[{"client": "a", "text": "caf\xe9"}]')])
def test_every_text_source_decodes_strictly(tmp_path, source, content):
    f = tmp_path / f"d.{source}"
    f.write_bytes(content)
    cfg = _cfg(**{"data.source": source, "data.path": f, "data.client_field": "client"})
    with pytest.raises(DataError, match=r"byte 0xe9 at offset \d+ .* is not valid utf-8"):
        load_records(cfg, cache_dir=tmp_path)


def test_a_utf8_byte_order_mark_is_dropped(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes("\ufeffclient,text\na,héllo\n".encode())
    cfg = _cfg(**{"data.source": "csv", "data.path": f, "data.client_field": "client"})
    assert load_records(cfg, cache_dir=tmp_path) == [{"client": "a", "text": "héllo"}]


def test_a_file_where_a_folder_is_expected_is_a_clear_error(tmp_path):
    f = write_lm_jsonl(tmp_path / "clients.jsonl")
    cfg = _cfg(**{"data.source": "folder", "data.path": f})
    with pytest.raises(DataError, match=r"is a file, but data.source=folder expects a folder .* set data.source"):
        load_records(cfg, cache_dir=tmp_path)


def test_a_folder_where_a_file_is_expected_is_a_clear_error(tmp_path):
    cfg = _cfg(**{"data.source": "jsonl", "data.path": tmp_path, "data.client_field": "c"})
    with pytest.raises(DataError, match=r"is a folder, but data.source=jsonl reads one file.*data.source=folder"):
        load_records(cfg, cache_dir=tmp_path)


def test_csv_header_without_the_fields_is_reported_at_line_1(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("client,body\na,hello\n")
    cfg = _cfg(**{"data.source": "csv", "data.path": f, "data.client_field": "client"})
    with pytest.raises(DataError, match=r"d.csv:1: has no column\(s\) \['text'\]; columns are \['client', 'body'\]"):
        load_records(cfg, cache_dir=tmp_path)


def test_a_csv_cell_may_hold_newlines(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('client,text\na,"line one\nline two"\n')
    cfg = _cfg(**{"data.source": "csv", "data.path": f, "data.client_field": "client"})
    assert load_records(cfg, cache_dir=tmp_path) == [{"client": "a", "text": "line one\nline two"}]

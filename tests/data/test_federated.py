"""The train/held-out split of one client, and the cap on its training examples."""

from fedlm.config import load_config
from fedlm.data.federated import build_client_data
from fedlm.models.tokenizers import byte_tokenizer

TOPICS = 4
PER_TOPIC = 10


def _rows() -> list[dict[str, str]]:
    """40 rows ordered by topic, as MedQuAD's sources are: topic 0's ten rows first."""
    return [{"question": f"topic {t} question {i}?", "answer": f"t{t}"} for t in range(TOPICS) for i in range(PER_TOPIC)]


def _client(cap: int | None):
    cfg = load_config(None, [
        "data.format=instruction", "data.prompt_field=question", "data.response_field=answer",
        "data.context_field=null", "data.heldout_fraction=0.25", "data.seq_len=128",
        f"data.max_examples_per_client={'null' if cap is None else cap}",
    ]).data
    return build_client_data(cfg, _rows(), byte_tokenizer(), index=2)


def _topic(tok, ex) -> str:
    return tok.decode(ex["input_ids"]).split("topic ")[1][0]


def test_the_cap_keeps_a_seeded_sample_of_the_training_rows_not_the_first_ones():
    tok = byte_tokenizer()
    full, capped = _client(None), _client(8)
    assert len(full.heldout) == 10 and len(full.train) == 30
    assert capped.heldout == full.heldout  # the cap never moves the held-out share
    assert len(capped.train) == 8
    assert all(ex in full.train for ex in capped.train)
    assert capped.train != full.train[:8]  # the first 8 training rows: topic 0 only
    assert len({_topic(tok, ex) for ex in full.train[:8]}) == 1
    assert len({_topic(tok, ex) for ex in capped.train}) > 1
    assert _client(8).train == capped.train  # seeded


def test_a_cap_above_the_client_size_keeps_every_training_row():
    assert _client(1000).train == _client(None).train


def test_row_formats_keep_small_clients_and_lm_drops_them_by_name(tmp_path, caplog):
    import json
    import logging

    from fedlm.data.federated import build_federated_data

    f = tmp_path / "qa.jsonl"
    with f.open("w") as fh:
        for client, n in (("big", 30), ("small", 3)):
            for i in range(n):
                fh.write(json.dumps({"client": client, "instruction": f"q{i}?", "response": "yes", "text": "word " * 20}) + "\n")
    base = ["data.source=jsonl", f"data.path={f}", "data.client_field=client", "data.seq_len=64"]
    tok = byte_tokenizer()
    rows = build_federated_data(load_config(None, base).data, tok, cache_dir=tmp_path)
    assert rows.format == "instruction" and rows.ids() == ["big", "small"] and not rows.dropped

    with caplog.at_level(logging.WARNING, logger="fedlm.data.federated"):
        lm = build_federated_data(load_config(None, [*base, "data.format=lm"]).data, tok, cache_dir=tmp_path)
    assert lm.ids() == ["big"]  # 30 x 100 characters; small has 3 x 100
    assert lm.dropped == {"small": "300 characters, below data.min_client_chars=2000 (unset: the lm default)"}
    assert "dropped" in caplog.text and "small (" in caplog.text and "lower data.min_client_chars" in caplog.text


def test_clients_with_fewer_than_two_examples_are_logged_with_the_reason(tmp_path, caplog):
    import json
    import logging

    from fedlm.data.federated import build_federated_data

    f = tmp_path / "qa.jsonl"
    with f.open("w") as fh:
        for client, n in (("big", 6), ("lonely", 1)):
            for i in range(n):
                fh.write(json.dumps({"client": client, "instruction": f"q{i}?", "response": "yes"}) + "\n")
    cfg = load_config(None, ["data.source=jsonl", f"data.path={f}", "data.client_field=client"]).data
    with caplog.at_level(logging.WARNING, logger="fedlm.data.federated"):
        data = build_federated_data(cfg, byte_tokenizer(), cache_dir=tmp_path)
    assert data.ids() == ["big"] and data.summary()["dropped_clients"] == 1
    assert data.dropped == {"lonely": "fewer than 2 examples from 1 row(s) at data.seq_len=128"}
    assert "dropped 1 of 2 clients: lonely (fewer than 2 examples" in caplog.text


def test_a_deployed_clients_malformed_row_is_a_clear_error():
    import pytest

    from fedlm.errors import DataError

    cfg = load_config(None, ["data.format=messages"]).data
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            {"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(DataError, match="row 1 of the client's data: 'messages' has no assistant turn"):
        build_client_data(cfg, rows, byte_tokenizer(), index=0)

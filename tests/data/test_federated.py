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

"""Public and private round records of a DP run: what metrics.jsonl may hold."""

import stat

from fedlm.privacy.records import AGGREGATE, HIDDEN, PrivateRounds, participants, public_record

IDS = [f"c{i}" for i in range(200)]


def test_public_record_hides_the_cohort_ids_and_per_client_values():
    record = {
        "type": "round", "round": 2, "cohort": ["c1", "c2", "c3"], "train_loss": 2.0,
        "clients": {"c1": {"train_loss": 1.0, "dp_clip.pre_clip_norm": 3.0},
                    "c2": {"train_loss": 3.0, "dp_clip.pre_clip_norm": 5.0}},
        "rejected": [{"client_id": "c3", "reason": "norm", "detail": "L2 norm 9 of 'c3'", "side": "server"}],
        "server": {"validate": {"norms": {"c1": 1.0, "c2": 0.5}, "accepted": 2},
                   "secagg": {"client_errors": [["c3", "masked_input", "bad"]], "abort": {"detail": "shares of 'c2'"}}},
    }
    pub = public_record(record, IDS)
    text = str(pub)
    assert all(f"'{c}'" not in text for c in ("c1", "c2", "c3"))
    assert pub["cohort"] == [] and pub["cohort_size"] == 3 and pub["train_loss"] == 2.0
    assert pub["clients"] == {AGGREGATE: {"train_loss": 2.0, "dp_clip.pre_clip_norm": 4.0, "clients": 2}}
    assert pub["rejected"] == [{"client_id": HIDDEN, "reason": "norm", "side": "server"}]  # the detail may name values
    assert pub["server"]["validate"] == {"norms": {AGGREGATE: 0.75}, "accepted": 2}
    assert pub["server"]["secagg"]["client_errors"] == [[HIDDEN, "masked_input", "bad"]]
    assert record["cohort"] == ["c1", "c2", "c3"]  # the input is left as it was


def test_private_rounds_are_0600_and_truncate_on_resume(tmp_path):
    rounds = PrivateRounds(tmp_path)
    for r in (1, 2, 3):
        rounds.append({"round": r, "cohort": [f"c{r}"]})
    assert stat.S_IMODE(rounds.path.stat().st_mode) == 0o600
    rounds.truncate_after(2)
    assert [r["round"] for r in rounds.read()] == [1, 2]
    assert stat.S_IMODE(rounds.path.stat().st_mode) == 0o600
    assert participants(tmp_path) == ["c1", "c2"] and participants(tmp_path / "none") is None

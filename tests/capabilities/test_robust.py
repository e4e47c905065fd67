"""FLTrust's simulated root set: drawn from honest clients' training rows, never from what is scored."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from tests_support import load_config, tiny_overrides, write_lm_jsonl

from fedlm.capabilities.robust import root_examples
from fedlm.commands.experiment import prepare
from fedlm.errors import ConfigError


def _ctx(tmp_path, **extra):
    data = write_lm_jsonl(tmp_path / "rows.jsonl", clients=4, rows=30)
    overrides = tiny_overrides(data, **{"robust.aggregator": "fltrust", "robust.fltrust_root_fraction": 0.1,
                                        "federation.clients_per_round": 4, **extra})
    config = load_config(None, overrides)
    _, fed = prepare(config)
    return SimpleNamespace(config=config, data=fed, overrides=overrides)


def test_the_root_set_is_a_sample_of_training_rows_and_no_held_out_row(tmp_path):
    ctx = _ctx(tmp_path)
    root = root_examples(ctx)
    train = {id(ex) for c in ctx.data.clients.values() for ex in c.train}
    heldout = {id(ex) for c in ctx.data.clients.values() for ex in c.heldout}
    assert root and {id(ex) for ex in root} <= train and not {id(ex) for ex in root} & heldout
    assert len(root) == math.ceil(0.1 * len(train)) == len({id(ex) for ex in root})  # no row twice
    owners = {cid for cid, c in ctx.data.clients.items() for ex in c.train if any(ex is r for r in root)}
    assert len(owners) > 1  # sampled across clients, not the first client's first rows


def test_the_root_set_leaves_out_the_malicious_clients_rows(tmp_path):
    probe = _ctx(tmp_path)
    attacker = sorted(probe.data.clients)[0]
    ctx = _ctx(tmp_path, **{"attack.kind": "backdoor", "attack.client_ids": f"[{attacker}]", "robust.num_byzantine": 1,
                            "robust.fltrust_root_fraction": 1.0})
    root = {id(ex) for ex in root_examples(ctx)}
    honest = {id(ex) for cid, c in ctx.data.clients.items() if cid != attacker for ex in c.train}
    assert root == honest  # fraction 1: every honest training row, and none of the attacker's


def test_the_root_set_follows_the_federation_seed(tmp_path):
    ctx = _ctx(tmp_path)
    first, again = ([id(ex) for ex in root_examples(ctx)] for _ in range(2))
    reseeded = SimpleNamespace(config=load_config(None, [*ctx.overrides, "federation.seed=7"]), data=ctx.data)
    assert first == again and [id(ex) for ex in root_examples(reseeded)] != first


def test_no_honest_training_row_is_a_clear_error(tmp_path):
    ctx = _ctx(tmp_path)
    for client in ctx.data.clients.values():
        client.train.clear()
    with pytest.raises(ConfigError, match="no honest client has a training example"):
        root_examples(ctx)

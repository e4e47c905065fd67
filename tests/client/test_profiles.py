"""Resource profiles: assignment by list or distribution, stragglers, rank masks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from fedlm.client.profiles import assign_profiles, rank_masks, round_resources, truncate_to_rank
from fedlm.config.hetero import ClientProfile, ResourcesConfig

IDS = [f"client_{i:02d}" for i in range(12)]


def test_cycle_deals_profiles_over_sorted_ids():
    cfg = ResourcesConfig(profiles=[ClientProfile(rank=4), ClientProfile(rank=8), ClientProfile(rank=16)])
    got = assign_profiles(cfg, list(reversed(IDS)))
    assert [got[c] for c in IDS] == [0, 1, 2] * 4


def test_sample_follows_the_weights():
    cfg = ResourcesConfig(profiles=[ClientProfile(rank=4), ClientProfile(rank=8)], assign="sample", weights=[0.2, 0.8])
    ids = [f"c{i:04d}" for i in range(2000)]
    counts = Counter(assign_profiles(cfg, ids).values())
    assert counts[1] / 2000 == pytest.approx(0.8, abs=0.03)
    assert assign_profiles(cfg, ids) == assign_profiles(cfg, ids)  # seeded


def test_profile_fields_override_the_federation_and_stragglers():
    slow = ClientProfile(local_steps=6, batch_size=2, speed=2.0)  # 6 steps at 2 steps/s = 3 s
    r = round_resources(ResourcesConfig(profiles=[slow]), 0, steps=3, batch_size=4)
    assert (r.steps, r.batch_size, r.seconds) == (6, 2, 3.0)
    dropped = round_resources(ResourcesConfig(profiles=[slow], time_budget=2.0), 0, steps=3, batch_size=4)
    assert dropped.steps == 0
    partial = round_resources(ResourcesConfig(profiles=[slow], time_budget=2.0, straggler="partial"), 0, steps=3, batch_size=4)
    assert (partial.steps, partial.seconds) == (4, 2.0)
    default = round_resources(ResourcesConfig(), None, steps=3, batch_size=4)
    assert (default.steps, default.batch_size, default.rank) == (3, 4, None)


def test_rank_masks_keep_the_first_components():
    shapes = {"m.lora_A.weight": (4, 3), "m.lora_B.weight": (2, 4), "other": (5,)}
    masks = rank_masks(shapes, 2)
    assert set(masks) == {"m.lora_A.weight", "m.lora_B.weight"}
    state = {k: torch.ones(s) for k, s in shapes.items()}
    cut = truncate_to_rank(state, masks)
    assert cut["m.lora_A.weight"].sum() == 6 and cut["m.lora_A.weight"][2:].abs().sum() == 0
    assert cut["m.lora_B.weight"][:, 2:].abs().sum() == 0 and cut["other"].sum() == 5
    assert rank_masks(shapes, 4) == {}

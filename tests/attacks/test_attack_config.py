"""AttackConfig (src/fedlm/config/attacks.py); kept beside the attack tests it configures."""

import pytest
from pydantic import ValidationError

from fedlm.attacks.stages import ATTACKS
from fedlm.config.attacks import ATTACK_FIELDS, ATTACK_KINDS, AttackConfig


def test_default_is_off():
    cfg = AttackConfig()
    assert cfg.kind == "none" and not cfg.enabled and not cfg.poisons_data
    assert cfg.trigger and cfg.target == "ACCESS GRANTED"
    with pytest.raises(ValidationError):
        cfg.kind = "nan"  # frozen


@pytest.mark.parametrize("kind", [k for k in ATTACK_KINDS if k != "none"])
def test_every_kind_needs_exactly_one_way_to_pick_attackers(kind):
    assert AttackConfig(kind=kind, fraction=0.2).enabled
    assert AttackConfig(kind=kind, client_ids=("a",)).enabled
    with pytest.raises(ValidationError, match="exactly one"):
        AttackConfig(kind=kind)
    with pytest.raises(ValidationError, match="exactly one"):
        AttackConfig(kind=kind, fraction=0.2, client_ids=("a",))


def test_poisoning_kinds():
    assert AttackConfig(kind="backdoor", fraction=0.1).poisons_data
    assert AttackConfig(kind="model_replacement", fraction=0.1).poisons_data
    assert not AttackConfig(kind="sign_flip", fraction=0.1).poisons_data


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "sign_flip", "fraction": 0.1, "noise_std": 1.0}, "does not read"),
        ({"kind": "backdoor", "fraction": 0.1, "norm": 5.0}, "does not read"),
        ({"kind": "none", "boost": 2.0}, "does not read"),
        ({"kind": "none", "fraction": 0.1}, "pick an attack kind"),
        ({"kind": "none", "colluding": True}, "colluding"),
        ({"kind": "nan", "fraction": 1.0}, "fraction"),
        ({"kind": "nan", "fraction": 0.0}, "fraction"),
        ({"kind": "nan", "client_ids": ()}, "empty"),
        ({"kind": "nan", "client_ids": ("a", "a")}, "more than once"),
        ({"kind": "backdoor", "fraction": 0.1, "poison_fraction": 0.0}, "poison_fraction"),
        ({"kind": "gaussian", "fraction": 0.1, "noise_std": -1.0}, "noise_std"),
        ({"kind": "gaussian", "fraction": 0.1, "noise_mode": "mul"}, "noise_mode"),
        ({"kind": "large_norm", "fraction": 0.1, "norm": 0.0}, "norm"),
        ({"kind": "model_replacement", "fraction": 0.1, "boost": float("inf")}, "boost"),
        ({"kind": "model_replacement", "fraction": 0.1, "server_lr": 0.0}, "server_lr"),
        ({"kind": "backdoor", "fraction": 0.1, "trigger": "  "}, "trigger"),
        ({"kind": "backdoor", "fraction": 0.1, "typo": 1}, "typo"),
        ({"kind": "backdoor", "fraction": 0.1, "local_steps": 0}, "local_steps"),
        ({"kind": "sign_flip", "fraction": 0.1, "local_steps": 5}, "does not read"),
    ],
)
def test_invalid_values_are_rejected_with_the_field(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        AttackConfig(**kwargs)


def test_field_table_matches_the_stage_registry():
    update_kinds = {k for k in ATTACK_KINDS if k not in ("none", "backdoor")}
    assert set(ATTACKS.names()) == update_kinds
    assert set(ATTACK_FIELDS) == set(ATTACK_KINDS)
    assert all(field.description for field in AttackConfig.model_fields.values())


def test_config_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, fedlm.config.attacks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_rounds_are_for_update_attacks_and_must_be_round_numbers():
    assert AttackConfig(kind="model_replacement", fraction=0.2, rounds=(4,)).rounds == (4,)
    with pytest.raises(ValueError, match="does not read"):
        AttackConfig(kind="backdoor", fraction=0.2, rounds=(4,))
    for bad in ((0,), (2, 2), ()):
        with pytest.raises(ValueError, match=r"attack\.rounds"):
            AttackConfig(kind="sign_flip", fraction=0.2, rounds=bad)

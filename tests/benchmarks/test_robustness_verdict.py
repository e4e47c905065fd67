"""The robustness benchmark's reading of its goal over seeds, on hand-made rows."""

from benchmarks.robustness import holds_at_20pct, relative_to_reference, seed_overrides


def row(seed, attack, defence, asr=None, clean=0.0, attackers="20%"):
    return {"seed": seed, "attack": attack, "attackers": attackers, "defence": defence,
            "attack_success_rate": asr, "clean_vs_fedavg": clean}


def grid(fedavg_asr, median_asr, median_clean):
    rows = []
    for seed, (fa, ma, mc) in enumerate(zip(fedavg_asr, median_asr, median_clean)):
        rows += [row(seed, "backdoor", "fedavg", fa, 0.0), row(seed, "backdoor", "median", ma, mc)]
    return rows


def test_a_defence_holds_only_when_every_seed_agrees():
    out = holds_at_20pct(grid([1.0, 0.9, 1.0], [0.0, 0.05, 0.0], [0.01, 0.015, -0.003]))
    assert out["holds"] == ["median (backdoor)"]
    cell = out["per_defence"]["median (backdoor)"]
    assert cell["status"] == "met" and cell["asr_max"] == 0.05
    lo, hi = cell["clean_ci95"]  # mean 0.00733, sd 0.00929: half-width 4.3027 * sd / sqrt(3)
    assert abs((hi - lo) / 2 - 4.302653 * 0.0092916 / 3**0.5) < 1e-5


def test_one_seed_over_the_clean_margin_or_the_asr_bound_is_not_met():
    over_margin = holds_at_20pct(grid([1.0] * 3, [0.0] * 3, [0.01, 0.025, 0.0]))
    assert over_margin["holds"] == []
    assert over_margin["per_defence"]["median (backdoor)"]["status"] == "not separable"
    leaky = holds_at_20pct(grid([1.0] * 3, [0.0, 0.1, 0.0], [0.0] * 3))
    assert leaky["per_defence"]["median (backdoor)"]["status"] == "missed"


def test_fewer_than_three_seeds_or_an_attack_that_does_not_land_earn_no_credit():
    two = holds_at_20pct(grid([1.0] * 2, [0.0] * 2, [0.0] * 2))
    assert two["per_defence"]["median (backdoor)"]["status"].startswith("not established")
    no_attack = holds_at_20pct(grid([1.0, 0.0, 1.0], [0.0] * 3, [0.0] * 3))
    assert no_attack["holds"] == []
    assert "does not land" in no_attack["per_defence"]["median (backdoor)"]["status"]


def test_each_seed_is_measured_against_its_own_no_attack_reference():
    def cell(seed, attack, defence, losses):
        return {"seed": seed, "attack": attack, "defence": defence,
                "per_client": {c: {"eval_loss": v, "tokens": 10} for c, v in losses.items()}}
    rows = [cell(0, "none", "fedavg", {"a": 2.0, "b": 2.0}), cell(1, "none", "fedavg", {"a": 4.0, "b": 4.0}),
            cell(0, "backdoor", "median", {"a": 2.2}), cell(1, "backdoor", "median", {"a": 4.2, "b": 4.2})]
    relative_to_reference(rows)
    assert abs(rows[2]["clean_vs_fedavg"] - 0.1) < 1e-12  # 2.2 / 2.0 - 1, client b left out
    assert abs(rows[3]["clean_vs_fedavg"] - 0.05) < 1e-12  # 4.2 / 4.0 - 1


def test_a_seed_sets_every_random_source_of_a_cell():
    assert seed_overrides(3) == ["data.seed=3", "model.seed=3", "federation.seed=3", "attack.seed=3"]

"""The report's privacy section: epsilon next to exposure and MIA AUC."""

from fedlm.report.privacy import privacy_section


def _table(header, rows):
    return "|".join(header) + "\n" + "\n".join("|".join(str(c) for c in r) for r in rows)


def _plot(title, ylabel, series):
    return f"plot:{title}:{series['epsilon'][1]}"


def test_nothing_without_privacy_or_audit():
    assert privacy_section({"privacy": None}, [], table=_table, line_plot=_plot) == ""


def test_epsilon_exposure_auc_and_the_epsilon_curve():
    summary = {
        "privacy": {"epsilon": 2.5, "delta": 1e-5, "accountant": "rdp", "level": "client",
                    "noise_multiplier": 1.1, "epsilon_by_accountant": {"rdp": 2.5, "pld": 2.1}},
        "audit": {"exposure_mean": 1.25, "exposure_max": 3.5, "exposure_ceiling": 9.97, "mia_auc": 0.51},
    }
    rounds = [{"round": 1, "privacy": {"epsilon": 1.0}}, {"round": 2, "privacy": {"epsilon": 2.5}}]
    html = privacy_section(summary, rounds, table=_table, line_plot=_plot)
    assert "epsilon (at delta)|2.5 at delta=1e-05" in html
    assert "epsilon by pld|2.1" in html
    assert "canary exposure mean / max (bits)|1.250 / 3.500 of 9.97" in html
    assert "membership inference AUC (loss)|0.5100" in html
    assert "plot:Privacy spent:[1.0, 2.5]" in html

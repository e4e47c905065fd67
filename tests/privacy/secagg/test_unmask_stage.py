"""UnmaskStage keeps every refusal in the round's ``rejected``, aborted rounds included."""

from types import SimpleNamespace

from fedlm.privacy.secagg.stages import SecAggRound, UnmaskStage
from fedlm.stages import CohortValue, RoundPlan


def _plan(session) -> RoundPlan:
    plan = RoundPlan(round=1, cohort=("a", "b", "c"), lr=0.1, local_steps=1, seed=0)
    return plan.with_fields(SecAggRound(session))


def test_a_round_aborted_in_the_key_phases_still_reports_who_was_refused():
    # The server refused c's replayed keys, then gave up: too few clients were left.
    session = SimpleNamespace(stats={"aborted": "too_few_clients", "rejected": [("c", "replay")]})
    earlier = {"client_id": "b", "reason": "non_finite", "detail": "NaN in the update"}
    value = CohortValue(updates=[], rejected=[earlier])
    _, out, figures = UnmaskStage(shapes={"w": (2,)}).apply(None, value, _plan(session))
    assert out.skipped == "secagg_aborted" and out.updates == []
    assert out.rejected == [earlier, {"client_id": "c", "reason": "secagg_replay",
                                      "detail": "message refused by the SecAgg+ server"}]
    assert figures["aborted"] is True

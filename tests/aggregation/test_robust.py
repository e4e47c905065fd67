"""Robust aggregators against hand-computed results on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from fedlm.aggregation import robust
from fedlm.errors import ConfigError, DataError, ProtocolError


def split(v: list[float]) -> dict[str, torch.Tensor]:
    """A 3-d vector as two named tensors, to exercise flatten/unflatten."""
    t = torch.tensor(v, dtype=torch.float32)
    return {"a": t[:2].clone(), "b": t[2:].clone()}


def joined(d: dict[str, torch.Tensor]) -> list[float]:
    return torch.cat([d["a"], d["b"]]).tolist()


def close(d: dict[str, torch.Tensor], expected: list[float], tol: float = 1e-5) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(joined(d), expected, strict=True))


# Five clients, three coordinates; per coordinate, sorted:
#   c0: 0, 1, 2, 3, 10    c1: -1, 0, 2, 4, 5    c2: 0, 1, 3, 4, 5
FIVE = [[1, 2, 3], [2, 0, 1], [3, 4, 0], [10, -1, 4], [0, 5, 5]]


def test_stack_and_unstack_keep_names_shapes_dtypes() -> None:
    ups = [{"w": torch.ones(2, 2, dtype=torch.bfloat16), "b": torch.zeros(3)} for _ in range(2)]
    x, w, layout = robust.stack_updates(ups, [1, 3])
    assert x.shape == (2, 7) and x.dtype == torch.float32
    assert w.tolist() == [1.0, 3.0]
    back = robust.unstack(x[0], layout)
    assert list(back) == ["w", "b"]
    assert back["w"].dtype == torch.bfloat16 and back["w"].shape == (2, 2)


def test_stack_rejects_mismatched_updates_and_bad_weights() -> None:
    with pytest.raises(ProtocolError, match="shape"):
        robust.stack_updates([{"a": torch.zeros(2)}, {"a": torch.zeros(3)}])
    with pytest.raises(ProtocolError, match="names"):
        robust.stack_updates([{"a": torch.zeros(2)}, {"b": torch.zeros(2)}])
    with pytest.raises(DataError, match="weights"):
        robust.stack_updates([{"a": torch.zeros(2)}], [-1.0])


def test_median_odd_and_even() -> None:
    agg, diag = robust.coordinate_median([split(v) for v in FIVE])
    assert close(agg, [2, 2, 3])
    assert diag["flagged"] == []
    # First four: c0 1,2,3,10 -> 2.5; c1 -1,0,2,4 -> 1; c2 0,1,3,4 -> 2.
    agg, _ = robust.coordinate_median([split(v) for v in FIVE[:4]])
    assert close(agg, [2.5, 1, 2])


def test_trimmed_mean_hand_computed() -> None:
    # beta = 0.2, n = 5 -> k = 1: c0 mean(1,2,3)=2, c1 mean(0,2,4)=2, c2 mean(1,3,4)=8/3.
    agg, diag = robust.trimmed_mean([split(v) for v in FIVE], trim_fraction=0.2)
    assert close(agg, [2, 2, 8 / 3])
    # Client 3 is trimmed in c0 (max) and c1 (min); client 4 in all three; client 2 in c2.
    assert diag["trimmed_fraction"] == pytest.approx([0, 0, 1 / 3, 2 / 3, 1])
    assert diag["flagged"] == [3, 4]


def test_trimmed_mean_and_bulyan_ignore_one_huge_outlier() -> None:
    honest = [[1.0, 2.0, 3.0], [1.1, 2.1, 2.9], [0.9, 1.9, 3.1], [1.0, 2.2, 3.0], [1.2, 1.8, 2.8]]
    honest += [[0.8, 2.0, 3.2]]
    ups = [split(v) for v in [*honest, [1e6, -1e6, 1e6]]]
    lo = torch.tensor(honest).min(dim=0).values.tolist()
    hi = torch.tensor(honest).max(dim=0).values.tolist()
    for agg in (
        robust.trimmed_mean(ups, trim_fraction=0.15, f=1)[0],
        robust.bulyan(ups, f=1)[0],
    ):
        assert all(a <= v <= b for v, a, b in zip(joined(agg), lo, hi, strict=True))


# Krum example, f = 1, so each score sums the 5 - 1 - 2 = 2 smallest squared distances:
#   p0=(0,0,0): 1 (p1) + 2 (p3) = 3     p1=(1,0,0): 1 + 1 = 2     p2=(0,2,0): 2 + 4 = 6
#   p3=(1,1,0): 1 + 2 = 3               p4=(10,0,0): 81 + 82 = 163
KRUM = [[0, 0, 0], [1, 0, 0], [0, 2, 0], [1, 1, 0], [10, 0, 0]]


def test_krum_hand_computed() -> None:
    agg, diag = robust.krum([split(v) for v in KRUM], f=1)
    assert diag["scores"] == pytest.approx([3, 2, 6, 3, 163])
    assert diag["selected"] == [1]
    assert close(agg, [1, 0, 0])
    assert diag["flagged"] == [0, 2, 3, 4]


def test_multi_krum_hand_computed() -> None:
    ups = [split(v) for v in KRUM]
    agg, diag = robust.multi_krum(ups, f=1, m=3)  # p1, p0, p3
    assert diag["selected"] == [0, 1, 3]
    assert close(agg, [2 / 3, 1 / 3, 0])
    agg, _ = robust.multi_krum(ups, [1, 2, 1, 1, 1], f=1, m=3)  # weights 1, 2, 1
    assert close(agg, [0.75, 0.25, 0])
    agg, diag = robust.multi_krum(ups, f=1)  # m = n - f = 4: all but p4
    assert diag["flagged"] == [4]
    assert close(agg, [0.5, 0.75, 0])


def honest_and_attackers(d: int = 6) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    honest = [torch.ones(d) + 0.05 * torch.randn(d, generator=gen) for _ in range(8)]
    attackers = [torch.full((d,), 100.0), torch.full((d,), -50.0)]
    return [{"w": v} for v in honest + attackers]


def test_krum_picks_honest_and_multi_krum_excludes_attackers() -> None:
    ups = honest_and_attackers()
    agg, diag = robust.krum(ups, f=2)
    assert diag["selected"][0] < 8
    assert torch.allclose(agg["w"], torch.ones(6), atol=0.2)
    agg, diag = robust.multi_krum(ups, f=2)
    assert diag["selected"] == list(range(8))
    assert diag["flagged"] == [8, 9]
    assert torch.allclose(agg["w"], torch.stack([u["w"] for u in ups[:8]]).mean(0))


def test_bulyan_hand_computed() -> None:
    # n = 7, f = 1: recursive Krum picks 2, 3, 1, 4, 0 (theta = 5); their values
    # 0..4 have median 2 and the beta = 3 closest are 1, 2, 3 -> 2.
    ups = [{"w": torch.tensor([float(v)])} for v in [0, 1, 2, 3, 4, 5, 100]]
    agg, diag = robust.bulyan(ups, f=1)
    assert diag["selected"] == [0, 1, 2, 3, 4]
    assert diag["flagged"] == [5, 6]
    assert agg["w"].item() == pytest.approx(2.0)


def test_geometric_median_of_collinear_points() -> None:
    u = [1 / 3, 2 / 3, 2 / 3]  # unit direction
    ups = [split([t * c for c in u]) for t in [0, 1, 2, 3, 100]]
    agg, diag = robust.geometric_median(ups, tol=1e-9)
    # On a line the geometric median is the median point, t = 2.
    assert close(agg, [2 * c for c in u], tol=1e-4)
    assert diag["converged"]
    # Weight 10 on t = 100 out of 14 is more than half: the median moves there.
    agg, _ = robust.geometric_median(ups, [1, 1, 1, 1, 10], tol=1e-9)
    assert close(agg, [100 * c for c in u], tol=1e-2)


def test_geometric_median_of_square_corners_is_centre() -> None:
    ups = [split(v) for v in [[0, 0, 1], [2, 0, 1], [0, 2, 1], [2, 2, 1]]]
    agg, diag = robust.geometric_median(ups)
    assert close(agg, [1, 1, 1])
    assert diag["iterations"] >= 1


def test_geometric_median_stops_at_max_iter() -> None:
    ups = [split(v) for v in FIVE]
    _, diag = robust.geometric_median(ups, max_iter=1, tol=1e-12)
    assert diag["iterations"] == 1 and not diag["converged"]


def test_norm_bound_median_and_fixed() -> None:
    ups = [split(v) for v in [[3, 4, 0], [0, 0, 1], [0, 2, 0]]]  # norms 5, 1, 2
    # Median norm 2: (3,4,0) -> (1.2,1.6,0); weights 1,1,2 -> (1.2, 5.6, 1) / 4.
    agg, diag = robust.norm_bound(ups, [1, 1, 2])
    assert diag["bound"] == pytest.approx(2.0)
    assert diag["clipped"] == [True, False, False]
    assert close(agg, [0.3, 1.4, 0.25])
    # Bound 1: (0.6,0.8,0), (0,0,1), (0,1,0) x2 -> (0.6, 2.8, 1) / 4.
    agg, _ = robust.norm_bound(ups, [1, 1, 2], bound=1.0)
    assert close(agg, [0.15, 0.7, 0.25])


def test_norm_bound_client_side_flags_but_does_not_clip() -> None:
    ups = [split(v) for v in [[3, 4, 0], [0, 0, 1]]]
    agg, diag = robust.norm_bound(ups, bound=1.0, clip=False)
    assert close(agg, [1.5, 2.0, 0.5])
    assert diag["flagged"] == [0]


def test_fltrust_hand_computed_and_opposite_update_gets_zero_trust() -> None:
    root = split([1, 0, 0])
    ups = [split(v) for v in [[2, 0, 0], [1, 1, 0], [-3, 0, 0]]]
    agg, diag = robust.fltrust(ups, root)
    s = 1 / math.sqrt(2)
    assert diag["trust"] == pytest.approx([1, s, 0], abs=1e-6)
    assert diag["flagged"] == [2]
    # (1*(1,0,0) + s*(s,s,0)) / (1 + s) = (1.5, 0.5, 0) / (1 + s)
    assert close(agg, [1.5 / (1 + s), 0.5 / (1 + s), 0])
    # Updates are rescaled to the root's norm, so a root twice as long doubles the result.
    agg2, _ = robust.fltrust(ups, split([2, 0, 0]))
    assert close(agg2, [3 / (1 + s), 1 / (1 + s), 0])


def test_fltrust_all_untrusted_gives_zero() -> None:
    agg, diag = robust.fltrust([split([-1, 0, 0])], split([1, 0, 0]))
    assert joined(agg) == [0, 0, 0]
    assert diag["flagged"] == [0]


# FLAME example: honest along e1 with norms 1..4; two attackers along e2 and e3 (cosine
# distance 1 from everyone). The honest four are linked at distance 0, a majority of six
# (4 >= 6 // 2 + 1), so only they are kept. Median norm of all six (1..6) is 3.5, so 4 -> 3.5.
FLAME = [[1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0], [0, 5, 0], [0, 0, 6]]


def test_flame_drops_far_cluster_and_clips_hand_computed() -> None:
    ups = [split(v) for v in FLAME]
    agg, diag = robust.flame(ups, noise_lambda=0.0)
    assert diag["flagged"] == [4, 5]
    assert diag["clip_bound"] == pytest.approx(3.5)
    assert close(agg, [(1 + 2 + 3 + 3.5) / 4, 0, 0])
    agg, _ = robust.flame(ups, [1, 1, 1, 3, 1, 1], noise_lambda=0.0)
    assert close(agg, [(1 + 2 + 3 + 3 * 3.5) / 6, 0, 0])


def test_flame_noise_is_seeded_with_std_lambda_times_median_norm() -> None:
    d = 20000
    ups = [{"w": torch.full((d,), float(v))} for v in [1, 1, 1, 2, 2]]
    # All parallel, so all kept; median norm sqrt(d) clips the 2s to 1s: the mean is all ones.
    ref, _ = robust.flame(ups, noise_lambda=0.0)
    a, diag = robust.flame(ups, noise_lambda=0.01, generator=torch.Generator().manual_seed(3))
    b, _ = robust.flame(ups, noise_lambda=0.01, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a["w"], b["w"])
    assert torch.allclose(ref["w"], torch.ones(d))
    expected_std = 0.01 * math.sqrt(d)
    assert diag["noise_std"] == pytest.approx(expected_std, rel=1e-5)
    assert (a["w"] - ref["w"]).std().item() == pytest.approx(expected_std, rel=0.05)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda u: robust.krum(u[:5], f=2), r"krum needs n >= 2f\+3: got n=5, f=2; lower f"),
        (lambda u: robust.multi_krum(u[:6], f=1, m=6), r"1 <= m <= n-f"),
        (lambda u: robust.bulyan(u[:6], f=1), r"bulyan needs n >= 4f\+3: got n=6, f=1"),
        (lambda u: robust.coordinate_median(u[:3], f=2), r"median needs n >= 2f\+1"),
        (lambda u: robust.geometric_median(u[:3], f=2), r"geomed needs n >= 2f\+1"),
        (lambda u: robust.flame(u[:3], f=2), r"flame needs n >= 2f\+1"),
        (lambda u: robust.trimmed_mean(u[:5], trim_fraction=0.1, f=1), r"trims k=0 .* f=1"),
    ],
)
def test_aggregators_check_their_assumptions(call, message) -> None:
    ups = [split([float(i), 0, 0]) for i in range(8)]
    with pytest.raises(ConfigError, match=message):
        call(ups)


def test_aggregates_keep_dtype_and_device() -> None:
    ups = [{"w": torch.full((2, 2), float(i), dtype=torch.float16)} for i in range(5)]
    agg, _ = robust.coordinate_median(ups)
    assert agg["w"].dtype == torch.float16 and agg["w"].shape == (2, 2)
    assert torch.equal(agg["w"], torch.full((2, 2), 2.0, dtype=torch.float16))


def test_flame_keeps_the_first_group_to_reach_a_majority() -> None:
    # A1, A2 along e1; B at 30 degrees; C1, C2 along -e1. In order of length the links are
    # A1-A2 and C1-C2 (0: two groups of 2), then A-B (1 - cos 30 = 0.134: A1, A2, B, 3 of
    # 5, a majority), so C1, C2 are dropped although they are as tight as A1, A2.
    # Norms 1..5: median 3, nothing kept is clipped; mean = ((1,0,0) + (2,0,0) + 3 (cos 30, sin 30, 0)) / 3.
    c, s = math.cos(math.pi / 6), 0.5
    ups = [split(v) for v in [[1, 0, 0], [2, 0, 0], [3 * c, 3 * s, 0], [-4, 0, 0], [-5, 0, 0]]]
    agg, diag = robust.flame(ups, noise_lambda=0.0)
    assert diag["link_threshold"] == pytest.approx(1 - c, abs=1e-5)
    assert diag["flagged"] == [3, 4]
    assert close(agg, [(3 + 3 * c) / 3, s, 0])
    # C1 and C2 are 2 from A1, A2 and 1 + cos 30 from B; B is 1 - cos 30 from A1.
    assert diag["cosine_to_cluster"] == pytest.approx([0, 0, 1 - c, 1 + c, 1 + c], abs=1e-5)


def test_flame_drops_a_tight_minority_even_when_it_is_the_medoid() -> None:
    # The shape measured in tests/runtime/test_backdoor_run.py: the two backdoor clients
    # send nearly the same update, the three honest ones are spread out. Honest h_i =
    # e0 + e_i (pairwise cos 1/2, distance 0.5); attackers a = e0 + 2 e4, both the same
    # (distance 0 to each other, 1 - 1/sqrt(10) = 0.684 to every honest one). The attackers
    # have the least total distance (2.05 against 2.37), so a rule grown from the medoid
    # admits them; HDBSCAN with min cluster size 3 never makes a pair a cluster, and the
    # honest three become one at 0.5. Norms: sqrt 5 (attackers), sqrt 2 (honest): the
    # median sqrt 2 clips nothing kept, so the aggregate is the honest mean.
    attacker = [1.0, 0, 0, 0, 2]
    honest = [[1.0, 1, 0, 0, 0], [1.0, 0, 1, 0, 0], [1.0, 0, 0, 1, 0]]
    ups = [{"w": torch.tensor(v)} for v in [attacker, attacker, *honest]]
    agg, diag = robust.flame(ups, noise_lambda=0.0)
    assert diag["flagged"] == [0, 1]
    assert diag["link_threshold"] == pytest.approx(0.5, abs=1e-6)
    assert diag["clip_bound"] == pytest.approx(math.sqrt(2))
    assert torch.allclose(agg["w"], torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3, 0]))
    far = 1 - 1 / math.sqrt(10)
    assert diag["cosine_to_cluster"] == pytest.approx([far, far, 0.5, 0.5, 0.5], abs=1e-6)


def test_flame_does_not_link_a_minority_that_is_farther_than_the_honest_spacing() -> None:
    # Cosine distances: honest 0, 1, 2 are 0.3 apart, attackers 3, 4 are 0.2 apart and
    # 0.55 from every honest one; unit norms. Here the medoid is honest (total 1.7 against
    # 1.85), but twice the median nearest-neighbour distance (0.6) would still reach the
    # attackers. Single linkage: 0.2 links the pair (2 of 5), 0.3 the honest three (a
    # majority), which is the cluster; 0.55 is never used.
    dist = torch.full((5, 5), 0.55, dtype=torch.float64)
    dist[:3, :3], dist[3:, 3:] = 0.3, 0.2
    dist.fill_diagonal_(0.0)
    # Unit vectors with exactly these cosine distances: rows of the Cholesky factor of
    # their Gram matrix 1 - dist (positive definite here).
    vectors = torch.linalg.cholesky(1.0 - dist).to(torch.float32)
    agg, diag = robust.flame([{"w": v} for v in vectors], noise_lambda=0.0)
    assert diag["flagged"] == [3, 4]
    assert diag["link_threshold"] == pytest.approx(0.3, abs=1e-5)
    assert torch.allclose(agg["w"], vectors[:3].mean(dim=0), atol=1e-6)


def test_flame_keeps_everything_for_one_or_two_updates() -> None:
    # n // 2 + 1 is 1 and 2: a lone update, and a pair linked at its own distance (1; the
    # median norm 1.5 clips (0, 2, 0) to (0, 1.5, 0)).
    agg, diag = robust.flame([split([1, 2, 3])], noise_lambda=0.0)
    assert diag["flagged"] == [] and close(agg, [1, 2, 3])
    agg, diag = robust.flame([split([1, 0, 0]), split([0, 2, 0])], noise_lambda=0.0)
    assert diag["flagged"] == [] and diag["link_threshold"] == pytest.approx(1.0)
    assert close(agg, [0.5, 0.75, 0])

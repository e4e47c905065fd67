import hashlib
import math

import numpy as np
import pytest
import torch

from fedlm.errors import ConfigError
from fedlm.privacy.noise import (
    add_gaussian_noise,
    capped_weights,
    central_noise_std,
    client_seed,
    distributed_noise_std,
    dp_weighted_mean,
    gaussian_noise_like,
    make_generator,
    sensitivity,
)


def test_client_seed_is_a_stable_sha256_not_python_hash():
    expected = int.from_bytes(hashlib.sha256(b"dp-noise|7|hospital-3").digest()[:8], "big") >> 1
    assert client_seed(7, "hospital-3") == expected
    assert client_seed(7, "hospital-3") != client_seed(8, "hospital-3")
    assert client_seed(7, "hospital-3") != client_seed(7, "hospital-4")
    assert 0 <= client_seed(7, "x") < 2**63


def test_central_noise_on_zero_update_has_std_z_times_c():
    z, c = 1.3, 0.7
    zero = {"w": torch.zeros(100_000)}
    noised = add_gaussian_noise(
        zero, central_noise_std(z, sensitivity(c)), generator=make_generator(0)
    )
    assert noised["w"].std().item() == pytest.approx(z * c, rel=0.02)
    assert abs(noised["w"].mean().item()) < 4 * z * c / math.sqrt(100_000)


def test_sum_of_distributed_shares_has_std_z_times_c():
    z, c, k = 1.0, 0.5, 10
    std = distributed_noise_std(z, sensitivity(c), k)
    assert std == pytest.approx(z * c / math.sqrt(k))
    total = torch.zeros(100_000)
    for i in range(k):
        total += gaussian_noise_like(
            {"w": total}, std, generator=make_generator(client_seed(3, f"c{i}"))
        )["w"]
    assert total.std().item() == pytest.approx(z * c, rel=0.02)


def test_min_honest_fraction_scales_shares_so_honest_part_alone_suffices():
    # z=1, S=1, k=4, f=1/2: each share has variance 1/(4*0.5) -> std 1/sqrt(2)
    assert distributed_noise_std(1.0, 1.0, 4, min_honest_fraction=0.5) == pytest.approx(
        1 / math.sqrt(2)
    )
    # Two honest shares of that std sum to std 1 = z*S.
    assert math.sqrt(2) * distributed_noise_std(
        1.0, 1.0, 4, min_honest_fraction=0.5
    ) == pytest.approx(1.0)


@pytest.mark.parametrize("f", [0.0, 1.5])
def test_bad_min_honest_fraction_rejected(f):
    with pytest.raises(ConfigError, match="min_honest_fraction"):
        distributed_noise_std(1.0, 1.0, 4, min_honest_fraction=f)


def test_same_seed_same_noise_regardless_of_dict_order():
    a = {"x": torch.zeros(3), "y": torch.zeros(2, 2)}
    b = {"y": torch.zeros(2, 2), "x": torch.zeros(3)}
    na = gaussian_noise_like(a, 1.0, generator=make_generator(5))
    nb = gaussian_noise_like(b, 1.0, generator=make_generator(5))
    assert torch.equal(na["x"], nb["x"]) and torch.equal(na["y"], nb["y"])
    nc = gaussian_noise_like(a, 1.0, generator=make_generator(6))
    assert not torch.equal(na["x"], nc["x"])


def test_noise_keeps_dtype_and_does_not_modify_input():
    t = {"w": torch.zeros(4, dtype=torch.bfloat16)}
    out = add_gaussian_noise(t, 1.0, generator=make_generator(0))
    assert out["w"].dtype == torch.bfloat16
    assert torch.count_nonzero(t["w"]) == 0


def test_sensitivity_uniform_and_capped():
    assert sensitivity(0.5) == 0.5
    assert sensitivity(0.5, weighting="capped", max_weight=100) == 50.0
    with pytest.raises(ConfigError, match="max_weight"):
        sensitivity(0.5, weighting="capped")
    with pytest.raises(ConfigError, match="weighting"):
        sensitivity(0.5, weighting="examples")


def test_capped_weights():
    assert capped_weights([1, 50, 500], 100) == [1.0, 50.0, 100.0]
    with pytest.raises(ConfigError):
        capped_weights([1], 0)


@pytest.mark.parametrize("z", [0.0, -1.0, float("nan")])
def test_nonpositive_noise_multiplier_rejected(z):
    with pytest.raises(ConfigError, match="noise_multiplier"):
        central_noise_std(z, 1.0)


def test_dp_weighted_mean_hand_worked():
    u1 = {"w": torch.tensor([0.6, 0.8])}
    u2 = {"w": torch.tensor([0.0, 0.5])}
    # Uniform: (u1 + u2) / D with D = 4 expected clients; noise negligible at z = 1e-9.
    out = dp_weighted_mean(
        [u1, u2],
        [1.0, 1.0],
        clip_norm=1.0,
        noise_multiplier=1e-9,
        denominator=4,
        generator=make_generator(0),
    )
    assert torch.allclose(out["w"], torch.tensor([0.15, 0.325]), atol=1e-6)
    # Capped weights 2 and 1 (w_max 2): (2 u1 + u2) / 6
    out = dp_weighted_mean(
        [u1, u2],
        [2.0, 1.0],
        clip_norm=1.0,
        noise_multiplier=1e-9,
        denominator=6,
        max_weight=2.0,
        generator=make_generator(0),
    )
    assert torch.allclose(out["w"], torch.tensor([0.2, 2.1 / 6]), atol=1e-6)


def test_dp_weighted_mean_noise_std_is_z_c_wmax_over_d():
    zero = {"w": torch.zeros(100_000)}
    out = dp_weighted_mean(
        [zero],
        [3.0],
        clip_norm=0.5,
        noise_multiplier=2.0,
        denominator=10,
        max_weight=3.0,
        generator=make_generator(1),
    )
    assert out["w"].std().item() == pytest.approx(2.0 * 0.5 * 3.0 / 10, rel=0.02)


def test_dp_weighted_mean_rejects_what_would_void_the_bound():
    big = {"w": torch.tensor([3.0, 4.0])}
    ok = {"w": torch.tensor([0.0, 1.0])}
    g = make_generator(0)
    with pytest.raises(ConfigError, match="clip_update"):
        dp_weighted_mean(
            [big], [1.0], clip_norm=1.0, noise_multiplier=1.0, denominator=1, generator=g
        )
    with pytest.raises(ConfigError, match="max_weight"):
        dp_weighted_mean(
            [ok], [2.0], clip_norm=1.0, noise_multiplier=1.0, denominator=1, generator=g
        )
    with pytest.raises(ConfigError, match="denominator"):
        dp_weighted_mean(
            [ok], [1.0], clip_norm=1.0, noise_multiplier=1.0, denominator=0, generator=g
        )


@pytest.mark.parametrize(("codec", "scale"), [("int8", 0.01), ("int4", 0.02), ("fp16", None), ("fp32", None)])
def test_after_encoding_every_clients_vector_is_within_the_accounted_bound(codec, scale):
    # Central DP under SecAgg+: no server re-clip follows the codec and SecAgg+'s rounding,
    # so the sensitivity the noise covers is the post-encoding bound C + margin.
    from fedlm.compression.codecs import CODECS
    from fedlm.config import load_config
    from fedlm.privacy.plan import plan_dp
    from fedlm.privacy.secagg.quantize import dequantize, quantize

    c, dim, clip_range = 0.05, 4096, 0.02
    params = {"compression.upload_params": f'{{"fixed_scale": {scale}}}'} if scale else {}
    cfg = load_config(None, [f"{k}={v}" for k, v in {
        "privacy.enabled": "true", "privacy.noise_multiplier": 1.0, "privacy.clip_norm": c, "privacy.delta": 1e-3,
        "secure_aggregation.enabled": "true", "secure_aggregation.bits": 12, "secure_aggregation.clip_range": clip_range,
        "federation.weighting": "uniform", "compression.upload": codec, **params}.items()])
    plan = plan_dp(cfg, population=100, cohort_size=4, dim=dim)
    assert plan.sensitivity == pytest.approx(c + plan.margin) and plan.margin > 0
    enc = CODECS.create(codec, **({"fixed_scale": scale} if scale else {}))
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    worst = 0.0
    for trial in range(40):
        # Clipped to exactly C; half the trials spread the norm evenly (every coordinate rounds).
        x = rng.normal(size=dim) if trial % 2 else np.sign(rng.normal(size=dim))
        x = (x * c / np.linalg.norm(x)).astype(np.float32)
        decoded = enc.decode(enc.encode({"w": torch.from_numpy(x)}, generator=gen))["w"].numpy()
        levels = quantize(decoded, bits=12, clip=clip_range, rng=rng)  # SecAgg+'s own rounding
        summed = dequantize(levels, bits=12, clip=clip_range)  # what enters the secure sum
        worst = max(worst, float(np.linalg.norm(summed)))
    assert worst <= plan.sensitivity
    assert worst > c  # encoding does grow the norm: C alone would not be a bound

"""The rule the tests hold a forward to where torch's own low-precision CPU kernels are the comparison: within ``ulps``
units in the last place, counted as representable values of the dtype between the two (so a step across a power of
two or across +-0 counts as one), NaN exactly where the expected value is NaN, +-inf exactly where it is +-inf.

Bit equality with torch's fp16/bf16 CPU kernels cannot be asked for: which loop torch runs depends on the CPU (on an
AVX-512 AMD EPYC, torch 2.14.1's fp16 GELU is not fp32-then-round: 257 of 4097 values differ by one unit)."""

import torch

_INT = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
        torch.float64: torch.int64}


def ordinal(x: torch.Tensor) -> torch.Tensor:
    """The rank of each value among the dtype's representable values (int64; +0 and -0 both 0): consecutive floats
    have consecutive ranks."""
    bits = x.view(_INT[x.dtype]).to(torch.int64)
    magnitude = bits & torch.iinfo(_INT[x.dtype]).max
    return torch.where(bits < 0, -magnitude, magnitude)


def ulp_distance(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """|ordinal(actual) - ordinal(expected)|: how many representable values apart (int64)."""
    return (ordinal(actual) - ordinal(expected)).abs()


def assert_within_ulp(actual: torch.Tensor, expected: torch.Tensor, ulps: int = 1) -> None:
    """Same dtype and shape; NaN and +-inf exactly where ``expected`` has them; finite values at most ``ulps``
    representable values apart."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual.dtype, expected.dtype,
                                                                               actual.shape, expected.shape)
    assert torch.equal(actual.isnan(), expected.isnan()), "NaN in different places"
    inf = expected.isinf()
    assert torch.equal(actual.isinf(), inf) and torch.equal(actual[inf], expected[inf]), "+-inf in different places"
    finite = expected.isfinite()
    if not finite.any():
        return
    distance = ulp_distance(actual[finite], expected[finite])
    worst = int(distance.argmax())
    assert distance[worst] <= ulps, (f"{int((distance > ulps).sum())} of {distance.numel()} values more than {ulps} "
                                     f"ulp apart; worst {distance[worst]} ulp: {actual[finite][worst].item()!r} vs "
                                     f"{expected[finite][worst].item()!r}")

"""The official LowMemoryBP (``lomem``) ReGELU2 / ReSiLU2 constants, for comparison only."""

from __future__ import annotations

OFFICIAL: dict[str, dict[str, tuple[float, ...]]] = {
    "gelu": {
        "a": (-0.04922261145617846, 1.0979632065417297, -0.048740595085551286),
        "c": (-3.1858810036855245, -0.001178821281161997, 3.190832613414926),
    },
    "silu": {
        "a": (-0.04060357190528599, 1.080925428529668, -0.040321856624382146),
        "c": (-6.3050461001646445, -0.0008684942046214787, 6.325815242089708),
    },
}

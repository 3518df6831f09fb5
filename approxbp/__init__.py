"""approxbp: Approx-BP and MS-BP for memory-efficient fine-tuning (Yang et al., ICML 2024)."""

__version__ = "0.1.0"

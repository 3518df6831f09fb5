"""Autograd ops of Approx-BP and MS-BP (Triton on CUDA, an exact pure-PyTorch reference on CPU)."""

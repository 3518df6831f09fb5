"""Thin nn.Module layers over ``approxbp.ops``."""

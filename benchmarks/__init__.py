"""Benchmarks: ``python -m benchmarks.run`` (kernels and training on CUDA or CPU, results under ``results/``) and the
scripts ``bench_fit.py`` and ``minilm_grad_error.py`` (results under ``data/``)."""

"""approxbp's Triton kernels, installed as ``approxbp.kernels`` (``pyproject.toml`` maps this folder there).

Run from the repository root, this folder would also shadow any top-level package named ``kernels`` (PyPI has one,
and bitsandbytes imports it).  Imported under that top-level name, it steps aside: the import resolves to the
``kernels`` found on ``sys.path`` without the repository root; where there is none it stays this empty module
(no names, so ``from kernels import get_kernel`` fails with ImportError as it would without the folder).  It must not
raise on import: transformers' availability check imports a ``kernels`` that has no package metadata, and an error
there would break importing transformers' models from the repository root."""

if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is not None and _spec.loader is not None:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds after this file ran
        _spec.loader.exec_module(_module)
    del importlib, os, sys, _root, _path, _spec

"""Without a GPU the Triton kernels run through Triton's interpreter.  TRITON_INTERPRET must be set before triton is
first imported anywhere (triton 3.8 builds its standard library as compiled or interpreted functions at import, and
transformers/peft may import triton during collection), so it is set here, in the first conftest pytest loads."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

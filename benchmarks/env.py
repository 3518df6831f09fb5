"""The machine and software a benchmark ran on: device name and CUDA capability, CPU model, library versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("torch", "triton", "transformers", "peft", "liger-kernel", "approxbp")
ROOT = Path(__file__).resolve().parents[1]


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return run.stdout if run.returncode == 0 else None


def git_state() -> dict:
    """The commit, and the files of the package that differ from it (the code that ran is then not the commit's)."""
    commit = _git("rev-parse", "HEAD")
    changed = _git("status", "--porcelain", "--", "approxbp", "kernels", "benchmarks")
    return {"commit": commit.strip() if commit else None,
            "uncommitted_files": None if changed is None else [line[3:] for line in changed.splitlines()]}


def environment(device: str) -> dict:
    """Everything that identifies the run's hardware and software."""
    import torch

    info = {"device": device, "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), "git": git_state(),
            "versions": {name: package_version(name) for name in PACKAGES}}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=torch.cuda.get_device_name(0),
                    cuda_capability=list(torch.cuda.get_device_capability(0)), device_memory_bytes=props.total_memory,
                    cuda_runtime=torch.version.cuda)
    else:
        info.update(device_name=f"CPU: {info['cpu']}", cuda_capability=None)
    return info

"""The machine a benchmark ran on, written beside every result (CPU flags, cores, versions)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


# The flags that decide MAX's and PyTorch's CPU kernels: vector width, dot-product and 16-bit units.
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def cpu() -> str:
    """The CPU's model name and which of `FLAGS` it has, e.g. 'AMD EPYC (avx2, fma)' on a Zen 3."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return name + " (" + ", ".join(f for f in FLAGS if f in flags) + ")"


def machine() -> dict:
    from importlib.metadata import version

    import torch

    b = torch.backends  # the numeric mode PyTorch's float32 side ran in (cuDNN convs default to TF32)
    fp32 = {"cuda matmul": b.cuda.matmul.fp32_precision, "cudnn conv": b.cudnn.conv.fp32_precision,
            "cpu matmul": b.mkldnn.matmul.fp32_precision, "cpu conv": b.mkldnn.conv.fp32_precision}
    return dict(cpu=cpu(), cores=os.cpu_count(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
                torch_fp32_precision=fp32, max=version("max"), python=platform.python_version())

"""The machine a benchmark ran on, written beside every result (CPU flags, cores, versions)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> dict:
    from importlib.metadata import version

    import torch

    cpu = ""
    if Path("/proc/cpuinfo").exists():
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                    if line.startswith("model name")), "")
        flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                      if line.startswith("flags")), [])
        cpu += " (" + ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags) + ")"
    b = torch.backends  # the numeric mode PyTorch's float32 side ran in (cuDNN convs default to TF32)
    fp32 = {"cuda matmul": b.cuda.matmul.fp32_precision, "cudnn conv": b.cudnn.conv.fp32_precision,
            "cpu matmul": b.mkldnn.matmul.fp32_precision, "cpu conv": b.mkldnn.conv.fp32_precision}
    return dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
                torch_fp32_precision=fp32, max=version("max"), python=platform.python_version())

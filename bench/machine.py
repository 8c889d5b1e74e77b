"""The machine a benchmark ran on: the CPU's model name and the flags that change its speed."""

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_line() -> str:
    model, flags = platform.processor() or platform.machine(), set[str]()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    present = [flag for flag in FLAGS if flag in flags] or ["none of " + ", ".join(FLAGS)]
    return f"{model}, {os.cpu_count()} cores; {' '.join(present)}"

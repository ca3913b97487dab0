"""Model FLOP utilisation: dense peak FLOP/s per device and the MFU formula.

MFU = achieved model FLOP/s / peak FLOP/s, where achieved model FLOP/s counts the
model's exact training FLOPs per token (`workloads.model.training_flops_per_token`)
times tokens processed per second: recomputation (activation checkpointing) is
not credited, as in the PaLM paper's definition.
"""

from __future__ import annotations

import time

import torch

# Dense (no sparsity) tensor-core peaks in FLOP/s from the vendors' data sheets.
# Keys are matched as substrings of torch.cuda.get_device_name(), most specific first.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989e12, "fp32": 67e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp32": 51e12}),
    ("H100 NVL", {"bf16": 835e12, "fp32": 60e12}),
    ("H100", {"bf16": 989e12, "fp32": 67e12}),  # SXM
    ("GH200", {"bf16": 989e12, "fp32": 67e12}),
    ("B200", {"bf16": 2250e12, "fp32": 80e12}),
    ("A100", {"bf16": 312e12, "fp32": 19.5e12}),
    ("A10G", {"bf16": 70e12, "fp32": 31.2e12}),
    ("L40S", {"bf16": 362e12, "fp32": 91.6e12}),
    ("L4", {"bf16": 121e12, "fp32": 30.3e12}),
    ("V100", {"bf16": 125e12, "fp32": 15.7e12}),  # fp16 tensor cores; V100 has no bf16
]


def lookup_peak_flops(device_name: str, dtype: str) -> float | None:
    for key, peaks in PEAK_FLOPS:
        if key in device_name:
            return peaks[dtype]
    return None


def measure_matmul_flops(threads: int | None = None, size: int = 512, seconds: float = 0.3, burst: int = 4) -> float:
    """Sustained fp32 GEMM FLOP/s of this CPU process: the CPU's practical peak.

    The best rate over short bursts of `burst` GEMMs: the measurement runs while the
    worker starts, beside Ray's own processes, and an average over the whole window
    counted their CPU time too; a low peak then showed MFU above 100%.
    """
    if threads:
        torch.set_num_threads(threads)
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)  # warm the kernels and caches
    best = 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        burst_start = time.perf_counter()
        for _ in range(burst):
            torch.mm(a, b)
        best = max(best, 2 * size**3 * burst / (time.perf_counter() - burst_start))
    return best


def device_peak_flops(on_gpu: bool, bf16: bool, override: float = 0.0) -> tuple[float, str]:
    """Peak FLOP/s of one device and where the number came from."""
    if override > 0:
        return override, "config"
    if on_gpu:
        name = torch.cuda.get_device_name()
        peak = lookup_peak_flops(name, "bf16" if bf16 else "fp32")
        if peak is not None:
            return peak, name
        return measure_matmul_gpu(bf16), f"{name} (measured)"
    return measure_matmul_flops(), "cpu (measured fp32 matmul)"


def measure_matmul_gpu(bf16: bool, size: int = 8192, repeats: int = 20) -> float:
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    torch.mm(a, b)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def mfu(flops_per_token: float, tokens_per_second: float, peak_flops_per_device: float, devices: int) -> float:
    return flops_per_token * tokens_per_second / (peak_flops_per_device * devices)

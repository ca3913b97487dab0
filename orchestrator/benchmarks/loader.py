"""The loader section: `PackedDataset.get` on shuffled micro-batches against a plain copy of as many bytes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.benchmarks.harness import THROUGHPUT_RECIPE, say
from orchestrator.stages.pretrain import PRETRAIN
from workloads.data.loader import PackedDataset
from workloads.data.order import global_batch_indices

# Micro-batches per loader pass: 2,048 x 16 samples x 257 tokens x 2 columns x 4 bytes = 67 MB for the
# default recipe, twice the last-level cache of the machine this bench is calibrated for.
LOADER_MICRO_BATCHES = 2048


def _repeat_for(seconds: float, fn, *args) -> tuple[int, float]:
    """Call fn(*args) until `seconds` have passed (at least once); returns (calls, elapsed)."""
    calls = 0
    started = time.perf_counter()
    while True:
        fn(*args)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls, elapsed


def measure_loader(
    dataset_dir: Path,
    micro_batch_size: int,
    seed: int = 0,
    seconds: float = 1.0,
    micro_batches: int = LOADER_MICRO_BATCHES,
) -> dict[str, Any]:
    """Micro-batches/s and bytes/s of `PackedDataset.get` on shuffled micro-batches, as the worker reads them.

    A pass reads `micro_batches` consecutive micro-batches of the sample stream (tens of
    MB, more than the caches hold, so the rows come from memory as in a running job);
    passes repeat for `seconds`.
    """
    train = PackedDataset(dataset_dir, "train")
    stream = [global_batch_indices(train.num_samples, micro_batch_size, k, seed) for k in range(micro_batches)]

    def read_pass() -> None:
        for indices in stream:
            train.get(indices)

    read_pass()  # page the samples in: the measured reads are warm, as in a running job
    passes, elapsed = _repeat_for(seconds, read_pass)
    tokens, segments = train.get(stream[0])
    bytes_per_batch = tokens.nbytes + segments.nbytes  # (b, seq_len+1) int32, twice
    return {
        "micro_batch_size": micro_batch_size,
        "bytes_per_micro_batch": bytes_per_batch,
        "micro_batches_per_pass": micro_batches,
        "bytes_per_pass": micro_batches * bytes_per_batch,
        "micro_batches_per_s": passes * micro_batches / elapsed,
        "bytes_per_s": passes * micro_batches * bytes_per_batch / elapsed,
    }


def measure_memcpy(num_bytes: int, seconds: float = 1.0) -> float:
    """Bytes/s of copying a num_bytes buffer into another, once per repetition.

    Sized as one loader pass, so that the copy too streams through memory rather than
    cache. The destination is allocated once: the loader's small outputs come from the
    allocator's free lists, without the page faults a fresh buffer of tens of MB takes.
    """
    source = np.random.default_rng(0).integers(0, 256, size=num_bytes, dtype=np.uint8)
    destination = np.empty_like(source)
    np.copyto(destination, source)  # fault the destination's pages in before timing
    copies, elapsed = _repeat_for(seconds, np.copyto, destination, source)
    return copies * num_bytes / elapsed


def run(bench) -> None:
    """The loader section: loader_vs_memcpy (loader_vs_consumption follows from the throughput section)."""
    say(f"loader: PackedDataset.get of {LOADER_MICRO_BATCHES} shuffled micro-batches vs a numpy copy of as many bytes")
    micro = PRETRAIN.parse(["--config", THROUGHPUT_RECIPE]).train.micro_batch_size
    loader = measure_loader(bench.dataset(), micro)
    loader["memcpy_bytes_per_s"] = measure_memcpy(loader["bytes_per_pass"])
    bench.report["loader_vs_memcpy"] = loader["bytes_per_s"] / loader["memcpy_bytes_per_s"]
    bench.details["loader"] = loader
    say(
        f"loader: {loader['micro_batches_per_s']:,.0f} micro-batches/s, {loader['bytes_per_s'] / 1e9:.2f} GB/s "
        f"vs copy {loader['memcpy_bytes_per_s'] / 1e9:.2f} GB/s of {loader['bytes_per_pass'] / 1e6:.0f} MB: "
        f"ratio {bench.report['loader_vs_memcpy']:.3f}"
    )

"""The bench's prepare section: `python -m orchestrator.prepare` on a corpus and on one 10 times larger.

  prepare_driver_rss_growth  peak resident memory of the prepare process itself (not Ray's processes)
                             on the 10x corpus / on the 1x corpus
  prepare_vs_single_core     prepare's tokens/s over its tokenization phase, after the first 10% of the
                             input, on the 10x corpus / (cores x one process's sentencepiece encode of the
                             same text with the same tokenizer)

The 1x corpus is the embedded one (this Python's standard library, about 12 MB) copied
as .txt files; the 10x corpus is ten copies of it side by side (about 120 MB). Each
prepare is a fresh process with its own fresh local Ray, preparing from nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.benchmarks.harness import say, stop_ray
from workloads.data.config import EMBEDDED_CORPUS, DataConfig
from workloads.data.corpus import find_sources, read_corpus
from workloads.tokenizer import Tokenizer

SCALE = 10
# A child process that runs the prepare CLI and reports its own peak resident memory.
_MEASURED_PREPARE = (
    "import resource, runpy, sys\n"
    "sys.argv = ['orchestrator.prepare'] + sys.argv[1:]\n"
    "code = 0\n"
    "try:\n"
    "    runpy.run_module('orchestrator.prepare', run_name='__main__')\n"
    "except SystemExit as e:\n"
    "    code = e.code or 0\n"
    "print(f'PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', flush=True)\n"
    "sys.exit(code)\n"
)
_PROGRESS = re.compile(r"prepare: (\d+)/(\d+) groups, ([\d.]+)/([\d.]+) MB .*?, ([\d,]+) tokens, .* in ([\d.]+) s")


def build_corpora(workdir: Path) -> tuple[Path, Path]:
    """(1x corpus, 10x corpus) under workdir, made from the embedded corpus (kept between runs)."""
    one, many = workdir / "corpus-1x", workdir / f"corpus-{SCALE}x"
    if not (one / "done").exists():
        shutil.rmtree(one, ignore_errors=True)
        one.mkdir(parents=True)
        for i, source in enumerate(find_sources(EMBEDDED_CORPUS)):
            shutil.copyfile(source.path, one / f"{i:05d}-{source.path.stem}.txt")
        (one / "done").write_text("")
    if not (many / "done").exists():
        shutil.rmtree(many, ignore_errors=True)
        for copy in range(SCALE):
            shutil.copytree(one, many / f"copy{copy:02d}", ignore=shutil.ignore_patterns("done"))
        (many / "done").write_text("")
    return one, many


def run_prepare(corpus: Path, dataset_root: Path, say) -> dict[str, Any]:
    """One fresh `python -m orchestrator.prepare` (default recipe) on corpus: peak RSS, progress, seconds."""
    shutil.rmtree(dataset_root, ignore_errors=True)
    command = [sys.executable, "-c", _MEASURED_PREPARE, f"--data.corpus={corpus}", f"--data.dataset_dir={dataset_root}"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"prepare of {corpus} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    progress = parse_progress(result.stdout)
    peak_kb = int(re.search(r"PEAK_RSS_KB (\d+)", result.stdout)[1])
    say(f"prepare: {corpus.name}: {seconds:.1f} s, peak RSS of the prepare process {peak_kb / 1024:.0f} MiB")
    return {
        "peak_rss_mib": peak_kb / 1024,
        "wall_s": seconds,
        "progress": progress,
        "dataset_dir": next(p for p in dataset_root.iterdir() if p.is_dir()),
    }


def parse_progress(output: str) -> list[dict[str, Any]]:
    """prepare's progress lines: groups done, MB read of the total, tokens so far, seconds into the build."""
    return [
        {
            "groups": int(m[1]),
            "mb": float(m[3]),
            "total_mb": float(m[4]),
            "tokens": int(m[5].replace(",", "")),
            "s": float(m[6]),
        }
        for m in _PROGRESS.finditer(output)
    ]


def rate_after_first_tenth(progress: list[dict[str, Any]]) -> float:
    """Tokens/s between the first progress line past 10% of the input's bytes and the last line."""
    start = next(p for p in progress if p["mb"] >= 0.1 * p["total_mb"])
    end = progress[-1]
    if end["s"] <= start["s"]:
        raise RuntimeError("too few progress lines after the first 10% of the input to measure a rate")
    return (end["tokens"] - start["tokens"]) / (end["s"] - start["s"])


def single_core_rate(corpus: Path, dataset_dir: Path) -> float:
    """Tokens/s of one process encoding the 1x corpus's documents with the dataset's tokenizer, one thread."""
    data = DataConfig()  # the default recipe's reading of text files, as the prepare measured used
    documents = read_corpus(find_sources(str(corpus)), data.text_field, data.max_doc_chars).documents
    tokenizer = Tokenizer((dataset_dir / "tokenizer.model").read_bytes())
    started = time.perf_counter()
    tokens = sum(len(ids) for ids in tokenizer.encode_batch_arrays(documents))
    return tokens / (time.perf_counter() - started)


def measure_prepare(workdir: Path, cores: int, say) -> dict[str, Any]:
    one, many = build_corpora(workdir)
    say(f"prepare: the 1x corpus ({_mb(one):.0f} MB)")
    small = run_prepare(one, workdir / "prepare-1x", say)
    say(f"prepare: the {SCALE}x corpus ({_mb(many):.0f} MB)")
    large = run_prepare(many, workdir / f"prepare-{SCALE}x", say)
    rate = rate_after_first_tenth(large["progress"])
    single = single_core_rate(one, large["dataset_dir"])
    return {
        "prepare_driver_rss_growth": large["peak_rss_mib"] / small["peak_rss_mib"],
        "prepare_vs_single_core": rate / (cores * single),
        "details": {
            "corpus_mb": [_mb(one), _mb(many)],
            "peak_rss_mib": [small["peak_rss_mib"], large["peak_rss_mib"]],
            "wall_s": [small["wall_s"], large["wall_s"]],
            "groups": [small["progress"][-1]["groups"], large["progress"][-1]["groups"]],
            "tokenize_tokens_per_s_after_first_tenth": rate,
            "single_core_tokens_per_s": single,
            "cores": cores,
        },
    }


def _mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*.txt")) / 1e6


def run(bench) -> None:
    """The prepare section: driver RSS growth and tokens/s against cores x one process."""
    say(f"prepare: python -m orchestrator.prepare on the embedded corpus and on {SCALE} copies of it")
    stop_ray()  # each prepare starts its own local Ray: leave it the machine
    measured = measure_prepare(bench.workdir, os.cpu_count() or 1, say)
    bench.report["prepare_driver_rss_growth"] = measured["prepare_driver_rss_growth"]
    bench.report["prepare_vs_single_core"] = measured["prepare_vs_single_core"]
    bench.details["prepare"] = shown = measured["details"]
    say(
        f"prepare: peak RSS {shown['peak_rss_mib'][0]:.0f} -> {shown['peak_rss_mib'][1]:.0f} MiB "
        f"(ratio {bench.report['prepare_driver_rss_growth']:.3f}); "
        f"{shown['tokenize_tokens_per_s_after_first_tenth']:,.0f} tok/s on {shown['cores']} cores vs "
        f"{shown['single_core_tokens_per_s']:,.0f} tok/s on one: ratio {bench.report['prepare_vs_single_core']:.3f}"
    )

"""`python -m orchestrator.bench`: how fast, and how well, the pretrain path trains.

Each ratio compares two things measured side by side in the same run on the
same machine, so that a slow or busy machine moves both sides:

  pretrain_vs_bare_ratio  steady-state tokens/s of the real path (the default recipe with
                          --parallel.compile_blocks=true: Ray Train + DeepSpeed ZeRO 1, one worker, warm-up
                          steps, which compile, excluded) / a bare single-process PyTorch loop with the same
                          model, compiled blocks, batch, data, threads and optimizer (torch AdamW, same param
                          groups, fp32)
  pretrain_vs_gpt2_bare   steady-state tokens/s of that real path / the bare loop of the same shape, tokens and
                          threads in GPT-2's layout, as nanoGPT's train.py trains (GELU MLP, LayerNorm, learned
                          positions, attention across documents with SDPA's is_causal; no biases, fp32, eager,
                          torch AdamW): the real path keeps per-document attention, RoPE, SwiGLU and RMSNorm,
                          Ray Train and DeepSpeed, and gains torch.compile of its blocks
  loader_vs_consumption   micro-batches/s `PackedDataset.get` delivers / micro-batches/s training consumes
  loader_vs_memcpy        bytes/s `PackedDataset.get` delivers in passes over 2,048 consecutive shuffled
                          micro-batches (67 MB of int32 per pass with the default recipe) / bytes/s of a
                          numpy copy of one buffer of a pass's size into another, once per repetition
  prepare_driver_rss_growth  peak RSS of the `python -m orchestrator.prepare` process on a 10x larger corpus
                          (about 120 MB) / on the embedded corpus (orchestrator.benchmarks.preparation)
  prepare_vs_single_core  prepare's tokens/s on that 120 MB corpus after its first 10% / (cores x one process's
                          sentencepiece encode of the same text)
  first_step_s            launch of `python -m orchestrator.pretrain` (dataset prepared) to its first step line,
                          cold: a fresh process and a fresh local Ray, DeepSpeed's CPU ops already built (the
                          lower of 2 runs); the first run, which builds the ops, is reported as first_step_build_s
  generate_cache_speedup  greedy generation tokens/s with the KV cache / without it (the default recipe's model,
                          batch 8, 32-token prompts, 192 new tokens, 2 threads)
  generate_vs_transformers  the same KV-cache generation / transformers' `generate` on the model exported to it
  sweep_trial_vs_pretrain  steady-state tokens/s of a scaling-law sweep's longest trial, trained while the
                          sweep fills the machine / the same trial config run alone with `orchestrator.pretrain`
  sweep_utilization       that sweep's CPU-seconds of trial training steps / (wall x cluster CPUs)
  rl_generation_share     share of a GRPO iteration spent generating (the grpo tiny recipe, separated mode,
                          from a 30-step tiny pretrain checkpoint; iterations after the first), reported
  rl_sync_s               seconds to put the default recipe's policy weights in the object store and load them
                          into 2 rollout actors (median of 5), reported
  --quality TEXTFILE      validation bits per byte within nanoGPT's FLOP budget (orchestrator.benchmarks.quality)
  --gpu                   tokens/s, MFU and peak memory of the GPU recipes' models on one GPU, bf16

    python -m orchestrator.bench [--out bench.json] [--workdir DIR] [--quality shakespeare.txt] [--gpu]

Runs, datasets and the MLflow database go to a temporary directory unless
--workdir is given. Arguments of the form --section.field=value override the
quality recipe (for tuning it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from orchestrator.benchmarks.goals import table
from orchestrator.benchmarks.harness import say
from orchestrator.benchmarks.quality import NANOGPT_FLOPS
from orchestrator.benchmarks.runner import SECTIONS, run
from orchestrator.config.parser import run_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument(
        "--workdir", help="keep runs, datasets and the MLflow database here (default: a temporary directory)"
    )
    parser.add_argument("--steps", type=int, default=20, help="measured steps per throughput run, after warm-up")
    parser.add_argument("--quality", metavar="TEXTFILE", help="run the learning-quality check on this text file")
    parser.add_argument("--flops", type=float, default=NANOGPT_FLOPS, help="training FLOP budget of the quality check")
    parser.add_argument("--quality-recipe", default="quality", help="recipe of the quality check (name or YAML)")
    parser.add_argument("--gpu", action="store_true", help="benchmark the GPU recipes' models on one CUDA device")
    parser.add_argument("--only", help=f"comma-separated sections to run ({', '.join(SECTIONS)})")
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not re.match(r"^--\w+\.\w+=", a)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (quality overrides look like --section.field=value)")
    report = run(args, rest)
    print(table(report), flush=True)
    for warning in report["warnings"]:
        print(f"warning: {warning}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        say(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])

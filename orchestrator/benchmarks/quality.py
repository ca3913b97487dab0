"""The learning-quality check of `orchestrator.bench --quality`: nanoGPT's Shakespeare baseline.

nanoGPT's README trains a CPU "baby GPT" on tiny Shakespeare: the first 90% of
the file's characters for training, the last 10% for validation, 2000 steps of
12 x 64 characters on a 4 x 128 model. That costs 5,161,728 FLOPs per character
(`training_flops_per_token`, attention included) x 1,536,000 characters
= 7.9e12 FLOPs and reaches a validation loss of 1.8857 nats/char, which is
1.8857 / ln 2 = 2.72 bits per byte (the file is ASCII).

Here the same split trains through the real pretrain path (Ray Train +
DeepSpeed) for at most the same training FLOPs, with any tokenizer: bits per
byte does not depend on the tokenizer, so a BPE model is compared fairly with
a character model. The whole validation split is evaluated at the end.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from orchestrator.benchmarks.harness import say, start_ray, tracking_uri
from orchestrator.data.pretraining import prepare_dataset
from orchestrator.stages.pretrain import PRETRAIN, PretrainConfig
from workloads.data.loader import load_manifest
from workloads.errors import UserInputError
from workloads.model import training_flops_per_token

NANOGPT_FLOPS = 7.9e12
NANOGPT_BPB = 1.8857 / math.log(2)  # 2.7205
TRAIN_FRACTION = 0.9  # nanoGPT's split: data[:int(n * 0.9)] and data[int(n * 0.9):]
QUALITY_RECIPE = "quality"


def split_bytes(text_file: Path, out_dir: Path, train_fraction: float = TRAIN_FRACTION) -> tuple[Path, Path]:
    """Write the first `train_fraction` of the file's bytes to train.txt, the rest to val.txt.

    The cut is nanoGPT's int(n * train_fraction), moved back to the start of a
    UTF-8 character if it falls inside one; the two files together hold exactly
    the original bytes.
    """
    try:
        data = Path(text_file).read_bytes()
    except OSError as e:
        raise UserInputError(f"--quality: cannot read {text_file} ({e.strerror})") from e
    cut = int(len(data) * train_fraction)
    while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte
        cut -= 1
    if cut == 0 or cut == len(data):
        raise UserInputError(f"--quality: {text_file} is too small to split {train_fraction:.0%} / rest")
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val = out_dir / "train.txt", out_dir / "val.txt"
    train.write_bytes(data[:cut])
    val.write_bytes(data[cut:])
    return train, val


def tokens_per_step(cfg: PretrainConfig) -> int:
    return cfg.train.resolved_global_batch(cfg.data_parallel_degree()) * cfg.data.seq_len


def flops_per_step(cfg: PretrainConfig) -> int:
    return training_flops_per_token(cfg.model, cfg.data.seq_len) * tokens_per_step(cfg)


def steps_for_budget(cfg: PretrainConfig, flops: float) -> int:
    """The most optimizer steps whose training FLOPs stay within `flops`."""
    per_step = flops_per_step(cfg)
    steps = int(flops // per_step)
    if steps < 1:
        raise UserInputError(f"--flops: {flops:.3g} FLOPs buy less than one step of this recipe ({per_step:.3g} FLOPs)")
    return steps


def training_flops(cfg: PretrainConfig, steps: int) -> int:
    return flops_per_step(cfg) * steps


def run_quality(
    text_file: Path,
    workdir: Path,
    tracking_uri: str,
    flops: float = NANOGPT_FLOPS,
    recipe: str = QUALITY_RECIPE,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Train on the first 90% of text_file within `flops` training FLOPs; validate on all of the rest."""
    train_file, val_file = split_bytes(text_file, workdir / "quality-split")
    base = [
        "--config",
        recipe,
        f"--data.corpus={train_file}",
        f"--data.val_corpus={val_file}",
        f"--data.dataset_dir={workdir / 'datasets'}",
        f"--run.output_dir={workdir / 'runs'}",
        "--run.name=bench-quality",
        "--run.fresh=true",
        f"--tracking.uri={tracking_uri}",
        "--tracking.experiment=bench",
        *overrides,
    ]
    cfg = PRETRAIN.parse(base)
    steps = steps_for_budget(cfg, flops)
    dataset_dir = prepare_dataset(cfg.data, cfg.tokenizer, workdir / "datasets")
    val = load_manifest(dataset_dir)["splits"]["val"]
    # Evaluate every validation sample, once, at the end (eval also runs at max_steps).
    cfg = PRETRAIN.parse(
        base
        + [f"--train.max_steps={steps}", f"--train.eval_interval={steps}", f"--train.eval_samples={val['num_samples']}"]
    )
    started = time.perf_counter()
    final = PRETRAIN.run(cfg)
    wall = time.perf_counter() - started
    spent = training_flops(cfg, steps)
    # Samples overlap by one token, so num_samples * seq_len tokens are predicted;
    # the stream's tail shorter than one sample is not.
    predicted = val["num_samples"] * cfg.data.seq_len
    return {
        "quality_bpb": final["eval/bpb"],
        "quality_flops": spent,
        "quality_wall_s": wall,
        "details": {
            "budget_flops": flops,
            "flops_per_token": training_flops_per_token(cfg.model, cfg.data.seq_len),
            "tokens_per_step": tokens_per_step(cfg),
            "max_steps": steps,
            "tokens_trained": steps * tokens_per_step(cfg),
            "val_loss_nats_per_token": final["eval/loss"],
            "val_tokens_predicted": predicted,
            "val_tokens_in_split": val["num_tokens"] - 1,
            "val_bytes_in_split": val["num_bytes"],
            "baseline_bpb": NANOGPT_BPB,
            "recipe": recipe,
            "overrides": list(overrides),
        },
    }


def run(bench) -> None:
    """The quality section: bits per byte within nanoGPT's FLOP budget."""
    args = bench.args
    start_ray()
    say(
        f"quality: {args.quality}, first 90% of its bytes to train on, the rest to validate, "
        f"{args.flops:.3g} training FLOPs"
    )
    measured = run_quality(
        Path(args.quality),
        bench.workdir,
        tracking_uri(bench.workdir),
        args.flops,
        args.quality_recipe,
        tuple(bench.quality_overrides),
    )
    bench.report.update({k: measured[k] for k in ("quality_bpb", "quality_flops", "quality_wall_s")})
    bench.details["quality"] = measured["details"]
    say(
        f"quality: {measured['quality_bpb']:.4f} bits per byte with {measured['quality_flops']:.3g} FLOPs in "
        f"{measured['quality_wall_s']:.0f} s (nanoGPT's baby GPT: {NANOGPT_BPB:.2f})"
    )

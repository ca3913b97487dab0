"""The rl section: where a GRPO iteration's time goes, and the weight sync of the default recipe's policy."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import ray
import torch

from orchestrator.benchmarks.goals import REPORTED
from orchestrator.benchmarks.harness import THROUGHPUT_RECIPE, say, start_ray, tracking_uri
from orchestrator.stages.grpo import GRPO
from orchestrator.stages.pretrain import PRETRAIN
from workloads.metrics_log import read_metrics
from workloads.model import GPT
from workloads.rl.controller import push_weights
from workloads.rl.rollout import ActorRole, ActorSpec, RolloutWorker

RL_ITERATIONS = 6


def measure_rl(workdir: Path) -> dict[str, Any]:
    """A short GRPO run (rollout actors, rule reward, DeepSpeed learner) and a timed weight sync."""

    uri = tracking_uri(workdir)
    runs = workdir / "rl-runs"
    start = PRETRAIN.run(
        PRETRAIN.parse(
            [
                "--config",
                "tiny",
                "--run.name=bench-rl-start",
                f"--run.output_dir={runs}",
                f"--tracking.uri={uri}",
                "--train.max_steps=30",
                "--run.fresh=true",
            ]
        )
    )
    cfg = GRPO.parse(
        [
            "--config",
            "tiny",
            "--run.name=bench-grpo",
            f"--run.output_dir={runs}",
            f"--tracking.uri={uri}",
            f"--model.init_from={start['checkpoint']}",
            f"--train.max_steps={RL_ITERATIONS}",
            "--run.fresh=true",
        ],
    )
    GRPO.run(cfg)
    steady = [
        line for line in read_metrics(cfg.run.run_dir()) if line.get("step", 0) > 1 and "rl/generation_share" in line
    ]
    shares = {
        phase: statistics.mean(line[f"rl/{phase}_share"] for line in steady)
        for phase in ("sync", "generation", "scoring", "learning")
    }

    model_cfg = PRETRAIN.parse(["--config", THROUGHPUT_RECIPE]).model
    torch.manual_seed(0)
    policy = GPT(model_cfg)
    spec = ActorSpec(
        RolloutWorker,
        {"model": dataclasses.asdict(model_cfg), "sampling": {"temperature": 1.0}, "max_new_tokens": 8, "eos_id": 0},
        0.25,
    )
    role = ActorRole("rollout", spec, [spec.start() for _ in range(2)])
    try:
        ray.get([handle.pid.remote() for handle in role.handles])
        seconds = []
        for version in range(6):  # the first one warms up the actors' receiving path
            began = time.perf_counter()
            push_weights(role, policy, version)
            seconds.append(time.perf_counter() - began)
    finally:
        role.stop()
    parameters = sum(p.numel() for p in policy.parameters())
    return {
        "rl_generation_share": shares["generation"],
        "rl_sync_s": statistics.median(seconds[1:]),
        "details": {
            "grpo_iterations": RL_ITERATIONS,
            "iteration_shares": shares,
            "iteration_s": statistics.mean(line["rl/iteration_s"] for line in steady),
            "rollout_tokens_per_s": statistics.mean(line["perf/rollout_tokens_per_s"] for line in steady),
            "sync_model": f"{model_cfg.n_layers} x {model_cfg.d_model}, vocab {model_cfg.vocab_size}, "
            f"{parameters:,} parameters, 2 rollout actors",
            "sync_s": seconds[1:],
        },
    }


def run(bench) -> None:
    """The rl section: rl_generation_share and rl_sync_s (reported, no goal)."""
    start_ray()
    say(f"rl: grpo tiny recipe for {RL_ITERATIONS} iterations; weight sync of the {THROUGHPUT_RECIPE} recipe's model")
    measured = measure_rl(bench.workdir)
    bench.report.update({k: measured[k] for k in REPORTED})
    bench.details["rl"] = measured["details"]
    say(
        f"rl: generation {measured['rl_generation_share']:.1%} of an iteration; weight sync "
        f"{measured['rl_sync_s']:.3f} s"
    )

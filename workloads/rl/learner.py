"""The learner: the Ray Train worker function that runs a whole PPO or GRPO run.

One fit for the whole run. Every rank builds the same DeepSpeed engine (the policy and, for
PPO, its critic) and a frozen plain copy of the starting policy, the reference for the KL.
Rank 0 drives each iteration: it syncs the weights to the rollout workers (separated mode),
has them generate (or, colocated, every rank generates a share with its own policy and
rank 0 gathers), asks the reward scorer, and broadcasts the batch. Then every rank scores its
share of the batch without gradients (old and reference log-probs, values), computes
advantages and runs `rl.epochs` passes of minibatches over it.

An iteration is a `step` of the run: checkpoints (`save_and_report`, every
`train.checkpoint_interval` iterations and at the end) record it, and resubmitting the run
resumes after it with the KL coefficient and the bad-batch counters it had (`rl_state.json`
in the checkpoint). Prompts and sampling seeds follow from the iteration alone, so a resumed
run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from workloads.checkpoints.initialization import initial_model
from workloads.checkpoints.loading import describe_checkpoint
from workloads.checkpoints.saving import ResumePoint, TrainingState, save_and_report
from workloads.data.order import stream_indices
from workloads.generation import Sampling
from workloads.loop import Cadence, global_means
from workloads.metrics_log import METRICS_FILE, MetricsLog
from workloads.parallel.blocks import checkpoint_blocks
from workloads.parallel.engine import build_engine
from workloads.rl.algorithms import make_algorithm
from workloads.rl.batch import Rollouts, scaled_logprobs, score_rollouts
from workloads.rl.config import KLConfig, RewardConfig, RolloutConfig
from workloads.rl.controller import Controller, rollout_seed
from workloads.rl.models import POLICY_PREFIX, PolicyCritic
from workloads.rl.objectives import KLController, masked_mean
from workloads.rl.prompts import TOKENIZER_FILE, PromptSet
from workloads.rl.rollout import sample_rollouts
from workloads.stages.base import WorkerPlan
from workloads.tokenizer import Tokenizer

STATE_FILE = "rl_state.json"  # in every checkpoint: what the loop needs besides the engine to resume
STOP_FILE = "rl_stopped.json"  # in the run directory: why bad rewards stopped the run (read by the driver)
SAMPLES_FILE = "rl_samples.jsonl"  # in the run directory: a few rollouts per iteration (an MLflow table at the end)


@dataclasses.dataclass
class LoopState:
    """What the loop carries from iteration to iteration besides the engine (saved in every checkpoint)."""

    kl_coef: float
    bad_in_a_row: int = 0
    skipped_batches: int = 0
    replacements: int = 0


def learner_worker(payload: dict[str, Any]) -> None:
    """Ray Train entry point (`TorchTrainer(train_loop_per_worker=learner_worker)`) of PPO and GRPO."""
    plan = WorkerPlan.from_payload(payload)
    Learner(plan, payload.get("checkpoint_steps", ())).run()


class Learner:
    def __init__(self, plan: WorkerPlan, checkpoint_steps):
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.on_gpu = torch.cuda.is_available() and ray.train.torch.get_device().type == "cuda"
        self.device = ray.train.torch.get_device() if self.on_gpu else torch.device("cpu")
        torch.set_num_threads(plan.threads_per_worker)
        self.plan = plan
        self.is_chief = self.rank == 0
        self.extra_checkpoints = frozenset(checkpoint_steps)
        options = plan.options
        self.rl = RolloutConfig(**options["rl"])
        self.reward = RewardConfig(**options["reward"])
        self.kl = KLConfig(**options["kl"])
        self.algorithm = make_algorithm(plan.stage, options)
        # Only prompts that leave room for a whole response (the driver said how many are left out).
        self.prompts = PromptSet.load(plan.dataset_dir).fitting(plan.model.max_seq_len - self.rl.max_new_tokens)
        self.tokenizer = Tokenizer.load(Path(plan.dataset_dir) / TOKENIZER_FILE)
        self.eos_id = self.tokenizer.eos_id
        self.rows = self.rl.prompts_per_iteration * self.algorithm.group_size  # sequences per iteration
        self.colocated = self.rl.mode == "colocated"
        self.controller = Controller(options["actors"], self.rl.seed) if self.is_chief else None
        self.bf16 = plan.deepspeed.uses_bf16(self.on_gpu)

    # -- set-up ---------------------------------------------------------------------
    def build(self) -> None:
        plan = self.plan
        policy = initial_model(plan.model, plan.train.seed)
        # The frozen reference: a plain copy of the starting policy on every rank (whole, never sharded).
        self.reference = copy.deepcopy(policy).to(self.device).eval().requires_grad_(False)
        critic = self.algorithm.build_critic(plan.model, plan.train.seed)
        if plan.parallel.activation_checkpointing:
            checkpoint_blocks(policy)
            if critic is not None:
                checkpoint_blocks(critic.backbone)
        module = PolicyCritic(policy, critic)

        # A minibatch is one optimizer step; the schedule counts optimizer steps, train.* counts iterations.
        self.share = self.rl.minibatch_size // self.world  # each rank's sequences of a minibatch
        steps_per_iteration = self.rl.epochs * self.rows // self.rl.minibatch_size
        engine_train = dataclasses.replace(
            plan.train,
            global_batch_size=0,
            grad_accum_steps=self.share // plan.train.micro_batch_size,
            max_steps=plan.train.max_steps * steps_per_iteration,
            warmup_steps=plan.train.warmup_steps * steps_per_iteration,
        )

        resume = ResumePoint.find(self.world, 1)
        self.engine = build_engine(
            module, plan.deepspeed, engine_train, self.world, self.on_gpu, resume.engine_overrides()
        )
        resume.restore(self.engine, plan.run_dir, self.rank)
        self.state = LoopState(kl_coef=self.kl.coef)
        if resume.saved:
            with ray.train.get_checkpoint().as_directory() as directory:
                self.state = LoopState(**json.loads((Path(directory) / STATE_FILE).read_text()))
        self.start = resume.step
        self.cadence = Cadence(plan.train, self.start, self.extra_checkpoints)
        self.replaced_before = self.state.replacements  # actors replaced by earlier submissions of the run
        self.kl_control = KLController(self.state.kl_coef, self.kl.adaptive, self.kl.target, self.kl.horizon)

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # -- the run ----------------------------------------------------------------------
    def run(self) -> None:
        self.build()
        plan = self.plan
        log = MetricsLog(Path(plan.run_dir) / METRICS_FILE) if self.is_chief else None
        if self.is_chief:
            where = f"resumed after iteration {self.start}" if self.start else "from the starting policy"
            print(
                f"{plan.stage}: learning {where}: {self.world} learner rank(s), {self.rl.mode} rollouts, "
                f"{self.rl.prompts_per_iteration} prompts x {self.algorithm.group_size} per iteration, "
                f"minibatches of {self.rl.minibatch_size}, {self.rl.epochs} epoch(s), ZeRO {plan.deepspeed.zero_stage}",
                flush=True,
            )
        began = time.perf_counter()
        for iteration in self.cadence.steps():
            metrics = self.iteration(iteration)
            if metrics is None:  # bad rewards stopped the run: the last checkpoint stays the latest
                break
            if self.is_chief:
                log.log(iteration, metrics)  # every iteration; the progress line every train.log_interval
            if self.is_chief and self.cadence.shows_progress(iteration):
                eta = self.cadence.eta(iteration, (time.perf_counter() - began) / (iteration - self.start))
                print(
                    f"{plan.stage}: iteration {iteration}/{plan.train.max_steps} | {progress(metrics)} | ETA {eta}",
                    flush=True,
                )
            if self.cadence.checkpoints(iteration):
                self.checkpoint(iteration, metrics)
        if self.is_chief:
            log.close()

    def iteration(self, iteration: int) -> dict[str, float] | None:
        """One iteration on every rank; its metrics, or None when bad rewards stop the run."""
        started = time.perf_counter()
        chosen = stream_indices(
            len(self.prompts),
            (iteration - 1) * self.rl.prompts_per_iteration,
            self.rl.prompts_per_iteration,
            self.plan.shuffle_seed,
        )
        prompt_index = np.repeat(chosen, self.algorithm.group_size).tolist()  # a prompt's group is consecutive
        timings = {"sync": 0.0}
        rollouts = None  # on rank 0 until it broadcasts them
        if self.colocated:
            rollouts = self.generate_colocated(prompt_index, iteration)
        elif self.is_chief:
            timings["sync"] = self.controller.sync(self.engine.module.policy, iteration)
            tokens, stopped = self.controller.generate([self.prompts.ids[i] for i in prompt_index], iteration)
            rollouts = Rollouts(prompt_index, [self.prompts.ids[i] for i in prompt_index], tokens, stopped)
        timings["generation"] = time.perf_counter() - started - timings["sync"]

        scored_at = time.perf_counter()
        message: dict[str, Any] = {}
        if self.is_chief:
            responses = [self.tokenizer.decode(tokens) for tokens in rollouts.response_ids]
            result = self.controller.score([self.prompts.texts[i] for i in prompt_index], responses)
            rollouts.scores = result["rewards"]
            message = {"rollouts": rollouts, "problem": result["problem"]}
            self.write_samples(iteration, rollouts, responses)
        timings["scoring"] = time.perf_counter() - scored_at
        message = broadcast(message, self.world)
        rollouts, problem = message["rollouts"], message["problem"]

        if problem:
            self.state.bad_in_a_row += 1
            self.state.skipped_batches += 1
            if self.is_chief:
                print(
                    f"warning: iteration {iteration}: {self.reward.source} {problem}; batch skipped "
                    f"({self.state.bad_in_a_row} in a row, the run stops at {self.reward.max_bad_batches})",
                    flush=True,
                )
            if self.state.bad_in_a_row >= self.reward.max_bad_batches:
                self.stop(iteration, problem)
                return None
            metrics = {}
        else:
            self.state.bad_in_a_row = 0
            learn_at = time.perf_counter()
            metrics = self.learn(rollouts, iteration)
            timings["learning"] = time.perf_counter() - learn_at
        if self.is_chief:
            self.state.replacements = self.replaced_before + self.controller.replacements
        return {**metrics, **self.iteration_metrics(rollouts, timings, time.perf_counter() - started)}

    # -- rollouts ----------------------------------------------------------------------
    def generate_colocated(self, prompt_index: list[int], iteration: int) -> Rollouts | None:
        """Every rank answers whole groups with its own policy; rank 0 gathers them in order."""
        group = self.algorithm.group_size
        mine = [row for row in range(len(prompt_index)) if (row // group) % self.world == self.rank]
        prompts = [self.prompts.ids[prompt_index[row]] for row in mine]
        sampling = Sampling(self.rl.temperature, self.rl.top_k, self.rl.top_p)
        out = sample_rollouts(
            self.engine.module.policy,
            prompts,
            self.rl.max_new_tokens,
            sampling,
            self.eos_id,
            rollout_seed(self.rl.seed, iteration, self.rank),
        )
        shares = [(mine, out.tokens, out.stopped)]
        if self.world > 1:
            gathered = [None] * self.world if self.is_chief else None
            dist.gather_object(shares[0], gathered, dst=0)
            shares = gathered
        if not self.is_chief:
            return None
        tokens: list = [None] * len(prompt_index)
        stopped: list = [None] * len(prompt_index)
        for rows, share_tokens, share_stopped in shares:
            for row, t, s in zip(rows, share_tokens, share_stopped):
                tokens[row], stopped[row] = t, s
        return Rollouts(prompt_index, [self.prompts.ids[i] for i in prompt_index], tokens, stopped)

    # -- the update --------------------------------------------------------------------
    def learn(self, rollouts: Rollouts, iteration: int) -> dict[str, float]:
        """Score this rank's share of the batch, compute advantages, run the epochs of minibatches."""
        rows = list(range(self.rank, len(rollouts), self.world))
        micro = self.plan.train.micro_batch_size
        inputs, targets, mask = rollouts.tensors(rows, self.eos_id, self.device)
        scores = torch.tensor(rollouts.scores, dtype=torch.float32)
        coef = self.kl_control.coef
        scored = score_rollouts(
            self.engine, self.reference, inputs, targets, mask, self.rl.temperature, micro, self.autocast
        )
        per_row = {**scored, **self.algorithm.advantages(scored, scores, rows, mask, coef)}
        sums: dict[str, float] = {}
        steps = 0
        for epoch in range(self.rl.epochs):
            order = torch.randperm(
                len(rows),
                generator=torch.Generator().manual_seed(rollout_seed(self.rl.seed, iteration, epoch, self.rank)),
            )
            for start in range(0, len(rows), self.share):  # one optimizer step per minibatch
                minibatch = order[start : start + self.share]
                for chunk in minibatch.split(micro):
                    logits, values = self.engine(inputs[chunk])
                    logp, _ = scaled_logprobs(logits, targets[chunk], mask[chunk], self.rl.temperature)
                    batch = {key: value[chunk] for key, value in per_row.items() if value is not None}
                    loss, stats = self.algorithm.loss(logp, values, batch, mask[chunk], coef)
                    self.engine.backward(loss)
                    self.engine.step()
                    for key, value in stats.items():
                        sums[key] = sums.get(key, 0.0) + value
                    steps += 1
        own = {key: value / steps for key, value in sums.items()}
        own["rl/kl"] = masked_mean(scored["kl"], mask).item()
        own["rl/entropy"] = masked_mean(scored["entropy"], mask).item()
        metrics = global_means(own, self.device)
        metrics["rl/kl_coef"] = coef
        self.kl_control.update(metrics["rl/kl"], len(rollouts))
        self.state.kl_coef = self.kl_control.coef
        metrics["train/lr"] = self.engine.get_lr()[0]
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        return metrics

    # -- records ---------------------------------------------------------------------------
    def iteration_metrics(self, rollouts: Rollouts, timings: dict[str, float], seconds: float) -> dict[str, float]:
        lengths = rollouts.response_lengths()
        new_tokens = sum(lengths)
        metrics = {
            "rl/response_length": new_tokens / len(lengths),
            "rl/skipped_batches": float(self.state.skipped_batches),
            "rl/rollout_restarts": float(self.state.replacements),
            "rl/sync_s": timings["sync"],
            "rl/iteration_s": seconds,
            "perf/rollout_tokens_per_s": new_tokens / max(timings["generation"], 1e-9),
        }
        if rollouts.scores is not None:
            scores = np.asarray(rollouts.scores)
            metrics.update({"rl/reward_mean": float(scores.mean()), "rl/reward_std": float(scores.std())})
        if "learning" in timings:
            sequence_tokens = sum(len(p) for p in rollouts.prompt_ids) + new_tokens
            metrics["perf/learner_tokens_per_s"] = sequence_tokens * self.rl.epochs / timings["learning"]
        for phase in ("sync", "generation", "scoring", "learning"):
            metrics[f"rl/{phase}_share"] = timings.get(phase, 0.0) / seconds
        return metrics

    def write_samples(self, iteration: int, rollouts: Rollouts, responses: list[str]) -> None:
        keep = min(self.rl.samples_per_iteration, len(rollouts))
        with (Path(self.plan.run_dir) / SAMPLES_FILE).open("a") as out:
            for row in range(keep):
                reward = rollouts.scores[row] if rollouts.scores is not None else None
                out.write(
                    json.dumps(
                        {
                            "iteration": iteration,
                            "prompt": self.prompts.texts[rollouts.prompt_index[row]],
                            "response": responses[row],
                            "reward": reward,
                        }
                    )
                    + "\n"
                )

    def checkpoint(self, iteration: int, metrics: dict[str, float]) -> None:
        description = {}
        if self.is_chief:
            description = describe_checkpoint(
                self.plan.model,
                self.tokenizer,
                self.plan.dataset_dir,
                self.plan.train,
                stage=self.plan.stage,
                weights_prefix=POLICY_PREFIX,
            )
            description[STATE_FILE] = json.dumps(dataclasses.asdict(self.state)).encode()
        state = TrainingState(
            iteration,
            iteration * self.rl.prompts_per_iteration,
            self.rl.minibatch_size,
            self.world,
            1,
            self.plan.deepspeed.zero_stage,
        )
        save_and_report(self.engine, state, {"step": iteration, **metrics}, self.is_chief, description)

    def stop(self, iteration: int, problem: str) -> None:
        """Bad rewards too many times in a row: record why for the driver, keep the last checkpoint."""
        if self.is_chief:
            reason = (
                f"{self.reward.source}: bad rewards for {self.state.bad_in_a_row} batches in a row (last: "
                f"{problem}); stopped at iteration {iteration}"
            )
            (Path(self.plan.run_dir) / STOP_FILE).write_text(json.dumps({"iteration": iteration, "reason": reason}))
            print(f"{self.plan.stage}: {reason}", flush=True)


def broadcast(message: dict[str, Any], world: int) -> dict[str, Any]:
    """Rank 0's message on every rank."""
    if world == 1:
        return message
    holder = [message]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def progress(metrics: dict[str, float]) -> str:
    line = [
        f"reward {metrics['rl/reward_mean']:.3f} ± {metrics['rl/reward_std']:.3f}"
        if "rl/reward_mean" in metrics
        else "rewards skipped"
    ]
    if "rl/kl" in metrics:
        line.append(f"kl {metrics['rl/kl']:.4f} (coef {metrics['rl/kl_coef']:.3f})")
        line.append(f"entropy {metrics['rl/entropy']:.2f} | clip {metrics['rl/clip_fraction']:.2f}")
    if "rl/value_loss" in metrics:
        line.append(f"value loss {metrics['rl/value_loss']:.4f}")
    line.append(f"length {metrics['rl/response_length']:.1f}")
    shares = " ".join(
        f"{phase} {100 * metrics[f'rl/{phase}_share']:.0f}%" for phase in ("sync", "generation", "scoring", "learning")
    )
    line.append(f"{shares} of {metrics['rl/iteration_s']:.2f} s")
    return " | ".join(line)

"""PPO and GRPO's shared tree and driver (`ppo`, `grpo`).

Each starts from `model.init_from` (the SFT checkpoint, required), like the fine-tuning stages. Before
anything is written the driver checks the reward: a reward model must share the policy's tokenizer, and
the reward actor imports a reward function and makes a trial call. Then it starts the roles as Ray actors
(the reward scorer; in separated mode the rollout workers) and launches one Ray Train fit whose workers
run the learner (`workloads.rl.learner`), with the actors' handles in their options. Afterwards it
samples held-out prompts with the final and the starting policy, scores them with the same reward,
measures the final policy's per-token KL to the starting one, and logs the samples, and the rollouts
kept during the run, to MLflow as tables. Recipes are in `orchestrator/config/recipes/<ppo|grpo>/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import ray

from orchestrator.config.tree import EVERY_FIELD
from orchestrator.data.finetuning import BUILTIN
from orchestrator.data.prompt_sets import PromptDataConfig, prepare_prompts
from orchestrator.launch import ray_runtime
from orchestrator.stages.base import DRIVER_ONLY, StageDriver
from orchestrator.stages.finetuning import StageConfig
from orchestrator.stages.heldout import SampleConfig, heldout_records, sample_prompts
from orchestrator.stages.starting_model import lineage_tags, starting_tokenizer, take_model_from_start
from workloads.checkpoints.loading import SCALAR_HEAD, load_checkpoint, read_description, resolve_checkpoint
from workloads.errors import UserInputError
from workloads.rl.batch import Rollouts, mean_token_kl
from workloads.rl.config import KLConfig, RewardConfig, RolloutConfig
from workloads.rl.learner import SAMPLES_FILE, STOP_FILE, learner_worker
from workloads.rl.reward import RewardScorer
from workloads.rl.rollout import ActorRole, ActorSpec, RolloutWorker
from workloads.task import has_property
from workloads.tokenizer import Tokenizer
from workloads.train_config import CADENCE_FIELDS

ROLLOUT_ACTOR_NAME = "rl-rollout-{index}"  # the driver's rollout actors, in this job's namespace


@dataclass
class RLStageConfig(StageConfig):
    """The tree PPO and GRPO share: a fine-tuning stage's, with prompts for data and the RL sections."""

    data: PromptDataConfig = dataclasses.field(default_factory=PromptDataConfig)
    rl: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    kl: KLConfig = dataclasses.field(default_factory=KLConfig)

    algorithm: ClassVar[str] = ""  # the algorithm's section, and its name in workloads.rl.algorithms
    group_size = 1  # responses per prompt

    def check(self) -> None:  # not the fine-tuning stages' check: no data.seq_len here, its own limits instead
        if self.deepspeed.zero_stage == 3:
            raise UserInputError(
                "deepspeed.zero_stage=3: ZeRO-3 is not supported for RL yet (the weight sync and the "
                "colocated generator read whole parameters); use 0, 1 or 2"
            )
        if self.parallel.pipeline_stages != 1 or self.parallel.compile_blocks:
            raise UserInputError(
                "parallel: pipeline stages and compiled blocks are not supported for RL (the "
                "learner also generates and scores whole sequences); only activation_checkpointing"
            )
        if self.run.branch_from:
            raise UserInputError(
                "run.branch_from: not supported for RL; start a new run from a checkpoint with model.init_from"
            )
        workers, micro, minibatch = self.scaling.num_workers, self.train.micro_batch_size, self.rl.minibatch_size
        rows = self.rl.prompts_per_iteration * self.group_size
        if rows % minibatch:
            raise UserInputError(
                f"rl.minibatch_size={minibatch} does not divide the rollout batch of {rows} sequences "
                f"(rl.prompts_per_iteration {self.rl.prompts_per_iteration} x {self.group_size} per prompt)"
            )
        if minibatch % (workers * micro):
            raise UserInputError(
                f"rl.minibatch_size={minibatch} is not a multiple of scaling.num_workers {workers} x "
                f"train.micro_batch_size {micro}"
            )
        if self.rl.max_new_tokens + 2 > self.model.max_seq_len:
            raise UserInputError(
                f"rl.max_new_tokens={self.rl.max_new_tokens} leaves no room for a prompt within "
                f"model.max_seq_len={self.model.max_seq_len}"
            )


class RLDriver(StageDriver):
    """PPO and GRPO: the starting policy and its reward, actors for the roles, one fit of the learner."""

    tree = RLStageConfig
    starts_from = "sft"  # as DPO does, so that their results compare
    train_loop = staticmethod(learner_worker)
    identity_excluded = {
        **DRIVER_ONLY,
        "samples": EVERY_FIELD,
        "parallel": EVERY_FIELD,
        "data": {"dataset_dir"},
        "train": CADENCE_FIELDS,
        "rl": {"actor_cpus", "samples_per_iteration"},  # what the actors reserve, what is logged
    }

    def resolve(self, cfg: RLStageConfig) -> None:
        """The policy's shape from the starting checkpoint (as the fine-tuning stages take it); the reward
        model's checkpoint, refused unless it is a reward model with the policy's tokenizer."""
        tokenizer_file = take_model_from_start(cfg)
        if cfg.reward.model:
            cfg.reward.model = check_reward_model(cfg.reward.model, Tokenizer.load(tokenizer_file).sha256)

    def begin(self, cfg: RLStageConfig, parent_run_id: str) -> dict[str, str]:
        tags = lineage_tags(cfg, starting_tokenizer(cfg), parent_run_id)
        return {**tags, "orchestrator.reward": cfg.reward.source}

    def identity_extra(self, cfg: RLStageConfig) -> dict[str, Any]:
        extra: dict[str, Any] = {"stage": self.name}
        if cfg.data.train_file != BUILTIN:
            extra["train_file_sha256"] = hashlib.sha256(Path(cfg.data.train_file).read_bytes()).hexdigest()
        return extra

    def global_batch(self, cfg: RLStageConfig) -> int:
        return cfg.rl.minibatch_size  # one optimizer step

    def prepare_data(self, cfg: RLStageConfig, tags: dict[str, str]) -> tuple[Path, dict[str, Any]]:
        run_dir = cfg.run.run_dir()
        (run_dir / STOP_FILE).unlink(missing_ok=True)  # a reason recorded by an earlier submission
        if not (run_dir / "train").exists():
            (run_dir / SAMPLES_FILE).unlink(missing_ok=True)  # a fresh start keeps no earlier run's samples
        dataset_dir, manifest = prepare_prompts(cfg, starting_tokenizer(cfg))
        tags["orchestrator.dataset_hash"] = manifest["dataset_hash"]
        return dataset_dir, manifest

    def worker_options(self, cfg: RLStageConfig) -> dict[str, Any]:
        sections = ("rl", "reward", "kl", cfg.algorithm)
        return {section: dataclasses.asdict(getattr(cfg, section)) for section in sections}

    @contextlib.contextmanager
    def roles(self, cfg: RLStageConfig) -> Iterator[dict[str, Any]]:
        print(f"{self.name}: {ray_runtime.connect()}", flush=True)
        roles = start_roles(cfg, starting_tokenizer(cfg))
        try:
            yield {"actors": roles}
        finally:
            stop_roles(roles)

    def check_result(self, cfg: RLStageConfig, result: Any) -> None:
        stop = cfg.run.run_dir() / STOP_FILE
        if stop.exists():
            kept = result.checkpoint.path if result.checkpoint is not None else "none written yet"
            raise UserInputError(f"{json.loads(stop.read_text())['reason']}; last checkpoint kept: {kept}")

    def after_training(
        self, cfg: RLStageConfig, final: dict[str, Any], recorder: Any, roles: dict[str, Any]
    ) -> dict[str, float]:
        return evaluate_heldout(cfg, final["checkpoint"], roles["actors"], recorder)


def check_reward_model(value: str, policy_tokenizer_sha256: str) -> str:
    """The reward model's checkpoint directory, once it is known to score the policy's tokens."""
    if not Path(value).exists():
        raise UserInputError(f"reward.model: {value}: no such checkpoint or run directory")
    checkpoint = resolve_checkpoint(value)
    description = read_description(checkpoint)
    if description.get("kind") != SCALAR_HEAD:
        raise UserInputError(
            f"reward.model: {checkpoint} holds a {description.get('kind')}, not a reward model "
            "(trained by orchestrator.reward)"
        )
    theirs = description["tokenizer"]["sha256"]
    if theirs != policy_tokenizer_sha256:
        raise UserInputError(
            f"reward.model: {checkpoint} uses another tokenizer (sha256 {theirs[:12]}...) than the "
            f"policy's model.init_from (sha256 {policy_tokenizer_sha256[:12]}...)"
        )
    return str(checkpoint)


def start_roles(cfg: RLStageConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    """The reward scorer (checked with a trial call) and, in separated mode, the rollout workers."""
    scorer_spec = ActorSpec(RewardScorer, {"reward": dataclasses.asdict(cfg.reward)}, cfg.rl.actor_cpus)
    scorer = scorer_spec.start()
    problem = ray.get(scorer.problem.remote())
    if problem:
        ray.kill(scorer)
        raise UserInputError(problem)
    roles: dict[str, Any] = {"scorer": scorer, "scorer_spec": scorer_spec, "rollout": [], "rollout_spec": None}
    if cfg.rl.mode == "separated":
        sampling = {"temperature": cfg.rl.temperature, "top_k": cfg.rl.top_k, "top_p": cfg.rl.top_p}
        spec = ActorSpec(
            RolloutWorker,
            {
                "model": dataclasses.asdict(cfg.model),
                "sampling": sampling,
                "max_new_tokens": cfg.rl.max_new_tokens,
                "eos_id": tokenizer.eos_id,
            },
            cfg.rl.actor_cpus,
            names=[ROLLOUT_ACTOR_NAME.format(index=i) for i in range(cfg.rl.rollout_workers)],
        )
        roles["rollout"] = [spec.start(i) for i in range(cfg.rl.rollout_workers)]
        roles["rollout_spec"] = spec
        ray.get([worker.pid.remote() for worker in roles["rollout"]])  # they run: a failure to start shows here
    return roles


def stop_roles(roles: dict[str, Any]) -> None:
    for handle in [roles["scorer"], *roles["rollout"]]:
        ray.kill(handle)


def evaluate_heldout(cfg: RLStageConfig, checkpoint: str, roles: dict[str, Any], recorder) -> dict[str, float]:
    """Held-out prompts answered by the final and by the starting policy (same sampling, same seed), scored
    by the run's reward, and the final policy's per-token KL to the starting one on its own answers
    (`heldout/kl`); logged as the `generations.json` table, with the run's `rollouts.json`."""
    run_dir = cfg.run.run_dir()
    if recorder.run_id and (run_dir / SAMPLES_FILE).exists():
        rows = [json.loads(line) for line in (run_dir / SAMPLES_FILE).read_text().splitlines() if line.strip()]
        recorder.client.log_table(
            recorder.run_id, data={key: [row[key] for row in rows] for key in rows[0]}, artifact_file="rollouts.json"
        )
    records = heldout_records(cfg)
    if not records:
        return {}
    prompts = [record["prompt"] for record in records]
    scorer = ActorRole("reward scorer", roles["scorer_spec"], [roles["scorer"]])
    policies = {"": load_checkpoint(checkpoint)}
    if cfg.model.init_from.startswith("checkpoint:"):
        policies["_start"] = load_checkpoint(cfg.model.init_from.removeprefix("checkpoint:"))
    table: dict[str, list] = {"prompt": prompts}
    metrics: dict[str, float] = {}
    for suffix, loaded in policies.items():
        rollouts, responses = sample_heldout(loaded, prompts, cfg.samples)
        if suffix == "" and "_start" in policies:
            metrics["heldout/kl"] = mean_token_kl(
                loaded.model, policies["_start"].model, rollouts, loaded.tokenizer.eos_id
            )
        scored = scorer.call("score", [(prompts, responses)])[0]
        table[f"response{suffix}"] = responses
        if scored["rewards"] is not None:
            table[f"reward{suffix}"] = scored["rewards"]
            metrics[f"heldout/reward_mean{suffix}"] = sum(scored["rewards"]) / len(responses)
        if cfg.data.train_file == BUILTIN:
            table[f"has_property{suffix}"] = [has_property(r) for r in responses]
            metrics[f"task/property_rate{suffix}"] = sum(table[f"has_property{suffix}"]) / len(responses)
    if recorder.run_id:
        recorder.client.log_table(recorder.run_id, data=table, artifact_file="generations.json")
    shown = " | ".join(f"{key} {value:.3f}" for key, value in sorted(metrics.items()))
    print(f"{cfg.algorithm}: {len(prompts)} held-out prompts, final (and _start) policy: {shown}")
    return metrics


def sample_heldout(loaded, prompts: list[str], samples: SampleConfig) -> tuple[Rollouts, list[str]]:
    """Responses to `prompts` exactly as the fine-tuning stages sample them (`alignment.sample_prompts`),
    with their token ids kept."""
    encoded, out = sample_prompts(loaded, prompts, samples)
    rollouts = Rollouts(list(range(len(prompts))), encoded, out.tokens, out.stopped)
    return rollouts, [loaded.tokenizer.decode(ids) for ids in out.tokens]

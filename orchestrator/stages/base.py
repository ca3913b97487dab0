"""The contract every stage driver keeps: `run()` is written once, a stage overrides the hooks.

A driver names its stage, its config tree and recipes, how its tree is resolved (a starting model, a
reward model), which of the tree's fields determine its result (`identity_excluded`: the rest are
cadence, resources, tracking), how its data is prepared, what its workers get beside the common
sections, and what it measures after training. `run()` then does the same for every stage: resolve
what the run starts from, identity, launch on Ray Train (which claims the run directory, prepares the
data and tracks the run), and the after-training evaluation. The registry (`orchestrator.stages.registry`)
lists the drivers in chain order; the chain (`orchestrator.stages.chain`) loops over it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from orchestrator.config.parser import RECIPE_DIR, load_tree, parse_tree
from orchestrator.config.tree import EVERY_FIELD, ConfigTree, tree_identity
from orchestrator.launch.trainer import Launch, train_on_ray
from workloads.train_config import CADENCE_FIELDS

# Never part of a result: where a run lives and what it is called, its resources, where it is tracked.
DRIVER_ONLY: dict[str, Collection[str]] = {"run": EVERY_FIELD, "scaling": EVERY_FIELD, "tracking": EVERY_FIELD}


class StageDriver:
    """One kind of stage, on the driver. Subclasses set the class attributes and override the hooks."""

    name: ClassVar[str]  # the command (`python -m orchestrator.<name>`) and the registry's key
    summary: ClassVar[str]  # one line, for --help
    tree: ClassVar[type[ConfigTree]]
    default_recipe: ClassVar[str] = "tiny"
    worker_stage: ClassVar[str] = ""  # what the workers run (`workloads.stages`); empty: `name`
    starts_from: ClassVar[str] = ""  # in a chain: the earlier stage whose final checkpoint is model.init_from
    # Tree fields that do not change the result: a run directory keeps one identity across submissions.
    identity_excluded: ClassVar[Mapping[str, Collection[str]]] = {
        **DRIVER_ONLY,
        "data": {"dataset_dir"},
        "train": CADENCE_FIELDS,
    }
    train_loop: ClassVar[Callable[[dict[str, Any]], None] | None] = None  # None: workloads.loop.train_worker

    @property
    def workers_run(self) -> str:
        """The worker-side stage (`workloads.stages` name) this driver's workers run."""
        return self.worker_stage or self.name

    # -- configuration -------------------------------------------------------------------
    @property
    def recipe_dir(self) -> Path:
        return RECIPE_DIR / self.name

    def parse(self, argv: list[str] | None) -> ConfigTree:
        """The tree from a command line (`--config`, overrides, `--help`, `--print-config`), validated."""
        return parse_tree(
            self.tree,
            argv,
            f"orchestrator.{self.name}",
            self.summary,
            default_recipe=self.default_recipe,
            resolve=self.resolve,
            recipe_dir=self.recipe_dir,
        )

    def load(self, recipe: str, overrides: Mapping[str, Any]) -> ConfigTree:
        """The tree from a recipe (shipped name or file) and {section.field: value} overrides, validated."""
        return load_tree(self.tree, recipe, overrides, resolve=self.resolve, recipe_dir=self.recipe_dir)

    def resolve(self, cfg: ConfigTree) -> None:
        """Fill in what the tree's own values imply, before validation (e.g. the shape of a starting model)."""

    def chain_overrides(
        self, finished: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Any]
    ) -> dict[str, Any]:
        """In a chain: overrides taken from the stages `finished` before this one (besides model.init_from,
        which `starts_from` gives), unless the stage's own `overrides` already set them."""
        return {}

    # -- one run -------------------------------------------------------------------------
    def begin(self, cfg: ConfigTree, parent_run_id: str) -> dict[str, str]:
        """Before anything starts: check what the run starts from; returns its lineage tags for MLflow."""
        return {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}

    def identity_extra(self, cfg: ConfigTree) -> dict[str, Any]:
        """Inputs beyond the tree that determine the result (e.g. the digests of record files)."""
        return {}

    def identity(self, cfg: ConfigTree) -> str:
        return tree_identity(cfg, self.identity_excluded, self.identity_extra(cfg))

    def global_batch(self, cfg: ConfigTree) -> int:
        return cfg.train.resolved_global_batch(cfg.scaling.num_workers)

    def prepare_data(self, cfg: ConfigTree, tags: dict[str, str]) -> tuple[Path, dict[str, Any]]:
        """The stage's prepared (and checked) dataset directory and its manifest; may add lineage `tags`."""
        raise NotImplementedError

    def worker_options(self, cfg: ConfigTree) -> dict[str, Any]:
        """The stage's own sections for its workers (`WorkerPlan.options`)."""
        return {}

    @contextlib.contextmanager
    def roles(self, cfg: ConfigTree) -> Iterator[dict[str, Any]]:
        """Ray actors the run needs beside its workers, for as long as it trains; yields more worker options."""
        yield {}

    def check_result(self, cfg: ConfigTree, result: Any) -> None:
        """Right after the fit: raise to fail the run (its MLflow run is closed as FAILED)."""

    def after_training(
        self, cfg: ConfigTree, final: dict[str, Any], recorder: Any, roles: dict[str, Any]
    ) -> dict[str, float]:
        """After a finished fit, on the driver: more final metrics (e.g. held-out samples), given the open
        recorder and what `roles` yielded."""
        return {}

    def run(
        self,
        cfg: ConfigTree,
        parent_run_id: str = "",
        tags: Mapping[str, str] | None = None,
        callbacks: Collection[Any] = (),
    ) -> dict[str, Any]:
        """Run (or resume) one stage; returns the final metrics, `checkpoint` and `mlflow_run_id` among them.

        `tags` go on its MLflow run besides the lineage; `callbacks` (Ray Train `UserCallback`s) are added
        to its trainer (a sweep's Tune trial reports through one).
        """
        lineage = {**self.begin(cfg, parent_run_id), **(tags or {})}
        with self.roles(cfg) as role_options:
            return train_on_ray(
                cfg,
                Launch(
                    stage=self.workers_run,
                    identity=self.identity(cfg),
                    global_batch=self.global_batch(cfg),
                    prepare=lambda: self.prepare_data(cfg, lineage),
                    shuffle_seed=cfg.data.shuffle_seed,
                    options={**self.worker_options(cfg), **role_options},
                    tags=lineage,
                    after_training=lambda final, recorder: self.after_training(cfg, final, recorder, role_options),
                    allow_global_batch_change=cfg.run.allow_global_batch_change,
                    callbacks=list(callbacks),
                    train_loop=self.train_loop,
                    check_result=lambda result: self.check_result(cfg, result),
                ),
            )

    def main(self, argv: list[str] | None = None) -> dict[str, Any]:
        """The command: parse the command line, run."""
        return self.run(self.parse(argv))

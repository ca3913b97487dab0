"""A scaling-law sweep of real pretrain runs, fitted and reported (`python -m orchestrator.sweep`).

The sweep prepares the dataset once (under `run.output_dir`, shared by every trial),
designs the grid (`grid`), trains every trial as a pretrain run launched by Ray Tune
(`tune_runner`), writes trials.json, points.csv and the report (`sweep_report`),
recommends a config for `sweep.target_flops` as a pretrain recipe file, trains the
recommended config at `sweep.verify_flops` and compares its loss with the fitted law's
prediction. One MLflow parent run holds it all (`parent_run`); each trial's own run is
its child. Running the same command again re-runs only what is unfinished. A dry run
prints the grid and an estimated wall time (`dry_run`) and trains nothing.

Layout: <output_dir>/datasets/ (the dataset), <output_dir>/<name>/ (the sweep:
base.yaml, trials.json, points.csv, sweep.json, recommended.yaml, report/, tune/,
and trials/<trial>/, each trial's pretrain run directory).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import ray
import yaml

from orchestrator.config.parser import RECIPE_DIR, parse_tree, recipe_path, to_dict
from orchestrator.config.sections import absolute
from orchestrator.data.checks import check_dataset
from orchestrator.launch import ray_runtime
from orchestrator.launch.tracking import absolute_tracking_uri
from orchestrator.launch.trainer import worker_threads
from orchestrator.scaling_laws import sweep_summary as summaries
from orchestrator.scaling_laws.dry_run import LAUNCH_S_ASSUMED, estimate_wall, measured_step_seconds, print_grid
from orchestrator.scaling_laws.family import Size, family_lr, size_for
from orchestrator.scaling_laws.fit import fit_sweep
from orchestrator.scaling_laws.grid import GRID, LR_SEARCH, VERIFY, WSD, Design, TrialSpec, check_buildable, design
from orchestrator.scaling_laws.parent_run import ParentRun
from orchestrator.scaling_laws.points import Points, write_points_csv
from orchestrator.scaling_laws.sweep_config import SweepTree
from orchestrator.scaling_laws.sweep_report import VERIFY_FILE, report_sweep
from orchestrator.scaling_laws.trial_records import OK, as_trial, is_finished, read_record
from orchestrator.scaling_laws.tune_runner import TRAINABLE_CPUS, Plan, run_trials, trial_slots
from orchestrator.stages.pretrain import PRETRAIN, PretrainConfig, resolve_dataset
from workloads.errors import UserInputError

SUMMARY = (
    "Scaling-law sweep: an IsoFLOP grid of real pretrain runs launched by Ray Tune, fitted and reported.\n"
    "--dry-run     print the designed grid and an estimated wall time; train nothing"
)
TRIALS_DIR = "trials"
BASE_FILE = "base.yaml"
RECOMMENDED_FILE = "recommended.yaml"
VERIFY_RECIPE = "verify.yaml"
VERIFY_FACTOR = 4.0  # sweep.verify_flops = 0: this many times the largest budget


def parse_cli(argv: list[str] | None) -> tuple[SweepTree, bool]:
    args = list(sys.argv[1:] if argv is None else argv)
    dry_run = "--dry-run" in args
    args = [a for a in args if a != "--dry-run"]
    tree = parse_tree(
        SweepTree,
        args,
        "orchestrator.sweep",
        SUMMARY,
        default_recipe="cpu",
        recipe_dir=RECIPE_DIR / "sweep",
        resolve=check_base,
    )
    return tree, dry_run


def check_base(tree: SweepTree) -> None:
    """Fail on a base recipe pretrain would refuse, before anything starts (and before --print-config)."""
    tree.validate()
    base_config(tree)


def base_config(tree: SweepTree) -> PretrainConfig:
    """The pretrain config every trial starts from: the base recipe, its overrides, the sweep's own run and tracking."""
    base = tree.sweep.base
    source = str(Path(base).resolve()) if base.endswith((".yaml", ".yml")) else str(recipe_path(base))
    try:
        cfg = PRETRAIN.parse(["--config", source, *tree.sweep.base_overrides])
    except UserInputError as err:
        raise UserInputError(f"sweep.base: {base} {' '.join(tree.sweep.base_overrides)}: {err}") from None
    cfg.tracking = dataclasses.replace(tree.tracking, uri=absolute_tracking_uri(tree.tracking.uri))
    cfg.run.output_dir = absolute(tree.run.output_dir)  # the shared dataset goes to <output_dir>/datasets
    cfg.run.fresh = False
    return cfg


class Sweep:
    """One invocation of a sweep: its files, its trials' launches, its MLflow parent."""

    def __init__(self, tree: SweepTree, base: PretrainConfig, dataset_dir: Path, manifest: dict[str, Any]):
        self.tree = tree
        self.sweep_dir = tree.run.sweep_dir()
        self.trials_dir = self.sweep_dir / TRIALS_DIR
        base.data.corpus = str(dataset_dir)  # every trial reads the prepared dataset directly
        base.run.output_dir = str(self.trials_dir)
        self.base = base
        self.dataset_dir = dataset_dir
        train_tokens = manifest["splits"]["train"]["num_samples"] * manifest["seq_len"]
        self.design: Design = design(tree, base, train_tokens)
        check_buildable({s.size.key: s.size for s in self.design.specs})
        self.parent_id = ""
        self.records: dict[str, dict[str, Any]] = {}

    @property
    def base_file(self) -> Path:
        """The pretrain config every trial starts from, as written by `write_base`."""
        return self.sweep_dir / BASE_FILE

    # -- what a trial runs --------------------------------------------------------------
    def lr(self, spec: TrialSpec, multiplier: float) -> float:
        return family_lr(spec.size, self.tree.family) * multiplier

    def overrides(self, spec: TrialSpec, multiplier: float) -> dict[str, Any]:
        """What a trial sets on the base config: its name, shape, length, learning rate, schedule, evaluations."""
        m, sweep = spec.size.model, self.tree.sweep
        overrides: dict[str, Any] = {
            "run.name": spec.name,
            "model.n_layers": m.n_layers,
            "model.d_model": m.d_model,
            "model.n_heads": m.n_heads,
            "model.n_kv_heads": 0,
            "model.ffn_hidden": 0,
            "train.max_steps": spec.steps,
            "train.halt_at_step": 0,
            "train.lr": self.lr(spec, multiplier),
            "train.warmup_steps": spec.warmup,
            "train.schedule": spec.schedule,
            "train.decay_fraction": sweep.cooldown_fraction,
            "train.eval_interval": max(1, spec.steps // sweep.evals_per_trial),
            "run.checkpoint_steps": sorted(spec.checkpoint_steps),
        }
        if spec.checkpoint_steps:  # Ray's retention of the newest K must not take the branch points
            overrides["train.keep_checkpoints"] = 0
        return overrides

    def trial_config(
        self, spec: TrialSpec, multiplier: float, origin: Path | None = None, base_file: Path | None = None
    ) -> PretrainConfig:
        """The pretrain config `spec` trains with (refused here if the trial would refuse it)."""
        overrides = self.overrides(spec, multiplier)
        if origin is not None:
            overrides["run.branch_from"] = str(origin)
        return PRETRAIN.load(str(base_file or self.base_file), overrides)

    def launch(self, spec: TrialSpec, multiplier: float, origin: Path | None, base_file: Path | None = None) -> dict:
        """The trainable's config for `spec` (a Tune trial's `config`): the trial's pretrain config, serialised."""
        cfg = self.trial_config(spec, multiplier, origin, base_file)
        lr = self.lr(spec, multiplier)
        size = spec.size
        tags = {
            "orchestrator.sweep": self.tree.run.name,
            "sweep.trial": spec.name,
            "sweep.kind": spec.kind,
            "sweep.N": str(size.N),
            "sweep.N_head": str(size.N_head),
            "sweep.N_total": str(size.N_total),
            "sweep.D": str(spec.D),
            "sweep.C": repr(spec.C),
            "sweep.shape": json.dumps(size.shape()),
            "sweep.lr": repr(lr),
            "sweep.epochs": f"{spec.epochs:.4f}",
            "sweep.schedule": spec.schedule,
            "sweep.branch_from": str(origin or ""),
        }
        if self.parent_id:
            tags["mlflow.parentRunId"] = self.parent_id
        record = {
            **spec.describe(),
            "lr": lr,
            "lr_multiplier": multiplier,
            "config": to_dict(cfg),  # the run, to repeat it
            "trained_flops": spec.trained_flops(self.design.tokens_per_step, self.design.seq_len),
        }
        cpus = cfg.scaling.num_workers * worker_threads(cfg.scaling.cpus_per_worker)
        return {
            "name": spec.name,
            "pretrain": to_dict(cfg),
            "run_dir": str(self.trials_dir / spec.name),
            "tags": tags,
            "record": record,
            "tokens_per_step": self.design.tokens_per_step,
            "cpus": cpus,
            "origin_run_dir": str(self.trials_dir / spec.branch_of) if origin else "",
            "branch_step": spec.branch_step,
        }

    def on_record(self, name: str, record: dict[str, Any]) -> None:
        self.records[name] = record
        done = sum(1 for r in self.records.values() if is_finished(r))
        total = max(len(self.design.specs), len(self.records))
        loss = record.get("loss")
        shown = (
            f"final loss {loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else record.get("reason", "")
        )
        print(f"sweep: {name}: {record['status']} | {shown} | {done}/{total} trials finished", flush=True)

    # -- the phases ---------------------------------------------------------------------
    def write_base(self) -> None:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.base_file.write_text(
            "# The pretrain config every trial of this sweep starts from (paths resolved, dataset prepared).\n"
            + yaml.safe_dump(to_dict(self.base), sort_keys=False)
        )

    def train_grid(self, slots: int) -> None:
        specs = self.design.by_name()
        for name in specs:
            record = read_record(self.trials_dir / name)
            if record is not None:
                self.records[name] = record
        todo = [n for n in specs if not is_finished(self.records.get(n))]
        print(
            f"sweep: {len(specs) - len(todo)} of {len(specs)} trials already finished; training {len(todo)} "
            f"({slots} at a time)",
            flush=True,
        )
        run_trials(
            Plan(specs, self.trials_dir, self.launch, self.on_record), todo, slots, self.sweep_dir / "tune", "grid"
        )

    def sized_spec(self, name: str, kind: str, C: float, N_target: float) -> TrialSpec:
        """An independent run of the family's size nearest N_target on budget C (the recommendation, the verify run)."""
        size = size_for(N_target, self.base.model, self.tree.family)
        tps, seq_len = self.design.tokens_per_step, self.design.seq_len
        steps = max(1, round(C / (size.flops_per_token(seq_len) * tps)))
        D = steps * tps
        schedule = WSD if self.tree.sweep.schedule == WSD else "cosine"
        return TrialSpec(
            name=name,
            kind=kind,
            schedule=schedule,
            size=size,
            budget=C,
            steps=steps,
            D=D,
            C=float(size.flops_per_token(seq_len)) * D,
            warmup=round(self.tree.sweep.warmup_fraction * steps),
            epochs=D / self.design.train_tokens,
            group=kind,
        )

    def chosen_multipliers(self) -> dict[str, float]:
        """{size: the learning-rate multiplier its grid trials trained with} after a search (empty without one)."""
        if not self.tree.sweep.tune_lr:
            return {}
        return {
            r["size"]: r["lr_multiplier"] for r in self.records.values() if r["kind"] == GRID and r.get("lr_multiplier")
        }

    def multiplier_for(self, size: Size) -> float:
        """The chosen multiplier of the nearest searched size (1 without a search)."""
        searched = self.chosen_multipliers()
        if not searched:
            return 1.0
        sizes = {s.size.key: s.size.N for s in self.design.specs}
        nearest = min(searched, key=lambda key: abs(math.log(sizes[key] / size.N)))
        return searched[nearest]

    def write_recipe(self, spec: TrialSpec, path: Path, note: str) -> None:
        """A pretrain recipe (the full resolved config) that `orchestrator.pretrain --config FILE` runs."""
        overrides = {
            **self.overrides(spec, self.multiplier_for(spec.size)),
            "run.output_dir": absolute(self.tree.run.output_dir),
            "run.checkpoint_steps": [],
        }
        cfg = PRETRAIN.load(str(self.base_file), overrides)
        path.write_text(f"# {note}\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False))


def run(tree: SweepTree, dry_run: bool = False) -> None:
    """Run the sweep (or, with `dry_run`, print its grid and an estimated wall time and train nothing)."""
    base = base_config(tree)
    print(f"sweep: {ray_runtime.connect()}", flush=True)
    dataset_dir = resolve_dataset(base)  # once per sweep; every trial's launch then only re-reads metadata
    manifest = check_dataset(dataset_dir, base.data, base.tokenizer, base.model)
    adjust_worker_cpus(base)
    sweep = Sweep(tree, base, dataset_dir, manifest)
    cluster = ray.cluster_resources()
    slots = tree.sweep.max_concurrent or trial_slots(base, cluster)
    if slots < 1:
        raise UserInputError(
            f"scaling: a trial needs {base.scaling.num_workers} worker(s) x {base.scaling.cpus_per_worker:g} "
            f"CPUs + {TRAINABLE_CPUS} for its Tune trainable; the cluster has {cluster.get('CPU', 0):g} CPUs"
        )
    sweep.write_base()
    if dry_run:
        print_grid(sweep, slots)
        if base.scaling.use_gpu:
            print("sweep: estimated wall time: not measured (GPU trials; this driver times CPU steps only)")
            return
        step_s = measured_step_seconds(sweep)
        print("sweep: seconds per step measured here: " + ", ".join(f"{k} {v:.3f}" for k, v in step_s.items()))
        seconds, launch = estimate_wall(sweep, slots, step_s)
        print(
            f"sweep: estimated wall time {seconds / 60:.1f} min for the grid ({launch:.0f} s per launch"
            f"{' assumed' if launch == LAUNCH_S_ASSUMED else ' measured'}; step times measured here), "
            "plus the verification run"
        )
        return
    if sweep.design.problems:
        more = f" (and {len(sweep.design.problems) - 1} more; see --dry-run)" if len(sweep.design.problems) > 1 else ""
        raise UserInputError(f"sweep: {sweep.design.problems[0]}{more}")
    run_sweep(sweep, slots, cluster)


def adjust_worker_cpus(base: PretrainConfig) -> None:
    """Leave each trial's Tune trainable its share: workers of whole CPUs give up TRAINABLE_CPUS between them.

    Their torch threads stay the whole number (`launch.worker_threads` rounds), so a trial
    trains as fast as the same run alone, and trials that fill the cluster leave room for
    their trainables.
    """
    cpus = base.scaling.cpus_per_worker
    if cpus >= 1:
        base.scaling.cpus_per_worker = cpus - TRAINABLE_CPUS / base.scaling.num_workers


def run_sweep(sweep: Sweep, slots: int, cluster: dict[str, float]) -> None:
    tree = sweep.tree
    parent = ParentRun(sweep.base.tracking.uri, tree.tracking.experiment, tree.run.name, sweep.sweep_dir)
    sweep.parent_id = parent.open(to_dict(tree))
    if sweep.parent_id:
        print(f"sweep: MLflow parent run {sweep.parent_id} at {sweep.base.tracking.uri}", flush=True)
    started = time.time()
    sweep.train_grid(slots)
    trial_wall = time.time() - started
    groups = summaries.write_trial_files(sweep.sweep_dir, tree.sweep.schedule, {n: r for n, r in sweep.records.items()})
    primary = groups[next(iter(groups))]
    write_points_csv(primary, sweep.sweep_dir / "points.csv")

    metrics: dict[str, float] = {}
    fit_error, fits = "", None
    try:
        fits = fit_sweep(
            Points.from_trials(primary, source=str(sweep.sweep_dir / "trials.json")), bootstrap=tree.sweep.bootstrap
        )
    except UserInputError as err:
        fit_error = str(err)
        print(f"sweep: no fit: {fit_error}", flush=True)
    verify_record = None
    if fits is not None:
        largest = fits.isoflop.curves[-1].C
        target = tree.sweep.target_flops or 10 * largest
        recommended = sweep.sized_spec(f"recommended-C{target:.3g}", VERIFY, target, fits.allocation(target)[0].value)
        sweep.write_recipe(
            recommended,
            sweep.sweep_dir / RECOMMENDED_FILE,
            f"Recommended by sweep {tree.run.name} for C = {target:.3g} FLOPs: N = {recommended.size.N:,} "
            f"non-embedding parameters, D = {recommended.D:,} tokens (approach 2's N_opt, nearest family shape)",
        )
        print(f"sweep: recommended config for C = {target:.3g}: {sweep.sweep_dir / RECOMMENDED_FILE}", flush=True)
        metrics.update(fit_metrics(fits, target))
        if tree.sweep.verify:
            started_verify = time.time()
            verify_record = verify(sweep, fits, slots, cluster)
            trial_wall += time.time() - started_verify
            if verify_record is not None and verify_record["status"] == OK:
                trial = as_trial(verify_record)
                (sweep.sweep_dir / VERIFY_FILE).write_text(json.dumps(trial.to_dict(), indent=1) + "\n")
                predicted = fits.predict(trial.N, trial.D).value
                metrics.update(
                    {
                        "verify/measured_loss": trial.loss,
                        "verify/predicted_loss": predicted,
                        "verify/relative_error": predicted / trial.loss - 1,
                    }
                )
                print(
                    f"sweep: verification {trial.name}: measured {trial.loss:.4f}, predicted {predicted:.4f}, "
                    f"relative error {predicted / trial.loss - 1:+.2%}",
                    flush=True,
                )

    records = list(sweep.records.values())  # the verification run's among them (Plan reports every record)
    summary = sweep_summary(sweep, records, started, trial_wall, cluster)
    summaries.write_summary(sweep.sweep_dir, summary)
    metrics.update(
        {
            "sweep/utilization": summary["utilization"]["utilization"],
            "sweep/launch_share": summary["utilization"]["launch_share"],
            "sweep/trial_wall_s": trial_wall,
        }
    )
    for group, totals in summary["compute"].items():
        metrics[f"compute/{group}_trained_flops"] = totals["trained_flops"]
        metrics[f"compute/{group}_independent_flops"] = totals["independent_flops"]
    report_files = None
    if fits is not None:
        report_files = report_sweep(
            sweep.sweep_dir, tree.sweep.target_flops or None, summaries.N_LABEL, tree.sweep.bootstrap, fits=fits
        )  # the fit just made, not a second one
        print(f"sweep: report {report_files.markdown}", flush=True)
    artifacts = [
        sweep.sweep_dir / name
        for name in (
            "trials.json",
            "trials-wsd.json",
            summaries.LR_SEARCH_FILE,
            VERIFY_FILE,
            summaries.SUMMARY_FILE,
            "points.csv",
            RECOMMENDED_FILE,
            VERIFY_RECIPE,
            BASE_FILE,
            "report",
        )
    ]
    parent.finish(metrics, artifacts, "FINISHED" if fits is not None else "FAILED")
    usage = summary["utilization"]
    print(
        f"sweep: done | {usage['trials_run']} trials trained in {trial_wall:.0f} s | utilization "
        f"{usage['utilization']:.1%} | launching {usage['launch_share']:.1%}",
        flush=True,
    )
    if fit_error:
        raise UserInputError(f"sweep: trials done, but {fit_error}")


def fit_metrics(fits, target: float) -> dict[str, float]:
    metrics = {}
    for name, estimate in fits.parameters().items():
        metrics[f"fit/{name}"] = estimate.value
        if estimate.ci is not None:
            metrics[f"fit/{name}_lo"], metrics[f"fit/{name}_hi"] = estimate.ci
    N_opt, D_opt = fits.allocation(target)
    metrics.update({"fit/target_flops": target, "fit/N_opt": N_opt.value, "fit/D_opt": D_opt.value})
    return metrics


def verify(sweep: Sweep, fits, slots: int, cluster: dict[str, float]) -> dict[str, Any] | None:
    """Train the recommended config at sweep.verify_flops, alone, on as many CPUs as its workers can use."""
    tree = sweep.tree
    C = tree.sweep.verify_flops or VERIFY_FACTOR * max(sweep.design.budgets)
    spec = sweep.sized_spec(f"verify-C{C:.3g}", VERIFY, C, fits.allocation(C)[0].value)
    spec.name = f"verify-C{C:.3g}-{spec.size.key}"
    if spec.epochs > tree.sweep.max_epochs:
        print(
            f"sweep: no verification run: {spec.name} needs {spec.epochs:.2f} epochs (sweep.max_epochs="
            f"{tree.sweep.max_epochs:g})",
            flush=True,
        )
        return None
    record = read_record(sweep.trials_dir / spec.name)
    if not is_finished(record):
        base_file = sweep.sweep_dir / VERIFY_RECIPE.replace(".yaml", "-base.yaml")
        alone = dataclasses.replace(sweep.base, scaling=dataclasses.replace(sweep.base.scaling))
        if not alone.scaling.use_gpu:  # it runs alone: every CPU but its trainable's share
            alone.scaling.cpus_per_worker = max(
                alone.scaling.cpus_per_worker, (cluster.get("CPU", 1) - TRAINABLE_CPUS) / alone.scaling.num_workers
            )
        base_file.write_text(yaml.safe_dump(to_dict(alone), sort_keys=False))
        multiplier = sweep.multiplier_for(spec.size)
        sweep.write_recipe(
            spec, sweep.sweep_dir / VERIFY_RECIPE, f"Verification run of sweep {tree.run.name} at C = {C:.3g} FLOPs"
        )
        print(f"sweep: verification run {spec.name}: N = {spec.size.N:,}, D = {spec.D:,}", flush=True)
        plan = Plan(
            {spec.name: spec},
            sweep.trials_dir,
            lambda s, m, origin: sweep.launch(s, multiplier, origin, base_file),
            sweep.on_record,
        )
        run_trials(plan, [spec.name], 1, sweep.sweep_dir / "tune", "verify")
        record = read_record(sweep.trials_dir / spec.name)
    return record


def sweep_summary(
    sweep: Sweep, records: list[dict[str, Any]], started: float, wall: float, cluster: dict[str, float]
) -> dict[str, Any]:
    tree = sweep.tree
    search = [dict(r) for r in records if r["kind"] == LR_SEARCH]
    chosen = sweep.chosen_multipliers()
    for r in search:
        r["best"] = r["lr_multiplier"] == chosen.get(r["size"])
    return {
        "sweep": tree.run.name,
        "schedule": tree.sweep.schedule,
        "cooldown_fraction": tree.sweep.cooldown_fraction,
        "budgets": sweep.design.budgets,
        "tokens_per_step": sweep.design.tokens_per_step,
        "train_tokens": sweep.design.train_tokens,
        "seq_len": sweep.design.seq_len,
        "n_label": summaries.N_LABEL,
        "target_flops": tree.sweep.target_flops,
        "trial_files": summaries.trial_files(tree.sweep.schedule),
        "trials": [{k: v for k, v in r.items() if k not in ("curve", "timing")} for r in records],
        "lr_search": [{k: v for k, v in r.items() if k not in ("curve", "timing")} for r in search],
        "compute": summaries.compute({r["name"]: r for r in records}),
        "utilization": summaries.utilization(records, started, wall, cluster.get("CPU", 0.0)),
    }

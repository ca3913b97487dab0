"""The sweep's design and command line, without training: grids, counts, schedules, refusals, --dry-run.

Also the launch checks a sweep leans on: a dataset is hashed in full once, and later
launches re-hash only shards whose files changed.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator import dataset_checks
from orchestrator.config import RECIPE_DIR, run_cli
from orchestrator.pretrain import parse_cli as parse_pretrain
from orchestrator.sweep import base_config, main, parse_cli
from orchestrator.sweeping.design import GRID, LR_SEARCH, decay_start, design
from orchestrator.sweeping.family import size_for
from workloads.data import shards as shards_module
from workloads.errors import UserInputError
from workloads.model import count_parameters, training_flops_per_token

TRAIN_TOKENS = 300_000


def tiny_design(*overrides: str):
    tree, _ = parse_cli(["--config", "tiny", *overrides])
    return tree, design(tree, base_config(tree), TRAIN_TOKENS)


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (RECIPE_DIR / "sweep").glob("*.yaml")))
def test_every_shipped_sweep_recipe_parses_with_its_base(recipe, capsys):
    with pytest.raises(SystemExit) as done:
        parse_cli(["--config", recipe, "--print-config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sweep"]["budgets"] or printed["sweep"]["grid"]


def test_isoflop_grid_spends_each_budget_on_exact_flops():
    tree, d = tiny_design()
    grid = [s for s in d.specs if s.kind == GRID]
    assert sorted({s.budget for s in grid}) == [4e10, 8e10]
    for budget in (4e10, 8e10):
        members = sorted((s for s in grid if s.budget == budget), key=lambda s: s.size.N)
        assert len(members) == 3
        for s in members:
            model = s.size.model
            assert s.C == training_flops_per_token(model, 64) * s.D  # the exact count, not 6ND
            assert abs(s.C / budget - 1) < 0.05  # D is whole steps of 512 tokens
            embedding = model.vocab_size * model.d_model
            assert s.size.N == count_parameters(model) - embedding and s.size.N_head == s.size.N + embedding
            assert s.epochs == s.D / TRAIN_TOKENS
        ratios = [b.size.N / a.size.N for a, b in zip(members, members[1:])]
        assert all(2 < r < 8 for r in ratios)  # spaced in log around the ladder's 4x


def test_wsd_branches_start_where_their_own_cooldown_starts():
    tree, d = tiny_design()
    specs = d.by_name()
    branches = [s for s in d.specs if s.branch_of]
    assert branches
    for b in branches:
        main_run = specs[b.branch_of]
        assert main_run.size == b.size and main_run.steps > b.steps and not main_run.branch_of
        assert b.branch_step == decay_start(b.steps, tree.sweep.cooldown_fraction)
        assert b.branch_step in main_run.checkpoint_steps and b.warmup == main_run.warmup
        assert b.trained_steps == b.steps - b.branch_step
    cosine = tiny_design("--sweep.schedule=cosine")[1]
    assert not any(s.branch_of for s in cosine.specs) and len(cosine.specs) == len(d.specs)
    both = tiny_design("--sweep.schedule=both")[1]
    assert {s.group for s in both.specs} == {"cosine", "wsd"} and len(both.specs) == 2 * len(cosine.specs)


def test_learning_rate_search_runs_first_and_hands_over_its_best_trial():
    tree, d = tiny_design("--sweep.tune_lr=true", "--sweep.lr_multipliers=[0.5, 2]")
    search = [s for s in d.specs if s.kind == LR_SEARCH]
    sizes = {s.size.key for s in d.specs if s.kind == GRID}
    assert len(search) == 2 * len(sizes) and d.specs[:len(search)] == search
    for key in sizes:
        mine = [s for s in d.specs if s.kind == GRID and s.size.key == key]
        smallest = min(mine, key=lambda s: s.steps)
        assert smallest.reuse_search and not smallest.branch_of
        assert all(s.lr_multiplier is None and len(s.lr_search) == 2 for s in mine)
        assert {s.steps for s in search if s.size.key == key} == {smallest.steps}


def test_explicit_grid_and_family_shapes():
    tree, d = tiny_design("--sweep.grid=[[4000, 2.0e5], [16000, 1.0e5], [30000, 5.0e4]]", "--sweep.schedule=cosine")
    assert [(s.size.N, s.D) for s in d.specs] == [(4144, 200192), (16480, 99840), (27792, 50176)]
    base = parse_pretrain(["--config", "tiny"]).model
    for target in (2e3, 3e4, 1e6, 1e8):
        size = size_for(target, base, tree.family)
        assert size.model.d_model % tree.family.head_dim == 0 and size.model.n_heads * 8 == size.model.d_model
        assert abs(math.log(size.N / target)) < math.log(2.5)


def test_grid_needing_too_many_epochs_or_too_few_steps_is_named():
    _, d = tiny_design("--sweep.max_epochs=1.0", "--sweep.min_steps=300")
    assert any("C4e+10-L1-d8 needs 3.22 epochs of the corpus (sweep.max_epochs=1)" in p for p in d.problems)
    assert any("C8e+10-L2-d48 trains 283 steps (sweep.min_steps=300)" in p for p in d.problems)


@pytest.mark.parametrize("override, message", [
    ("--sweep.schedule=linear", "sweep.schedule: 'linear' is not one of cosine, wsd, both"),
    ("--sweep.budgets=[1e10, -3]", "sweep.budgets: -3 is not a positive number of FLOPs"),
    ("--sweep.cooldown_fraction=1.5", "sweep.cooldown_fraction: must be in (0, 1), got 1.5"),
    ("--family.head_dim=7", "family.head_dim: must be an even number >= 2 (RoPE rotates pairs), got 7"),
    ("--sweep.base_overrides=[--train.lr=abc]", "sweep.base: tiny --train.lr=abc: train.lr: expected float, got 'abc'"),
    ("--sweep.sizes=3", "unknown config key 'sweep.sizes'"),
])
def test_bad_input_is_one_line_and_exit_2(override, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        run_cli(main, ["--config", "tiny", f"--run.output_dir={tmp_path}", override])
    assert done.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: {message}")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_dry_run_prints_the_grid_and_an_estimate_and_trains_nothing(tiny_dataset, tmp_path, ray_local, capsys):
    overrides = f"--sweep.base_overrides=[--train.micro_batch_size=8, --train.grad_accum_steps=1, --data.corpus={tiny_dataset}]"
    main(["--config", "tiny", f"--run.output_dir={tmp_path}", overrides, "--dry-run"])
    out = capsys.readouterr().out
    _, d = tiny_design()
    for s in d.specs:
        assert s.name in out
    assert "branch of C8e+10-L1-d16 @ 726" in out and "estimated wall time" in out
    assert not (tmp_path / "sweep-tiny" / "trials").exists()
    with pytest.raises(UserInputError, match=r"^sweep: C4e\+10-L1-d8 needs 3\.\d\d epochs of the corpus"):
        main(["--config", "tiny", f"--run.output_dir={tmp_path}", overrides, "--sweep.max_epochs=2"])


@pytest.mark.slow
def test_launch_checks_hash_each_shard_once_and_again_only_when_it_changed(tiny_dataset, tmp_path, monkeypatch):
    dataset = tmp_path / tiny_dataset.name
    shutil.copytree(tiny_dataset, dataset)
    (dataset / dataset_checks.VERIFIED_FILE).unlink(missing_ok=True)
    cfg = parse_pretrain(["--config", "tiny", f"--data.corpus={dataset}"])
    hashed = []
    real_sha256 = shards_module.file_sha256  # what every shard check hashes with: count its calls
    monkeypatch.setattr(shards_module, "file_sha256", lambda path: hashed.append(Path(path).name) or real_sha256(path))

    dataset_checks.check_dataset(cfg, dataset)
    shards = {"train-00000-000.arrow", "val-00000-000.arrow"}
    assert shards <= set(hashed)
    hashed.clear()
    dataset_checks.check_dataset(cfg, dataset)
    assert not shards & set(hashed)  # metadata reads only

    shard = dataset / "val-00000-000.arrow"
    stat = shard.stat()
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same modification time
    with pytest.raises(UserInputError, match="sha256"):
        dataset_checks.check_dataset(cfg, dataset)

"""The sweep's grid: IsoFLOP budgets spent on exact FLOPs, WSD branch points, the learning-rate search, explicit
grids, refused grids."""

from __future__ import annotations

import math

from orchestrator.scaling_laws.family import size_for
from orchestrator.scaling_laws.grid import GRID, LR_SEARCH, decay_start, design
from orchestrator.scaling_laws.sweep import base_config, parse_cli
from orchestrator.stages.pretrain import PRETRAIN
from workloads.model import count_parameters, training_flops_per_token

TRAIN_TOKENS = 300_000


def tiny_design(*overrides: str):
    tree, _ = parse_cli(["--config", "tiny", *overrides])
    return tree, design(tree, base_config(tree), TRAIN_TOKENS)


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
    assert len(search) == 2 * len(sizes) and d.specs[: len(search)] == search
    for key in sizes:
        mine = [s for s in d.specs if s.kind == GRID and s.size.key == key]
        smallest = min(mine, key=lambda s: s.steps)
        assert smallest.reuse_search and not smallest.branch_of
        assert all(s.lr_multiplier is None and len(s.lr_search) == 2 for s in mine)
        assert {s.steps for s in search if s.size.key == key} == {smallest.steps}


def test_explicit_grid_and_family_shapes():
    tree, d = tiny_design("--sweep.grid=[[4000, 2.0e5], [16000, 1.0e5], [30000, 5.0e4]]", "--sweep.schedule=cosine")
    assert [(s.size.N, s.D) for s in d.specs] == [(4144, 200192), (16480, 99840), (27792, 50176)]
    base = PRETRAIN.parse(["--config", "tiny"]).model
    for target in (2e3, 3e4, 1e6, 1e8):
        size = size_for(target, base, tree.family)
        assert size.model.d_model % tree.family.head_dim == 0 and size.model.n_heads * 8 == size.model.d_model
        assert abs(math.log(size.N / target)) < math.log(2.5)


def test_grid_needing_too_many_epochs_or_too_few_steps_is_named():
    _, d = tiny_design("--sweep.max_epochs=1.0", "--sweep.min_steps=300")
    assert any("C4e+10-L1-d8 needs 3.22 epochs of the corpus (sweep.max_epochs=1)" in p for p in d.problems)
    assert any("C8e+10-L2-d48 trains 283 steps (sweep.min_steps=300)" in p for p in d.problems)

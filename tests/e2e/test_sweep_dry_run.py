"""`python -m orchestrator.sweep` refusing bad input and printing a dry run, as a user runs it."""

from __future__ import annotations

import pytest

from orchestrator.config.parser import run_cli
from orchestrator.scaling_laws.grid import design
from orchestrator.scaling_laws.sweep import base_config, parse_cli
from orchestrator.sweep import main
from workloads.errors import UserInputError

TRAIN_TOKENS = 300_000


def tiny_design(*overrides: str):
    tree, _ = parse_cli(["--config", "tiny", *overrides])
    return tree, design(tree, base_config(tree), TRAIN_TOKENS)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--sweep.schedule=linear", "sweep.schedule: 'linear' is not one of cosine, wsd, both"),
        ("--sweep.budgets=[1e10, -3]", "sweep.budgets: -3 is not a positive number of FLOPs"),
        ("--sweep.cooldown_fraction=1.5", "sweep.cooldown_fraction: must be in (0, 1), got 1.5"),
        ("--family.head_dim=7", "family.head_dim: must be an even number >= 2 (RoPE rotates pairs), got 7"),
        (
            "--sweep.base_overrides=[--train.lr=abc]",
            "sweep.base: tiny --train.lr=abc: train.lr: expected float, got 'abc'",
        ),
        ("--sweep.sizes=3", "unknown config key 'sweep.sizes'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(override, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        run_cli(main, ["--config", "tiny", f"--run.output_dir={tmp_path}", override])
    assert done.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: {message}")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_dry_run_prints_the_grid_and_an_estimate_and_trains_nothing(tiny_dataset, tmp_path, shared_ray, capsys):
    overrides = (
        f"--sweep.base_overrides=[--train.micro_batch_size=8, --train.grad_accum_steps=1, --data.corpus={tiny_dataset}]"
    )
    main(["--config", "tiny", f"--run.output_dir={tmp_path}", overrides, "--dry-run"])
    out = capsys.readouterr().out
    _, d = tiny_design()
    for s in d.specs:
        assert s.name in out
    assert "branch of C8e+10-L1-d16 @ 726" in out and "estimated wall time" in out
    assert not (tmp_path / "sweep-tiny" / "trials").exists()
    with pytest.raises(UserInputError, match=r"^sweep: C4e\+10-L1-d8 needs 3\.\d\d epochs of the corpus"):
        main(["--config", "tiny", f"--run.output_dir={tmp_path}", overrides, "--sweep.max_epochs=2"])

"""The config system: shipped recipes, overrides, type checks and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator.config.parser import recipe_names
from orchestrator.stages.pretrain import PRETRAIN
from workloads.errors import UserInputError


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_loads_and_validates(name):
    cfg = PRETRAIN.parse(["--config", name])
    assert cfg.train.max_steps >= 1
    assert cfg.run.name


def test_required_keys_exist_with_their_names():
    cfg = PRETRAIN.parse(
        [
            "--data.corpus=/tmp/x.txt",
            "--train.max_steps=7",
            "--scaling.num_workers=2",
            "--scaling.use_gpu=false",
            "--deepspeed.zero_stage=3",
            "--run.name=abc",
            "--run.output_dir=/tmp/out",
        ]
    )
    assert (cfg.data.corpus, cfg.train.max_steps, cfg.scaling.num_workers) == ("/tmp/x.txt", 7, 2)
    assert (cfg.scaling.use_gpu, cfg.deepspeed.zero_stage, cfg.run.name, cfg.run.output_dir) == (
        False,
        3,
        "abc",
        "/tmp/out",
    )


def test_overrides_keep_field_types_and_beat_the_recipe():
    cfg = PRETRAIN.parse(
        ["--config", "tiny", "--train.lr", "3e-4", "--scaling.cpus_per_worker=0.5", "--deepspeed.extra={a: 1}"]
    )
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.scaling.cpus_per_worker == 0.5
    assert cfg.deepspeed.extra == {"a": 1}
    assert cfg.model.d_model == 64  # from the tiny recipe, untouched


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train.max_stepz=3"], "unknown config key 'train.max_stepz'"),
        (["--trian.max_steps=3"], "unknown config section 'trian'"),
        (["--train.max_steps=ten"], "train.max_steps: expected int, got 'ten'"),
        (["--scaling.use_gpu=maybe"], "scaling.use_gpu: expected true or false, got 'maybe'"),
        (["--deepspeed.zero_stage=4"], "deepspeed.zero_stage: must be 0, 1, 2 or 3, got 4"),
        (
            ["--config", "tiny", "--train.global_batch_size=12"],
            "train.global_batch_size=12 cannot be made from micro_batch_size 4 x grad_accum_steps 2 x "
            "data-parallel degree 1 = 8",
        ),
        (["--config", "tiny", "--data.seq_len=128"], "data.seq_len=128 exceeds model.max_seq_len=64"),
        (["--config", "no-such-recipe"], "--config: unknown recipe 'no-such-recipe'"),
        (["--config", "/nonexistent/recipe.yaml"], "--config: no such file: /nonexistent/recipe.yaml"),
    ],
)
def test_bad_config_fails_with_one_line_naming_the_key(args, message):
    with pytest.raises(UserInputError) as caught:
        PRETRAIN.parse(args)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_wrong_type_in_a_recipe_file_names_the_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  max_steps: [1, 2]\n")
    with pytest.raises(UserInputError, match=r"train.max_steps: expected int, got \[1, 2\]"):
        PRETRAIN.parse(["--config", str(recipe)])


def test_help_prints_every_field_with_its_doc(capsys):
    with pytest.raises(SystemExit) as exit_info:
        PRETRAIN.parse(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--deepspeed.zero_stage=1 (int)  ZeRO stage" in text
    assert "--data.corpus=" in text and "--scaling.num_workers=" in text and "--run.output_dir=" in text


def test_cli_bad_key_exits_nonzero_with_one_error_line(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.pretrain",
            "--config",
            "tiny",
            "--train.max_stepz=3",
            f"--run.output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown config key 'train.max_stepz'"), done.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written for a refused config"

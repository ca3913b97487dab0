"""Every shipped sweep recipe parses with its base pretrain recipe."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.config.parser import RECIPE_DIR
from orchestrator.scaling_laws.sweep import parse_cli


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (RECIPE_DIR / "sweep").glob("*.yaml")))
def test_every_shipped_sweep_recipe_parses_with_its_base(recipe, capsys):
    with pytest.raises(SystemExit) as done:
        parse_cli(["--config", recipe, "--print-config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sweep"]["budgets"] or printed["sweep"]["grid"]

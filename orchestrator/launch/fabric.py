"""NCCL fabric presets: the environment variables that put NCCL on a network.

A preset is a Ray runtime-environment file holding only `env_vars`
(InfiniBand, RoCE, EFA, TCP, debug). The orchestrator merges the chosen one
into the Ray Train workers' runtime env when `scaling.nccl_preset` is set.

The presets ship inside this package (`orchestrator/launch/nccl_presets/`), so they
are found from a non-editable install too; `cluster/nccl/` holds identical
copies for `ray job submit --runtime-env cluster/nccl/<name>.yaml`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from workloads.errors import UserInputError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

_SUFFIX = ".yaml"


def _preset_files() -> dict[str, Traversable]:
    folder = resources.files("orchestrator.launch") / "nccl_presets"
    return {entry.name[: -len(_SUFFIX)]: entry for entry in folder.iterdir() if entry.name.endswith(_SUFFIX)}


def list_presets() -> list[str]:
    """Names of the shipped presets, e.g. ["debug", "efa", "infiniband", ...]."""
    return sorted(_preset_files())


def load_nccl_preset(name_or_path: str) -> dict[str, str]:
    """The env vars of a shipped preset (by name) or of a runtime-env YAML file.

    Raises UserInputError, with a one-line message naming the value, for an
    unknown name, a missing or malformed file, or a value that is not a scalar.
    """
    presets = _preset_files()
    if name_or_path in presets:
        text = presets[name_or_path].read_text(encoding="utf-8")
        return _env_vars(text, f"NCCL preset {name_or_path!r}")

    path = Path(name_or_path).expanduser()
    if path.is_file():
        return _env_vars(path.read_text(encoding="utf-8"), str(path))

    available = ", ".join(sorted(presets))
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise UserInputError(f"NCCL preset file {name_or_path!r} does not exist (shipped presets: {available})")
    raise UserInputError(
        f"unknown NCCL preset {name_or_path!r}: available presets are {available}, "
        "or give the path to a runtime-env YAML file"
    )


def _env_vars(text: str, source: str) -> dict[str, str]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UserInputError(f"{source}: not valid YAML: {' '.join(str(error).split())}") from None

    # Only env_vars: a preset that also asked for pip packages or a working_dir
    # would have those silently dropped when merged into the workers' env.
    if not isinstance(document, dict) or set(document) != {"env_vars"}:
        raise UserInputError(f"{source}: expected a runtime env with the single key 'env_vars'")
    env_vars = document["env_vars"]
    if not isinstance(env_vars, dict) or not env_vars:
        raise UserInputError(f"{source}: 'env_vars' must be a non-empty mapping of NAME: value")

    result: dict[str, str] = {}
    for name, value in env_vars.items():
        # A YAML true/false or a null has no single spelling NCCL agrees on;
        # make the author write "1", "0" or the intended string.
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise UserInputError(f"{source}: env var {name!r} must be a string or number, got {value!r}")
        result[str(name)] = str(value)
    return result

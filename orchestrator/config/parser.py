"""Typed config trees from YAML recipes plus dotted command-line overrides.

A config tree is a dataclass whose fields are section dataclasses (`run`, `data`,
`model`, ...); each section's fields are declared with `workloads.schema.option`
so their documentation lives where they are declared. This module knows nothing
of any particular tree: it loads, overrides, type-checks and prints help.

Precedence: field defaults < recipe YAML < `--section.field=value` overrides.
Unknown keys and values of the wrong type fail with one line naming them.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from workloads.errors import UserInputError
from workloads.schema import field_doc

RECIPE_DIR = Path(__file__).parent / "recipes"

T = TypeVar("T")


def recipe_names(recipe_dir: Path = RECIPE_DIR) -> list[str]:
    return sorted(p.stem for p in recipe_dir.glob("*.yaml"))


def recipe_path(name_or_file: str, recipe_dir: Path = RECIPE_DIR) -> Path:
    """A shipped recipe by name (`tiny`) or a YAML file path."""
    candidate = Path(name_or_file)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise UserInputError(f"--config: no such file: {name_or_file}")
        return candidate
    shipped = recipe_dir / f"{name_or_file}.yaml"
    if not shipped.is_file():
        raise UserInputError(
            f"--config: unknown recipe '{name_or_file}' (shipped: {', '.join(recipe_names(recipe_dir))}; "
            "or give a .yaml path)"
        )
    return shipped


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        first_line = str(err).splitlines()[0]
        raise UserInputError(f"{path}: not valid YAML: {first_line}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, expected: Any, key: str, from_text: bool) -> Any:
    """Check `value` against a field type; text from the command line is parsed first."""
    origin = typing.get_origin(expected) or expected
    if from_text and origin is not str:
        if origin is bool:
            lowered = value.lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise UserInputError(f"{key}: expected true or false, got '{value}'")
        if origin in (dict, list):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise UserInputError(f"{key}: expected a {origin.__name__} in YAML form, got '{value}'") from None
        else:
            try:
                return origin(value)
            except ValueError:
                raise UserInputError(f"{key}: expected {origin.__name__}, got '{value}'") from None
    if origin is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads 3e-4 as a string: accept any spelling of a number
        except ValueError:
            pass
    if origin is int and isinstance(value, bool) or not isinstance(value, origin):
        raise UserInputError(f"{key}: expected {origin.__name__}, got {value!r} ({type(value).__name__})")
    return value


def build_section(cls: type[T], values: dict[str, Any], section: str, from_text: set[str] = frozenset()) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise UserInputError(
                f"unknown config key '{section}.{key}' (known in {section}: {', '.join(sorted(names))})"
            )
    types = _field_types(cls)
    typed = {k: _coerce(v, types[k], f"{section}.{k}", k in from_text) for k, v in values.items()}
    return cls(**typed)


def build_tree(tree_cls: type[T], values: dict[str, Any], text_keys: set[str] = frozenset()) -> T:
    """Build a config tree from a {section: {field: value}} mapping."""
    sections = {f.name: f for f in dataclasses.fields(tree_cls)}
    types = _field_types(tree_cls)
    for name, body in values.items():
        if name not in sections:
            raise UserInputError(f"unknown config section '{name}' (known: {', '.join(sections)})")
        if not isinstance(body, dict):
            raise UserInputError(f"config section '{name}' must be a mapping, got {body!r}")
    built = {}
    for name in sections:
        section_text_keys = {k.split(".", 1)[1] for k in text_keys if k.startswith(name + ".")}
        built[name] = build_section(types[name], values.get(name, {}), name, section_text_keys)
    return tree_cls(**built)


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`--section.field=value` or `--section.field value` into {"section.field": "value"}."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise UserInputError(f"unexpected argument '{arg}' (overrides look like --section.field=value)")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(args):
                raise UserInputError(f"{arg[2:]}: missing value")
            key, value = arg[2:], args[i + 1]
            i += 1
        overrides[key] = value
        i += 1
    return overrides


def merge_overrides(values: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = {section: dict(body) if isinstance(body, dict) else body for section, body in values.items()}
    for key, value in overrides.items():
        if "." not in key:
            raise UserInputError(f"override '{key}': expected section.field")
        section, field = key.split(".", 1)
        merged.setdefault(section, {})
        if not isinstance(merged[section], dict):
            raise UserInputError(f"config section '{section}' must be a mapping")
        merged[section][field] = value
    return merged


def to_dict(tree: Any) -> dict[str, Any]:
    return dataclasses.asdict(tree)


def help_text(tree_cls: type, prog: str, summary: str, recipe_dir: Path = RECIPE_DIR) -> str:
    lines = [
        f"usage: python -m {prog} [--config NAME_OR_YAML] [--section.field=value ...] [--print-config]",
        "",
        summary,
        "",
        f"--config      a shipped recipe ({', '.join(recipe_names(recipe_dir))}) or a YAML file",
        "--print-config  print the resolved config as YAML and exit",
        "",
    ]
    types = _field_types(tree_cls)
    for section in dataclasses.fields(tree_cls):
        section_cls = types[section.name]
        lines.append(f"[{section.name}] {(section_cls.__doc__ or '').strip().splitlines()[0]}")
        hints = _field_types(section_cls)
        for f in dataclasses.fields(section_cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            type_name = getattr(hints[f.name], "__name__", str(hints[f.name]))
            lines.append(f"  --{section.name}.{f.name}={default!r} ({type_name})  {field_doc(f)}")
        lines.append("")
    return "\n".join(lines)


def parse_tree(
    tree_cls: type[T],
    argv: list[str] | None,
    prog: str,
    summary: str,
    default_recipe: str,
    resolve=None,
    recipe_dir: Path = RECIPE_DIR,
) -> T:
    """The whole command line: --help, --config, overrides, --print-config.

    `resolve(tree)`, when given, fills in what the tree's own values imply (e.g. a model
    shape read from `model.init_from`) before validation and printing. Returns a
    validated tree (the tree's `validate()` is called).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(help_text(tree_cls, prog, summary, recipe_dir))
        raise SystemExit(0)
    print_config = "--print-config" in args
    args = [a for a in args if a != "--print-config"]
    recipe = default_recipe
    rest: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--config":
            if i + 1 >= len(args):
                raise UserInputError("--config: missing recipe name or YAML path")
            recipe = args[i + 1]
            i += 2
        elif args[i].startswith("--config="):
            recipe = args[i].split("=", 1)[1]
            i += 1
        else:
            rest.append(args[i])
            i += 1
    overrides = parse_overrides(rest)
    tree = load_tree(tree_cls, recipe, overrides, resolve, recipe_dir, overrides_are_text=True)
    if print_config:
        print(yaml.safe_dump(to_dict(tree), sort_keys=False), end="")
        raise SystemExit(0)
    return tree


def load_tree(
    tree_cls: type[T],
    recipe: str,
    overrides: Mapping[str, Any],
    resolve=None,
    recipe_dir: Path = RECIPE_DIR,
    overrides_are_text: bool = False,
) -> T:
    """A validated tree from a recipe (shipped name or YAML file) and {"section.field": value} overrides.

    Overrides are values as YAML or code gives them (a chain's stage overrides, a sweep's trials), or,
    with `overrides_are_text`, text from a command line, parsed by each field's type. `resolve` as in
    `parse_tree`.
    """
    values = merge_overrides(load_yaml(recipe_path(recipe, recipe_dir)), overrides)
    tree = build_tree(tree_cls, values, text_keys=set(overrides) if overrides_are_text else frozenset())
    if resolve is not None:
        resolve(tree)
    tree.validate()
    return tree


def tree_from_dict(tree_cls: type[T], values: Mapping[str, Any]) -> T:
    """A validated tree from its serialised form (`to_dict`): what one component hands another."""
    tree = build_tree(tree_cls, dict(values))
    tree.validate()
    return tree


def run_cli(main_fn, *args) -> None:
    """Run an entry point; bad input becomes one `error:` line and exit status 2."""
    try:
        main_fn(*args)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

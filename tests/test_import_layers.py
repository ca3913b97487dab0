"""The tree's shape, read from the source: imports run one way through the layers, with no cycles.

    commands (orchestrator's top-level modules) -> benchmarks -> scaling_laws -> stages -> model_tools
        -> data -> launch -> config -> workloads

A module may import its own layer and any layer below it; nothing imports a command; `workloads`
never imports `orchestrator`. Imports inside functions count (only `if TYPE_CHECKING:` blocks, which
never run, do not), and each one must say in a comment which heavy package it keeps off an import
path. The GPU check's modules import, and its command runs, with Ray, DeepSpeed and MLflow absent.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

COMMANDS = "commands"
LAYERS = (  # lowest first
    "workloads",
    "orchestrator.config",
    "orchestrator.launch",
    "orchestrator.data",
    "orchestrator.model_tools",
    "orchestrator.stages",
    "orchestrator.scaling_laws",
    "orchestrator.benchmarks",
    COMMANDS,
)
# What a lazy import may keep off a path: importing these costs seconds, or they are optional extras.
HEAVY = ("ray", "deepspeed", "mlflow", "transformers", "matplotlib", "peft", "lm_eval", "google", "pyarrow")


def module_files() -> dict[str, Path]:
    """{dotted module name: its file} for every module of orchestrator/ and workloads/."""
    found = {}
    for package in ("orchestrator", "workloads"):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def under_type_checking(tree: ast.Module) -> set[int]:
    """Ids of import nodes inside `if TYPE_CHECKING:` blocks (annotations only; they never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return skipped


def imported_names(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[ast.stmt, str]]:
    """(import node, the project module it imports) for every import of a project module in `path`."""
    tree = ast.parse(path.read_text())
    skipped = under_type_checking(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports the module; `from module import name` the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a package path: the deepest module
                target = target.rpartition(".")[0]
            if target:
                found.append((node, target))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {
        name: {target for _, target in imported_names(name, path, modules) if target != name}
        for name, path in modules.items()
    }


def layer_of(module: str) -> str:
    top_level = module.count(".") == 1 and not (REPO / module.replace(".", "/")).is_dir()
    if module == "orchestrator" or (module.startswith("orchestrator.") and top_level):
        return COMMANDS
    return next(layer for layer in LAYERS[:-1] if module == layer or module.startswith(layer + "."))


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_imports_run_down_the_layers():
    against = []
    for module, targets in sorted(import_graph().items()):
        for target in sorted(targets):
            if layer_of(target) == COMMANDS and module != "orchestrator.__main__":
                against.append(f"{module} -> {target} (a command is imported by nothing)")
            elif LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module)):
                against.append(f"{module} ({layer_of(module)}) -> {target} ({layer_of(target)})")
    assert against == []


def test_every_module_has_a_layer_and_commands_are_the_top_level():
    modules = module_files()
    commands = sorted(name for name in modules if layer_of(name) == COMMANDS)
    assert "orchestrator.pretrain" in commands and "orchestrator.scaling" in commands
    assert not [name for name in commands if (REPO / name.replace(".", "/")).is_dir() and name != "orchestrator"]


def lazy_imports_without_a_reason() -> list[str]:
    problems = []
    for path in module_files().values():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        skipped = under_type_checking(tree)
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in skipped:
                    continue
                problem = lazy_import_problem(node, lines)
                if problem:
                    problems.append(f"{path.relative_to(REPO)}:{node.lineno}: {problem}")
    return problems


def lazy_import_problem(node: ast.stmt, lines: list[str]) -> str:
    """Why this import inside a function breaks the rule, or ''.

    The comments on its block of imports (and the comment lines right above the block) must name
    the heavy package it imports, or, for a project module, the heavy package that module pulls in.
    """
    is_import = re.compile(r"\s*(import |from \S+ import |\)$|$)")
    start = node.lineno - 1
    while start > 0 and is_import.match(lines[start - 1]):
        start -= 1
    end = node.end_lineno - 1
    while end + 1 < len(lines) and is_import.match(lines[end + 1]) and lines[end + 1].strip():
        end += 1
    while start > 0 and lines[start - 1].strip().startswith("#"):
        start -= 1
    comments = " ".join(re.findall(r"#.*", "\n".join(lines[start : end + 1])))
    imported = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    heavy = sorted({m.split(".")[0] for m in imported} & set(HEAVY))
    if heavy:
        missing = [package for package in heavy if not re.search(rf"\b{package}\b", comments)]
        return f"imports {', '.join(heavy)} inside a function without a comment saying why" if missing else ""
    if not any(re.search(rf"\b{package}\b", comments) for package in HEAVY):
        return f"imports {', '.join(imported)} inside a function, keeping no heavy package off a path"
    return ""


def test_every_import_inside_a_function_says_which_heavy_package_it_defers():
    assert lazy_imports_without_a_reason() == []


def test_the_lazy_import_rule_refuses_an_import_with_no_reason():
    def problems(source: str) -> list[str]:
        nodes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))]
        return [lazy_import_problem(n, source.splitlines()) for n in nodes]

    assert all(problems("def f():\n    import json\n\n    import ray\n"))
    assert problems("def f():\n    # mlflow: only when recorded\n    import mlflow\n") == [""]
    assert problems("def f():\n    from workloads.loop import train_worker  # ray: the loop imports Ray Train\n") == [
        ""
    ]


# Ray, DeepSpeed and MLflow made unimportable, as on the lent GPU machine, where none is installed.
BLOCKER = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "deepspeed", "mlflow"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, Absent())
"""
GPU_CHECK_MODULES = (
    "orchestrator.bench",
    "orchestrator.benchmarks.runner",
    "orchestrator.benchmarks.gpu",
    "orchestrator.stages.pretrain",
    "workloads.reference_loop",
    "workloads.model",
    "workloads.generation",
    "workloads.perf",
    "workloads.checkpoints.loading",
    "workloads.hf_interop",
    "workloads.parallel.engine",
)


def run_blocked(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code, *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_the_gpu_check_imports_and_runs_without_ray_deepspeed_or_mlflow():
    imported = run_blocked(
        f"import importlib\nfor m in {GPU_CHECK_MODULES!r}: importlib.import_module(m)\n"
        "print('all imported', flush=True)\nimport ray\n"
    )
    assert "all imported" in imported.stdout, imported.stderr[-2000:]
    assert imported.returncode != 0 and "blocked by the test" in imported.stderr  # and the blocker does block
    bench = run_blocked(
        "import runpy, sys\nsys.argv = ['bench', '--only', 'gpu']\n"
        "runpy.run_module('orchestrator.bench', run_name='__main__')\n"
    )
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert "bench: gpu: skipped" in bench.stdout or "gpu: gpt-125m-gpu" in bench.stdout


def test_the_gpu_tests_are_collected_without_ray_deepspeed_or_mlflow():
    collected = run_blocked(
        "import sys, pytest\nsys.exit(pytest.main(sys.argv[1:]))\n",
        "--collect-only",
        "-q",
        "-m",
        "gpu",
        "-p",
        "no:cacheprovider",
        "tests/workloads/test_model_on_gpu.py",
    )
    assert collected.returncode == 0, collected.stdout[-2000:] + collected.stderr[-2000:]
    assert re.search(r"\b1 test collected\b", collected.stdout), collected.stdout[-500:]


def test_the_layers_are_drawn_in_the_architecture_document():
    doc = (REPO / "docs" / "architecture.md").read_text()
    assert [layer for layer in LAYERS[1:-1] if layer.replace(".", "/") + "/" not in doc] == []

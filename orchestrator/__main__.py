"""`python -m orchestrator [COMMAND [ARGS...]]` (or the `orchestrator` console script): list the commands, or run one.

`python -m orchestrator pretrain --config tiny` runs exactly what `python -m orchestrator.pretrain
--config tiny` runs. The commands are the top-level modules of this package; each one's summary is
the first line of its docstring, read without importing it.
"""

from __future__ import annotations

import ast
import pkgutil
import runpy
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent


def commands() -> dict[str, str]:
    """{command: its one-line summary}, for every top-level module of the package."""
    found = {}
    for module in pkgutil.iter_modules([str(PACKAGE)]):
        if module.ispkg or module.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse((PACKAGE / f"{module.name}.py").read_text())) or ""
        summary = doc.splitlines()[0] if doc else ""
        if summary.startswith("`python -m") and "`: " in summary:  # "`python -m orchestrator.x ...`: what it does"
            summary = summary.split("`: ", 1)[1]
        found[module.name] = summary[:1].upper() + summary[1:]
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    known = commands()
    if not args or args[0] in ("-h", "--help"):
        width = max(map(len, known))
        print("usage: python -m orchestrator COMMAND [ARGS...]  (or: orchestrator COMMAND [ARGS...])\n\ncommands:")
        for name, summary in known.items():
            print(f"  {name:<{width}}  {summary}")
        print("\n`python -m orchestrator COMMAND --help` shows a command's own options.")
        return
    command = args[0]
    if command not in known:
        print(f"error: unknown command '{command}' (commands: {', '.join(known)})", file=sys.stderr)
        raise SystemExit(2)
    sys.argv = [f"orchestrator {command}", *args[1:]]
    runpy.run_module(f"orchestrator.{command}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

"""The largest modules and functions of the package, for docs/ARCHITECTURE.md (issue 17 targets).

    python scripts/code_size.py [--top 8] [--max-module 500] [--max-function 60]

Lines are physical lines (docstrings and comments included), functions measured from `def` to
their last line with `ast`. Exits 1 when something is over a target, so CI could use it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "tts_pipeline"


def measure(src: Path = SRC) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(lines, module) and (lines, module:function) for every module and function under `src`."""
    modules: list[tuple[int, str]] = []
    functions: list[tuple[int, str]] = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        text = path.read_text(encoding="utf-8")
        modules.append((len(text.splitlines()), rel))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.name}"))  # type: ignore[operator]
    return sorted(modules, reverse=True), sorted(functions, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--max-module", type=int, default=500)
    parser.add_argument("--max-function", type=int, default=60)
    args = parser.parse_args()
    modules, functions = measure()
    print("| module | lines |\n|---|---|")
    print("\n".join(f"| `{name}` | {lines} |" for lines, name in modules[: args.top]))
    print("\n| function | lines |\n|---|---|")
    print("\n".join(f"| `{name}` | {lines} |" for lines, name in functions[: args.top]))
    over = [m for m in modules if m[0] > args.max_module] + [f for f in functions if f[0] > args.max_function]
    print(f"\n{len(over)} over the targets (module > {args.max_module}, function > {args.max_function} lines)")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``rlstack`` command line.

Commands:
  rlstack train RECIPE [key.path=value ...]   train with a local Ray (or the one in RAY_ADDRESS); --verbose
                                              shows the libraries' logs, kept in <run_dir>/logs/ otherwise
  rlstack export CHECKPOINT OUT [--dtype D]   a checkpoint as a plain Hugging Face model directory
  rlstack data inspect FILE [--recipe R]      row count, prompt lengths and reward fields of a data file
  rlstack serve [--host H] [--port P]         the HTTP run service (OpenAPI docs at /docs)
  rlstack runs submit|list|show|logs|cancel   the service's command-line client
  rlstack demo [--setup-seconds S]            the embedded GRPO recipe via ray job submit
"""

import ast
import importlib
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).parent / "bench"

COMMANDS = {
    ("train",): "rlstack.train",
    ("export",): "rlstack.export",
    ("data", "inspect"): "rlstack.inspect_data",
    ("serve",): "rlstack.api.serve",
    ("runs",): "rlstack.api.client",
    ("demo",): "rlstack.demo",
}
"""The commands but ``rlstack bench NAME``, which ``benches`` lists from ``rlstack/bench/``."""


def benches() -> dict[str, str]:
    """``rlstack bench`` command names and their descriptions: one per module of ``rlstack/bench/`` with a ``main``.

    The name is the module's with ``-`` for ``_``, the description its docstring's first line. The
    modules are parsed, not imported, so the help does not wait for torch. The demo's bench comes
    first, under ``rlstack demo``.
    """
    found = {}
    for path in sorted(BENCH_DIR.glob("*.py"), key=lambda path: (path.stem != "demo", path.stem)):
        module = ast.parse(path.read_text())
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in module.body):
            found[path.stem.replace("_", "-")] = (ast.get_docstring(module) or "").partition("\n")[0]
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = benches()
    commands = COMMANDS | {("bench", name): f"rlstack.bench.{name.replace('-', '_')}" for name in names}
    for words, module in commands.items():
        if tuple(argv[: len(words)]) == words:
            return importlib.import_module(module).main(argv[len(words) :])
    bench_lines = "".join(f"  rlstack bench {name:<30}{description}\n" for name, description in names.items())
    print(__doc__ + bench_lines, file=sys.stderr)
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())

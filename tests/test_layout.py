"""Import boundaries: the compute core runs without the web stack; the read side runs without torch."""

import subprocess
import sys

COMPUTE = ["common.compute.data", "common.compute.models", "common.compute.training", "common.compute.neighbors",
           "common.compute.kernels", "common.compute.metrics"]
NO_TORCH = ["common.study.config", "common.study.report", "common.store.db", "common.settings",
            "common.compute.names", "common.store.migrate", "common.study.jobs", "common.study.submissions",
            "common.compute.sources", "common.compute.pictures", "common.study.datasets", "api.main"]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_compute_core_imports_without_web_stack():
    # a GPU box may have only torch, numpy and scipy: make the others unimportable
    blocked = ["sqlalchemy", "fastapi", "celery", "pydantic", "pydantic_settings", "redis", "uvicorn", "alembic"]
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "".join(f"import {m}\n" for m in COMPUTE))
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr


def test_common_never_imports_an_entry_point():
    """Imports go one way: api, worker and cli use common; common names none of them."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "common"
    bad = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            entry = [n for n in names if n.split(".")[0] in ("api", "worker", "cli")]
            bad += [f"{path.relative_to(root.parent)}: {n}" for n in entry]
    assert not bad, bad


def test_read_side_never_imports_torch():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in NO_TORCH)
            + "import cli.main\ncli.main.build_parser()\n"
            + "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr


def _imports(path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_routes_and_commands_read_through_the_study_layer():
    """api/routes/ and cli/ go through common/study (reads, report, database, ...), never common.store."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bad = [f"{p.relative_to(root)}: {m}" for folder in ("api/routes", "cli") for p in (root / folder).glob("*.py")
           for m in _imports(p) if m.startswith("common.store")]
    assert not bad, bad


def test_no_import_circle_in_common():
    """The modules of common/ import each other one way only (function-level imports count too)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    modules = {".".join(p.relative_to(root).with_suffix("").parts): p for p in (root / "common").rglob("*.py")
               if "migrations" not in p.parts}
    modules = {name.removesuffix(".__init__"): p for name, p in modules.items()}
    graph = {name: {m if m in modules else m.rsplit(".", 1)[0] for m in _imports(p)} & set(modules) - {name}
             for name, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            assert state.get(nxt) != 1, f"import circle: {' -> '.join(path + [name, nxt])}"
            if nxt not in state:
                visit(nxt, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])

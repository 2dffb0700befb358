"""Import boundaries: the compute core runs without the web stack; the read side runs without torch."""

import subprocess
import sys

COMPUTE = ["common.compute.data", "common.compute.models", "common.compute.training", "common.compute.neighbors",
           "common.compute.kernels", "common.compute.metrics"]
NO_TORCH = ["common.study.config", "common.study.report", "common.store.db", "common.settings",
            "common.compute.names", "common.store.migrate", "common.study.jobs", "common.study.submissions"]


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

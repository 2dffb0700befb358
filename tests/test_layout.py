"""Import boundaries: the compute core runs without the web stack; the read side runs without torch."""

import subprocess
import sys

COMPUTE = ["common.data", "common.models", "common.training", "common.neighbors", "common.metrics"]
NO_TORCH = ["common.config", "common.report", "common.storage", "common.settings", "common.names", "common.migrate"]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_compute_core_imports_without_web_stack():
    # a GPU box may have only torch, numpy and scipy: make the others unimportable
    blocked = ["sqlalchemy", "fastapi", "celery", "pydantic", "pydantic_settings", "redis", "uvicorn", "alembic"]
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "".join(f"import {m}\n" for m in COMPUTE))
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr


def test_read_side_never_imports_torch():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in NO_TORCH)
            + "import common.cli\ncommon.cli.build_parser()\n"
            + "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr

"""The command line when its database or broker cannot be used: one line naming the URL (without its
password) and the driver's cause, exit 2, never a traceback, and no file made or changed by a read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEAD_PG = "postgresql+psycopg://probe:s3cret-pw@127.0.0.1:1/nowhere"  # nothing listens on port 1
DEAD_REDIS = "redis://:s3cret-pw@127.0.0.1:1/0"


def aeknn(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEKNN_")} | {
        "AEKNN_DATA_DIR": os.environ.get("AEKNN_DATA_DIR", str(ROOT.parent / "shared" / "data"))}
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def one_clear_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out and "s3cret-pw" not in out, out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", [["submit", "--limit", "300"], ["worker"], ["serve"],
                                     ["run", "--limit", "300", "--epochs", "1"], ["status", "1"], ["metrics"],
                                     ["neighbors", "3", "--space", "original"], ["cancel", "1"], ["resend"],
                                     ["init"], ["sweep", "--seeds", "0,1", "--limit", "300"]])
def test_an_unreachable_postgresql_is_one_line_and_exit_2(command):
    line = one_clear_line(aeknn(*command, "--db", DEAD_PG), "postgresql+psycopg://probe:***@127.0.0.1:1/nowhere",
                          "Connection refused")
    assert line.startswith(f"aeknn {command[0]}: ")


def test_an_unknown_driver_and_a_file_that_is_no_database_are_one_line(tmp_path):
    one_clear_line(aeknn("metrics", "--db", "postgresql+nosuchdriver://x/y"), "nosuchdriver")
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    one_clear_line(aeknn("metrics", "--db", str(text)), "is not a SQLite database")
    assert text.read_text() == "not a database\n"
    empty = tmp_path / "empty.db"  # a read once turned an empty file into an 819,200-byte database
    empty.touch()
    for command in (["metrics"], ["neighbors", "3", "--space", "original"], ["status", "1"]):
        one_clear_line(aeknn(*command, "--db", str(empty)), "is not a SQLite database")
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "notes.txt"]


@pytest.mark.parametrize("command", [["submit", "--limit", "300"], ["worker"]])
def test_an_unreachable_broker_is_one_line_and_exit_2(tmp_path, command):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    one_clear_line(aeknn(*command, "--db", db, "--broker", DEAD_REDIS), "redis://:***@127.0.0.1:1/0", "unreachable")


def test_version_list_and_db_before_or_after_the_command(tmp_path, data_dir):
    from common.study.config import StudyConfig
    from tests.services import study_in_process

    version = aeknn("--version")
    assert version.returncode == 0 and version.stdout.startswith("aeknn ")
    db = tmp_path / "s.db"
    eid, factory = study_in_process(f"sqlite:///{db}", StudyConfig(limit=300, epochs=1, k=20, ks=[5],
                                                                  models=["linear_mse"]), data_dir, tmp_path / "c")
    factory.kw["bind"].dispose()
    before, after = aeknn("--db", str(db), "list"), aeknn("list", "--db", str(db))
    assert before.returncode == after.returncode == 0 and before.stdout == after.stdout, before.stderr
    lines = before.stdout.splitlines()
    assert lines[0] == "1 experiment(s)" and lines[1].split()[:3] == ["id", "status", "dataset"]
    assert lines[2].split()[:4] == [str(eid), "succeeded", "mnist", "300"] and lines[2].endswith("linear_mse")
    csv_before = aeknn("--db", str(db), "metrics", "--format", "csv", "--table", "score_at_k")
    assert csv_before.returncode == 0 and csv_before.stdout.splitlines()[0] == "model,distance,k=5"
    missing = tmp_path / "nowhere.db"
    one_clear_line(aeknn("--db", str(missing), "list"), "no database at")
    assert not missing.exists()

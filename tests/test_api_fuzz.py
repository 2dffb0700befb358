"""The OpenAPI schema is the contract: schemathesis's own command line, every check it has
(`--checks all`), against `aeknn serve` as a real process over a finished study and the machine's Redis.

Every phase runs: examples, coverage (undeclared methods, missing headers, bodies the schema refuses),
fuzzing and stateful links. One check is swapped for a stricter-named twin (tests/st_hooks.py): valid data
refused by a rule OpenAPI cannot state (a field compared with another, or with stored data) is the 422
RELIABILITY.md asks for; any other refusal of schema-valid data still fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from common.study.config import StudyConfig
from tests.services import ApiServer, Encoder, study_in_process

HERE = Path(__file__).resolve().parent
BROKER = "redis://127.0.0.1:6379/15"  # a test database of the machine's Redis, emptied after


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_dir):
    where = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{where / 'fuzz.db'}"
    _, factory = study_in_process(url, StudyConfig(limit=300, epochs=1, k=20, ks=[5, 10]), data_dir, where / "c")
    factory.kw["bind"].dispose()
    server = ApiServer({"AEKNN_DATABASE_URL": url, "AEKNN_BROKER_URL": BROKER, "AEKNN_API_KEY": "",
                        "AEKNN_READ_KEY": ""}, where)
    encoder = Encoder(url, BROKER, where)  # POST /experiments/{id}/encode answers for real
    yield server, where
    encoder.stop()
    server.stop()
    redis.Redis.from_url(BROKER).flushdb()


def test_api_conforms_to_its_schema_under_every_check(served):
    server, where = served
    st = Path(sys.executable).with_name("st")
    cmd = [str(st), "run", f"{server.url}/openapi.json", "--checks", "all",
           "--exclude-checks", "positive_data_acceptance", "--max-examples", "15", "--seed", "7",
           "--no-color", "--report", "junit", "--report-dir", str(where / "report")]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "st_hooks",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    junit = next((where / "report").glob("junit-*.xml")).read_text()
    assert "Coverage" in run.stdout and "Stateful" in run.stdout  # the phases that probe methods and links ran
    cases = re.search(r"(\d+) generated, ", run.stdout)  # "Test cases: 1862 generated, 1862 passed"
    assert cases and int(cases.group(1)) > 1000, run.stdout[-2000:]
    assert 'failures="0"' in junit and 'errors="0"' in junit

"""Schemathesis over the app's OpenAPI schema: no 5xx, and every response matches what it declares."""

from __future__ import annotations

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from common.settings import Settings
from common.store import db as db
from common.study.config import StudyConfig


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, data_dir):
    from api.main import create_app
    from common.study.stages import Runtime, record_experiment, run_experiment

    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
    engine = db.make_engine(url)
    db.init_db(engine)
    f = db.session_factory(engine)
    eid = record_experiment(f, StudyConfig(limit=300, epochs=1, k=20, ks=[5, 10]))
    run_experiment(Runtime(factory=f, data_dir=data_dir, cache_dir=tmp_path_factory.mktemp("c"), device="cpu"), eid)
    # the real Redis (a test database, emptied after): accepted submissions are enqueued for real
    app = create_app(Settings(database_url=url, broker_url="redis://127.0.0.1:6379/15"))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    redis.Redis.from_url("redis://127.0.0.1:6379/15").flushdb()


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def subnormals_allowed():
    """hypothesis refuses to generate floats where subnormals are flushed (conftest flushes them, as
    the CLI does): allow them again on this thread while the fuzzer runs. The API itself is torch-free."""
    import torch

    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(True)


def test_api_conforms_to_its_schema(api_schema, subnormals_allowed):
    # schemathesis's pytest plugin does not load under pytest 9: the same strategies, driven by hypothesis
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            case.call_and_validate(checks=CHECKS)

        run()

"""Property-based API tests from the OpenAPI schema (schemathesis), on both backends.

Every operation is called with generated inputs (bounded examples so the run stays under two
minutes per backend) as an authenticated admin; no call may answer 5xx and every response must
match the documented schema.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import response_schema_conformance

from api.app import create_app
from layers.settings import Settings
from tests.api.conftest import Api

MAX_EXAMPLES = 10


# The schema does not depend on the database, so it is read from an app built with any settings;
# each call goes to the fixture's app (on the backend under test) through ``app=``.
# The coverage phase (deterministic boundary values of every parameter) is skipped: it multiplies
# the cases per operation by ~10 and the run must stay under two minutes per backend; the
# boundaries it found once (NaN echo, int64 overflow, BD-09 at ±180°) have explicit tests.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(Settings(database_url="sqlite:///unused.sqlite", secret_key="s" * 40, gc_freeze=False)),
    config=SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": False}}}))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_api_conforms(case: Any, api: Api) -> None:
    case.call_and_validate(headers=api.as_("admin"), app=api.client.app,
                           checks=[not_a_server_error, response_schema_conformance])

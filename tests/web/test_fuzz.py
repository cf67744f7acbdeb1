"""Schemathesis against a running server's own OpenAPI schema, as an administrator.

Every operation gets schema-driven requests, valid and not (a bounded number each):
the server must never answer 5xx, and every answer must match the schema it
publishes. Three operations take bodies Schemathesis cannot write (NDJSON commits, zip/tar
bags, tar batches of blobs); their hostile inputs have tests of their own
(test_commit_stream, test_bags, test_batch_uploads).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from archive.config import Settings
from tests.support.server import serve
from tests.web.conftest import ADMIN_TOKEN, AUTH
from web.app import create_app


def _schema() -> schemathesis.BaseSchema:
    """The schema the server publishes (the app factory is cheap: nothing opens until
    its lifespan starts), minus the operations whose bodies cannot be generated."""
    app = create_app(Settings(data_dir=Path("unused"), api_token=ADMIN_TOKEN))
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema = schema.exclude(path_regex=r"(/versions/stream|/bags)$")
    return schema.exclude(path_regex=r"/blobs/batch$", method="POST")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    with serve(create_app(Settings(data_dir=data, api_token=ADMIN_TOKEN))) as base:
        yield base


@pytest.mark.slow
@_schema().parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_error_and_every_answer_matches_the_schema(
    case: schemathesis.Case, base_url: str
) -> None:
    case.call_and_validate(
        base_url=base_url, headers=AUTH, checks=[not_a_server_error, response_schema_conformance]
    )

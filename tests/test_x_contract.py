"""The X stand-in against X's own OpenAPI description (tests/contracts/x-openapi.json, see
README-x.md there): schemathesis generates requests for every operation postroom uses and
checks each answer's status, content type, headers and body against the description; a
scripted run walks the success path of all seven operations (upload, tweet, timeline).

Error answers: X serves RFC 7807 problems as application/json, and for 401/403/429/503 the
generic `about:blank` kind, which the description's `default` answers do not list. Those are
checked here against RFC 7807 and X's shape (title, detail, status = the HTTP status); typed
problems against the description's `Problem` union.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import CheckContext
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sandbox.standins.x import create_app, x_state
from sandbox.standins.x_state import Account
from worker.adapters.png import render_card

SPEC_PATH = Path(__file__).parent / "contracts" / "x-openapi.json"
SPEC = json.loads(SPEC_PATH.read_text())
SCHEMA = schemathesis.openapi.from_path(SPEC_PATH)
APP = create_app()
USER_ID = "1500000000000000001"
AUTH = {"Authorization": "Bearer contract-access-token"}
x_state(APP).add_account(
    Account(
        username="contract",
        user_id=USER_ID,
        client_id="contract-client",
        client_secret=None,
        access_token="contract-access-token",
        refresh_token="contract-refresh-token",
        access_expires_at=None,
        tweets_per_day=10_000,
        requests_per_window=10_000,
    )
)
PROBLEM = jsonschema_rs.Draft4Validator(
    {"$ref": "#/components/schemas/Problem", "components": SPEC["components"]}
)


def success_conforms(ctx: CheckContext, response: Response, case: schemathesis.Case[Any]) -> None:
    """The description's schema for every 2xx answer (schemathesis' own check)."""
    if response.status_code < 400:
        response_schema_conformance(ctx, response, case)


def x_problem(ctx: CheckContext, response: Response, case: schemathesis.Case[Any]) -> None:
    """Error answers are X's problems: typed ones conform to the `Problem` union, `about:blank`
    ones to RFC 7807 as X fills it in."""
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict), f"error body is not a JSON object: {body!r}"
    if body.get("type") == "about:blank":
        assert body.get("status") == response.status_code, body
        assert isinstance(body.get("title"), str) and isinstance(body.get("detail"), str), body
    else:
        errors = [error.message for error in PROBLEM.iter_errors(body)]
        assert not errors, f"not a Problem of X's description: {body}: {errors}"


CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    success_conforms,
    x_problem,
]


@SCHEMA.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_standin_answers_conform_to_x_openapi(case: schemathesis.Case[Any]) -> None:
    response = case.call(app=APP, headers=AUTH)
    assert response.status_code < 500, f"server error: {response.text}"
    case.validate_response(response, checks=CHECKS)


def call(path: str, method: str, **case: Any) -> Any:
    """One scripted request through schemathesis, validated like the generated ones."""
    made = SCHEMA[path][method].Case(**case)
    response = made.call(app=APP, headers=AUTH)
    made.validate_response(response, checks=CHECKS)
    return response


def test_success_path_of_every_operation_conforms() -> None:
    png = render_card("contract", ["x"])
    init = call(
        "/2/media/upload/initialize",
        "POST",
        body={"media_type": "image/png", "total_bytes": len(png), "media_category": "tweet_image"},
        media_type="application/json",
    )
    assert init.status_code == 200
    media_id = init.json()["data"]["id"]
    append = call(
        "/2/media/upload/{id}/append",
        "POST",
        path_parameters={"id": media_id},
        body={"media": png, "segment_index": 0},
        media_type="multipart/form-data",
    )
    assert append.status_code == 200, append.text
    finalize = call("/2/media/upload/{id}/finalize", "POST", path_parameters={"id": media_id})
    assert finalize.status_code == 200
    status = call("/2/media/upload", "GET", query={"media_id": media_id, "command": "STATUS"})
    assert status.json()["data"]["id"] == media_id
    created = call(
        "/2/tweets",
        "POST",
        body={"text": "contract https://example.com & more", "media": {"media_ids": [media_id]}},
        media_type="application/json",
    )
    assert created.status_code == 201, created.text
    assert call("/2/users/me", "GET").json()["data"]["id"] == USER_ID
    timeline = call(
        "/2/users/{id}/tweets",
        "GET",
        path_parameters={"id": USER_ID},
        query={"max_results": 5, "post.fields": ["created_at", "text"]},
    )
    assert created.json()["data"]["id"] in [t["id"] for t in timeline.json()["data"]]
    duplicate = call(
        "/2/tweets",
        "POST",
        body={"text": "contract https://example.com & more", "media": {"media_ids": [media_id]}},
        media_type="application/json",
    )
    assert duplicate.status_code == 403 and "duplicate content" in duplicate.json()["detail"]


def test_requests_without_a_valid_token_are_refused_like_x() -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token-x-issued"}):
        made = SCHEMA["/2/users/me"]["GET"].Case()
        response = made.call(app=APP, headers=headers)
        made.validate_response(response, checks=CHECKS)
        assert response.status_code == 401
        assert response.json() == {
            "title": "Unauthorized",
            "detail": "Unauthorized",
            "type": "about:blank",
            "status": 401,
        }

"""The LinkedIn stand-in driven by LinkedIn's official Python client (`linkedin-api-client`,
`RestliClient` and `AuthClient`), pointed at the stand-in on a real port by patching the
package's base-URL constants. What the official client sends and how it reads the answers (the
`x-restli-id` header, `value` of an action, `elements`/`paging` of a finder) is the contract the
stand-in must keep, and the adapter is tested against that stand-in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from linkedin_api.clients.auth.client import AuthClient  # type: ignore[import-untyped]
from linkedin_api.clients.restli.client import RestliClient  # type: ignore[import-untyped]
from linkedin_api.common import constants  # type: ignore[import-untyped]
from linkedin_standin import HEADERS, VERSION, StandinAdmin, serve_standin

from worker.adapters.png import render_card

MEMBER = "urn:li:person:contract1"
ORG = "urn:li:organization:2414183"
TOKEN = "AQXcontract-access-token-1"
REFRESH = "AQXcontract-refresh-token-1"
CLIENT_ID = "contract-client"
CLIENT_SECRET = "contract-client-secret"


@pytest.fixture(scope="module")
def standin() -> Iterator[str]:
    with serve_standin() as base_url:
        admin = StandinAdmin(base_url)
        admin.member(
            MEMBER,
            access_token=TOKEN,
            refresh_token=REFRESH,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            organizations=(ORG,),
        )
        admin.close()
        yield base_url


@pytest.fixture
def admin(standin: str) -> Iterator[StandinAdmin]:
    a = StandinAdmin(standin)
    yield a
    a.close()


@pytest.fixture
def client(standin: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(constants, "VERSIONED_BASE_URL", f"{standin}/rest")
    monkeypatch.setattr(constants, "OAUTH_BASE_URL", f"{standin}/oauth/v2")
    c = RestliClient()
    yield c
    c.session.close()


def post_entity(author: str, commentary: str, **extra: Any) -> dict[str, Any]:
    return {
        "author": author,
        "commentary": commentary,
        "visibility": "PUBLIC",
        "distribution": {
            "feedDistribution": "MAIN_FEED",
            "targetEntities": [],
            "thirdPartyDistributionChannels": [],
        },
        "lifecycleState": "PUBLISHED",
        "isReshareDisabledByAuthor": False,
        **extra,
    }


def create(client: Any, entity: dict[str, Any], token: str = TOKEN) -> Any:
    return client.create(
        resource_path="/posts", entity=entity, access_token=token, version_string=VERSION
    )


def test_create_returns_the_post_urn_in_x_restli_id(client: Any, admin: StandinAdmin) -> None:
    response = create(client, post_entity(MEMBER, r"Contract: create \(1\)"))

    assert response.status_code == 201
    assert response.entity_id.startswith("urn:li:share:")
    assert response.decoded_entity_id == response.entity_id
    recorded = [p for p in admin.posts(MEMBER) if p["id"] == response.entity_id]
    assert [p["text"] for p in recorded] == ["Contract: create (1)"]


def test_get_by_urn_returns_the_post(client: Any) -> None:
    urn = create(client, post_entity(MEMBER, "Contract: get me")).entity_id

    got = client.get(
        resource_path="/posts/{id}",
        path_keys={"id": urn},
        access_token=TOKEN,
        version_string=VERSION,
    )

    assert got.status_code == 200
    assert got.entity["id"] == urn
    assert got.entity["author"] == MEMBER
    assert got.entity["commentary"] == "Contract: get me"
    assert got.entity["lifecycleState"] == "PUBLISHED"
    assert isinstance(got.entity["createdAt"], int)


def test_finder_by_author_lists_newest_first(client: Any) -> None:
    first = create(client, post_entity(ORG, "Contract: org post one")).entity_id
    second = create(client, post_entity(ORG, "Contract: org post two")).entity_id

    found = client.finder(
        resource_path="/posts",
        finder_name="author",
        query_params={"author": ORG, "count": 10, "sortBy": "LAST_MODIFIED"},
        access_token=TOKEN,
        version_string=VERSION,
    )

    assert found.status_code == 200
    assert [e["id"] for e in found.elements][:2] == [second, first]
    assert {e["author"] for e in found.elements} == {ORG}
    assert found.paging.start == 0 and found.paging.total == len(found.elements)


def test_image_initialize_upload_then_put_then_available(client: Any) -> None:
    init = client.action(
        resource_path="/images",
        action_name="initializeUpload",
        action_params={"initializeUploadRequest": {"owner": MEMBER}},
        access_token=TOKEN,
        version_string=VERSION,
    )
    assert init.status_code == 200
    upload_url, image = init.value["uploadUrl"], init.value["image"]
    assert image.startswith("urn:li:image:")
    assert init.value["uploadUrlExpiresAt"] > 0

    put = requests.put(
        upload_url,
        data=render_card("t", ["x"]),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert put.status_code == 201

    def status() -> str:
        got = client.get(
            resource_path="/images/{id}",
            path_keys={"id": image},
            access_token=TOKEN,
            version_string=VERSION,
        )
        assert got.entity["id"] == image and got.entity["owner"] == MEMBER
        value: str = got.entity["status"]
        return value

    assert status() == "PROCESSING"
    assert status() == "AVAILABLE"
    posted = create(
        client, post_entity(MEMBER, "Contract: image", content={"media": {"id": image}})
    )
    assert posted.status_code == 201


def test_duplicate_commentary_is_422_naming_the_existing_urn(client: Any) -> None:
    urn = create(client, post_entity(MEMBER, "Contract: say it once")).entity_id

    again = create(client, post_entity(MEMBER, "Contract: say it once"))

    assert again.status_code == 422
    assert again.entity_id is None
    body = again.response.json()
    assert body["status"] == 422
    assert body["message"].endswith(f"Content is a duplicate of {urn}")
    assert body["errorDetails"]["inputErrors"][0]["code"] == "DUPLICATE_POST"


def test_refresh_token_exchange_gives_a_working_access_token(client: Any) -> None:
    auth = AuthClient(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)

    refreshed = auth.exchange_refresh_token_for_access_token(refresh_token=REFRESH)

    assert refreshed.status_code == 200
    assert refreshed.access_token and refreshed.access_token != TOKEN
    assert refreshed.expires_in > 0 and refreshed.refresh_token == REFRESH
    made = create(
        client, post_entity(MEMBER, "Contract: fresh token"), token=refreshed.access_token
    )
    assert made.status_code == 201


def test_refused_refresh_and_bad_tokens_have_linkedin_shapes(client: Any) -> None:
    auth = AuthClient(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    refused = auth.exchange_refresh_token_for_access_token(refresh_token="not-a-refresh-token")
    assert refused.status_code == 400
    assert refused.response.json()["error"] == "invalid_request"

    unknown = create(client, post_entity(MEMBER, "Contract: nobody"), token="AQXunknown-token")
    assert unknown.status_code == 401
    assert unknown.response.json() == {
        "status": 401,
        "serviceErrorCode": 65600,
        "code": "INVALID_ACCESS_TOKEN",
        "message": "Invalid access token",
    }
    other = create(client, post_entity("urn:li:organization:999", "Contract: not mine"))
    assert other.status_code == 403
    assert other.response.json()["code"] == "ACCESS_DENIED"


def test_version_headers_are_required_as_linkedin_requires_them(client: Any, standin: str) -> None:
    sunset = client.create(
        resource_path="/posts",
        entity=post_entity(MEMBER, "Contract: old version"),
        access_token=TOKEN,
        version_string="202411",
    )
    assert sunset.status_code == 426
    assert sunset.response.json() == {
        "status": 426,
        "code": "NONEXISTENT_VERSION",
        "message": "Requested version 202411 is not active",
    }
    auth = {"Authorization": f"Bearer {TOKEN}"}
    no_version = httpx.get(f"{standin}/rest/posts?q=author&author={MEMBER}", headers=auth)
    assert no_version.status_code == 400
    assert no_version.json()["code"] == "VERSION_MISSING"
    no_protocol = httpx.get(
        f"{standin}/rest/posts?q=author&author={MEMBER}",
        headers={**auth, "LinkedIn-Version": VERSION},
    )
    assert no_protocol.status_code == 400
    with_both = httpx.get(
        f"{standin}/rest/posts?q=author&author={MEMBER}", headers={**auth, **HEADERS}
    )
    assert with_both.status_code == 200


def test_invalid_post_fields_are_422_with_restli_validation_messages(client: Any) -> None:
    wrong = create(client, post_entity(MEMBER, "Contract: wrong", visibility="EVERYONE"))
    assert wrong.status_code == 422
    assert wrong.response.json()["message"].startswith("ERROR :: /visibility ::")
    extra = create(client, post_entity(MEMBER, "Contract: extra", surprise=True))
    assert extra.status_code == 422
    assert "unrecognized field" in extra.response.json()["message"]

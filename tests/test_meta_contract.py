"""The Meta stand-in against Meta's own SDK, facebook-business: the SDK (sync `requests`, pointed
at the stand-in on a real port through `FacebookSession.GRAPH`) posts to a Page feed, uploads a
photo, creates an IG container, polls it, publishes it and reads the publishing limit; and each
endpoint takes exactly the SDK's `param_types`, refusing anything else with Graph's code 100.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from facebook_business.adobjects.abstractobject import AbstractObject  # type: ignore[import-untyped]
from facebook_business.adobjects.contentpublishinglimitresponse import (  # type: ignore[import-untyped]
    ContentPublishingLimitResponse,
)
from facebook_business.adobjects.igmedia import IGMedia  # type: ignore[import-untyped]
from facebook_business.adobjects.iguser import IGUser  # type: ignore[import-untyped]
from facebook_business.adobjects.page import Page  # type: ignore[import-untyped]
from facebook_business.adobjects.pagepost import PagePost  # type: ignore[import-untyped]
from facebook_business.adobjects.photo import Photo  # type: ignore[import-untyped]
from facebook_business.adobjects.shadowigmediabuilder import ShadowIGMediaBuilder  # type: ignore[import-untyped]
from facebook_business.api import FacebookAdsApi, FacebookRequest  # type: ignore[import-untyped]
from facebook_business.exceptions import FacebookRequestError  # type: ignore[import-untyped]
from facebook_business.session import FacebookSession  # type: ignore[import-untyped]
from meta_helpers import MetaAdmin, served, tiny_jpeg
from polling import wait_until

from sandbox.standins import meta_params
from sandbox.standins.meta import create_app
from worker.adapters.png import render_card

VERSION = "v21.0"
PAGE, PAGE_TOKEN = "1001", "contract-page-token-1"
IG, IG_TOKEN = "17841400000000001", "contract-ig-token-1"
PROBE_PAGE, PROBE_IG = "1002", "17841400000000002"  # the parameter probe's own objects
QUOTA_TOTAL, QUOTA_DURATION = 50, 86_400


@pytest.fixture(scope="module")
def graph() -> Iterator[tuple[str, MetaAdmin]]:
    with served(create_app()) as url:
        admin = MetaAdmin(url)
        admin.page(PAGE, PAGE_TOKEN, name="Contract Page")
        admin.page(PROBE_PAGE, PAGE_TOKEN)
        admin.ig_user(IG, IG_TOKEN, username="contract", quota_total=QUOTA_TOTAL, polls_to_finish=2)
        admin.ig_user(PROBE_IG, IG_TOKEN, polls_to_finish=0)
        admin.host("pic.jpg", tiny_jpeg())
        admin.host("card.png", render_card("contract", ["photo"]))
        try:
            yield url, admin
        finally:
            admin.close()


def sdk(url: str, token: str) -> FacebookAdsApi:
    """The SDK's own client, aimed at the stand-in: GRAPH is the session's base URL."""
    session = FacebookSession(access_token=token)
    session.GRAPH = url
    return FacebookAdsApi(session, api_version=VERSION)


# ---- the SDK drives the stand-in -----------------------------------------------------------------


def test_sdk_posts_to_a_page_feed_and_reads_it_back(graph: tuple[str, MetaAdmin]) -> None:
    url, admin = graph
    page = Page(PAGE, api=sdk(url, PAGE_TOKEN))
    post = page.create_feed(params={"message": "hello from the SDK"})
    assert post["id"].startswith(f"{PAGE}_")
    feed = page.get_feed(fields=["id", "message", "created_time"], params={"limit": 10})
    assert next((p["id"], p["message"]) for p in feed) == (post["id"], "hello from the SDK")
    assert [p["text"] for p in admin.posts(PAGE) if p["id"] == post["id"]] == ["hello from the SDK"]
    with pytest.raises(FacebookRequestError) as dup:
        page.create_feed(params={"message": "hello from the SDK"})
    assert dup.value.api_error_code() == 506


def test_sdk_uploads_a_photo_file_and_one_from_a_url(
    graph: tuple[str, MetaAdmin], tmp_path: Path
) -> None:
    url, admin = graph
    api = sdk(url, PAGE_TOKEN)
    page = Page(PAGE, api=api)
    card = tmp_path / "card.png"
    card.write_bytes(render_card("contract", ["upload"]))
    # create_photo has no file parameter: an upload is the SDK's raw call, multipart "source".
    with card.open("rb") as source:
        answer = api.call(
            "POST", (PAGE, "photos"), params={"message": "uploaded"}, files={"source": source}
        )
    uploaded = answer.json()
    from_url = page.create_photo(
        params={"url": f"{url}/_standin/media/card.png", "message": "from a URL"}
    )
    photos = page.get_photos(fields=["id", "name", "page_story_id"], params={"type": "uploaded"})
    by_id = {p["id"]: p for p in photos}
    assert by_id[uploaded["id"]]["name"] == "uploaded"
    assert by_id[from_url["id"]]["page_story_id"] == from_url["post_id"]
    kinds = {p["id"]: p["kind"] for p in admin.posts(PAGE)}
    assert kinds[uploaded["post_id"]] == kinds[from_url["post_id"]] == "photo"


def test_sdk_publishes_to_instagram_through_a_container(graph: tuple[str, MetaAdmin]) -> None:
    url, admin = graph
    api = sdk(url, IG_TOKEN)
    user = IGUser(IG, api=api)
    (limit,) = list(user.get_content_publishing_limit(fields=["config", "quota_usage"]))
    assert isinstance(limit, ContentPublishingLimitResponse)
    assert limit["config"] == {"quota_total": QUOTA_TOTAL, "quota_duration": QUOTA_DURATION}
    before = limit["quota_usage"]
    container = user.create_media(
        params={"image_url": f"{url}/_standin/media/pic.jpg", "caption": "from the SDK"}
    )
    builder = ShadowIGMediaBuilder(container["id"], api=api)
    first = builder.api_get(fields=["status_code", "status"])["status_code"]
    assert first == "IN_PROGRESS"
    with pytest.raises(FacebookRequestError) as early:  # publishing before FINISHED
        user.create_media_publish(params={"creation_id": int(container["id"])})
    assert (early.value.api_error_code(), early.value.api_error_subcode()) == (9007, 2207027)
    wait_until(
        "the container to finish",
        lambda: builder.api_get(fields=["status_code"])["status_code"] == "FINISHED",
    )
    media = user.create_media_publish(params={"creation_id": int(container["id"])})
    read = IGMedia(media["id"], api=api).api_get(fields=["permalink", "caption"])
    assert read["caption"] == "from the SDK"
    assert read["permalink"].startswith("https://www.instagram.com/p/")
    assert builder.api_get(fields=["status_code"])["status_code"] == "PUBLISHED"
    (after,) = list(user.get_content_publishing_limit(fields=["quota_usage"]))
    assert after["quota_usage"] == before + 1
    assert [m["id"] for m in admin.posts(IG)] == [media["id"]]


def test_sdk_sees_meta_error_shapes(graph: tuple[str, MetaAdmin]) -> None:
    url, admin = graph
    with pytest.raises(FacebookRequestError) as bad_token:
        Page(PAGE, api=sdk(url, "not-the-token")).create_feed(params={"message": "x"})
    assert bad_token.value.api_error_code() == 190
    assert bad_token.value.api_error_type() == "OAuthException"
    admin.fault(op="feed", target=PAGE, code=32, buc_minutes=3)
    with pytest.raises(FacebookRequestError) as throttled:
        Page(PAGE, api=sdk(url, PAGE_TOKEN)).create_feed(params={"message": "throttled"})
    assert throttled.value.api_error_code() == 32
    assert throttled.value.api_transient_error() is True
    assert '"estimated_time_to_regain_access": 3' in throttled.value.http_headers().get(
        "x-business-use-case-usage", ""
    )
    with pytest.raises(FacebookRequestError) as unfetchable:
        IGUser(IG, api=sdk(url, IG_TOKEN)).create_media(
            params={"image_url": f"{url}/_standin/media/card.png", "caption": "a PNG"}
        )
    assert unfetchable.value.api_error_code() == 9004  # not a JPEG


# ---- the parameter lists ------------------------------------------------------------------------


def _requests() -> dict[tuple[str, str], FacebookRequest]:
    """The SDK's request for each endpoint the stand-in serves (never sent)."""
    api = sdk("http://unused.invalid", "unused")
    page, user = Page("1", api=api), IGUser("1", api=api)
    return {
        ("POST", "page/feed"): page.create_feed(pending=True),
        ("POST", "page/photos"): page.create_photo(pending=True),
        ("GET", "page/feed"): page.get_feed(pending=True),
        ("GET", "page/photos"): page.get_photos(pending=True),
        ("GET", "page"): page.api_get(pending=True),
        ("POST", "ig_user/media"): user.create_media(pending=True),
        ("POST", "ig_user/media_publish"): user.create_media_publish(pending=True),
        ("GET", "ig_user/media"): user.get_media(pending=True),
        ("GET", "ig_user/content_publishing_limit"): user.get_content_publishing_limit(
            pending=True
        ),
        ("GET", "ig_user"): user.api_get(pending=True),
        ("GET", "container"): ShadowIGMediaBuilder("1", api=api).api_get(pending=True),
        ("GET", "post"): PagePost("1", api=api).api_get(pending=True),
        ("GET", "photo"): Photo("1", api=api).api_get(pending=True),
        ("GET", "media"): IGMedia("1", api=api).api_get(pending=True),
    }


def _param_types(request: FacebookRequest) -> dict[str, str]:
    types: dict[str, str] = request._param_checker._type_check_info
    return types


def test_each_endpoint_takes_the_sdk_param_types_name_for_name() -> None:
    requests = _requests()
    assert set(requests) == set(meta_params.ENDPOINTS)
    for key, request in requests.items():
        own, _ = meta_params.ENDPOINTS[key]
        assert own == set(_param_types(request)), key


def test_served_fields_are_the_sdk_field_names() -> None:
    classes: dict[str, type[AbstractObject]] = {
        "page": Page,
        "post": PagePost,
        "photo": Photo,
        "ig_user": IGUser,
        "container": ShadowIGMediaBuilder,
        "media": IGMedia,
        "content_publishing_limit": ContentPublishingLimitResponse,
    }
    for kind, fields in meta_params.SERVED_FIELDS.items():
        real = {v for k, v in vars(classes[kind].Field).items() if not k.startswith("_")}
        assert set(fields) <= real, (kind, set(fields) - real)
        assert set(meta_params.DEFAULT_FIELDS[kind]) <= set(fields)


def _dummy(request: FacebookRequest, name: str) -> str:
    kind = _param_types(request)[name]
    enums: dict[str, Any] = request._param_checker._enum_data
    if kind in enums:
        return str(next(iter(enums[kind])))
    if kind == "bool":
        return "true"
    if kind == "datetime":
        return str(int(time.time()))
    if "int" in kind:
        return "1"
    if kind.startswith("list"):
        return "[]"
    if kind in ("map", "Object"):
        return "{}"
    return "x"


def _sent(method: str, values: dict[str, str]) -> dict[str, Any]:
    """A POST's parameters go in the form body (as the SDK sends them), a GET's in the query."""
    return {"data": values} if method == "POST" else {"params": values}


def _unknown_param(response: httpx.Response, name: str) -> bool:
    error = response.json().get("error", {}) if response.status_code == 400 else {}
    return error.get("code") == 100 and f"Param {name} is not a valid" in error.get("message", "")


def test_every_sdk_param_is_accepted_and_any_other_refused_with_code_100(
    graph: tuple[str, MetaAdmin],
) -> None:
    url, _ = graph
    jpeg, png = f"{url}/_standin/media/pic.jpg", f"{url}/_standin/media/card.png"
    container = httpx.post(
        f"{url}/{VERSION}/{PROBE_IG}/media",
        data={"image_url": jpeg, "caption": "probe", "access_token": IG_TOKEN},
    ).json()["id"]
    published = httpx.post(
        f"{url}/{VERSION}/{PROBE_IG}/media",
        data={"image_url": jpeg, "caption": "probe media", "access_token": IG_TOKEN},
    ).json()["id"]
    media = httpx.post(
        f"{url}/{VERSION}/{PROBE_IG}/media_publish",
        data={"creation_id": published, "access_token": IG_TOKEN},
    ).json()["id"]
    photo = httpx.post(
        f"{url}/{VERSION}/{PROBE_PAGE}/photos",
        data={"url": png, "message": "probe photo", "access_token": PAGE_TOKEN},
    ).json()
    paths = {
        "page": PROBE_PAGE,
        "ig_user": PROBE_IG,
        "container": container,
        "media": media,
        "photo": photo["id"],
        "post": photo["post_id"],
    }
    bases: dict[tuple[str, str], dict[str, str]] = {
        ("POST", "page/feed"): {"message": "probe"},
        ("POST", "page/photos"): {"url": png, "message": "probe"},
        ("POST", "ig_user/media"): {"image_url": jpeg, "caption": "probe"},
        ("POST", "ig_user/media_publish"): {"creation_id": container},
    }
    checked = 0
    with httpx.Client(base_url=f"{url}/{VERSION}") as client:
        for key, request in _requests().items():
            method, endpoint = key
            node_kind, _, edge = endpoint.partition("/")
            token = IG_TOKEN if node_kind in ("ig_user", "container", "media") else PAGE_TOKEN
            path = "/".join(filter(None, [paths[node_kind], edge]))
            base = {**bases.get(key, {}), "access_token": token}
            for n, name in enumerate(sorted(_param_types(request))):
                values = {**base, name: _dummy(request, name)} if name not in base else base
                if "message" in values:  # a new text each time: the feed refuses repeats (506)
                    values["message"] = f"probe {name} {n}"
                response = client.request(method, path, **_sent(method, values))
                assert not _unknown_param(response, name), (key, name, response.text)
                checked += 1
            bogus = client.request(
                method, path, **_sent(method, {**base, "not_a_graph_param": "1"})
            )
            assert _unknown_param(bogus, "not_a_graph_param"), (key, bogus.text)
    assert checked == sum(len(own) for own, _ in meta_params.ENDPOINTS.values())
    # And through the SDK itself:
    with pytest.raises(FacebookRequestError) as refused:
        Page(PAGE, api=sdk(url, PAGE_TOKEN)).create_feed(
            params={"message": "with a bogus param", "not_a_graph_param": "1"}
        )
    assert refused.value.api_error_code() == 100

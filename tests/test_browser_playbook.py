"""Playbooks are data: the loader reads a whole playbook, and a mistake names the file and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from worker.browser import playbook as playbook_module
from worker.browser.playbook import (
    PlaybookError,
    json_path,
    load_playbook,
    parse_playbook,
)

# The example in the module's docstring: what the docs show is what the loader reads.
assert playbook_module.__doc__ is not None
EXAMPLE = textwrap.dedent(
    playbook_module.__doc__[playbook_module.__doc__.index("    playbook =") :]
)


def test_the_example_reads_whole() -> None:
    # Platform and method are case-insensitive.
    text = EXAMPLE.replace('platform = "x"', 'platform = "X"').replace('"POST"', '"post"')
    pb = parse_playbook(text, source="example.toml")
    assert (pb.name, pb.version, pb.platform, pb.label) == ("example", 1, "x", "example v1")
    assert [s.name for s in pb.compose] == ["open_composer", "type_text", "attach_media"]
    assert not pb.compose[2].applies(has_media=False) and pb.compose[2].applies(has_media=True)
    assert pb.commit.step.timeout_ms == 2500 and pb.commit.step.action == "click"
    assert pb.commit.response.matches("http://h/api/posts", "POST")
    assert not pb.commit.response.matches("http://h/api/posts", "GET")
    assert [r.result for r in pb.commit.outcomes] == ["accepted", "rejected"]
    assert pb.commit.outcomes[0].matches_status(201) and not pb.commit.outcomes[0].matches_status(
        301
    )
    assert pb.login.logged_in.cookie == "session"
    assert pb.verify is not None and pb.verify.id_from_url is not None


def test_outcomes_default_when_none_given() -> None:
    text = EXAMPLE.split("[[commit.outcome]]")[0] + EXAMPLE[EXAMPLE.index("[permalink]") :]
    pb = parse_playbook(text, source="x.toml")
    classes = {r.status: (r.result, r.error_class) for r in pb.commit.outcomes}
    assert classes[("429",)] == ("rejected", "RATE_LIMITED")
    assert classes[("5xx",)][0] == "unknown"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('selector = "[data-testid=composer]"', 'selectr = "x"'), "unknown key 'selectr'"),
        (('value = "{text}"', 'value = "{txt}"'), "unknown placeholder {txt}"),
        (('action = "fill"', 'action = "hover"'), "'action' must be one of"),
        (("version = 1", "version = 0"), "'version' must be a positive integer"),
        (('url = "/api/posts$"', 'url = "("'), "not a valid regex"),
        (('status = ["429"]', 'status = ["42"]'), "is not a status"),
        (('id_json = "data.id"', 'id_jsn = "data.id"'), "unknown key 'id_jsn'"),
    ],
)
def test_a_mistake_names_the_file_and_key(edit: tuple[str, str], expected: str) -> None:
    text = EXAMPLE.replace(*edit, 1)
    with pytest.raises(PlaybookError) as err:
        parse_playbook(text, source="/etc/postroom/pb.toml")
    assert expected in str(err.value)
    assert "/etc/postroom/pb.toml" in str(err.value)


def test_a_step_names_itself_in_errors() -> None:
    text = EXAMPLE.replace('selector = "input[type=file]"\n', "", 1)
    with pytest.raises(
        PlaybookError, match=r"\[\[compose\]\] #3 \(name 'attach_media'\).*needs 'selector'"
    ):
        parse_playbook(text, source="pb.toml")


def test_load_by_path_and_unknown_bundled_name(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(EXAMPLE)
    assert load_playbook("mine.toml", relative_to=tmp_path).name == "example"
    with pytest.raises(PlaybookError, match="no bundled playbook 'nope'"):
        load_playbook("nope")


def test_json_path() -> None:
    data = {"data": {"id": "7", "errors": [{"message": "too long"}]}}
    assert json_path(data, "data.id") == "7"
    assert json_path(data, "data.errors.0.message") == "too long"
    assert json_path(data, "data.missing.x") is None

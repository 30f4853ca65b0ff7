"""Topic names and the namespace configuration (`shared.topics`, `Settings`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.settings import ConfigError, Settings
from shared.topics import DEFAULT_NAMESPACES, Namespaces, TopicError, parse_topic

BASE = {"SECRET_KEY": "k" * 32, "INTERNAL_TOKEN": "t" * 32}


@pytest.mark.parametrize(
    "name", ["public:lobby", "user:3f0c6a8e-8d5b-4a57-9a53-0d3c1f7e2b11", "a_b-1:x.y=z@w"]
)
def test_valid_names_split_at_the_colon(name: str) -> None:
    """A well-formed name parses into namespace and name and prints back unchanged."""
    assert str(parse_topic(name)) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "lobby",
        "public:",
        ":x",
        "Public:x",
        "public:a b",
        "public:{x}",
        "public:a:b",
        "public:" + "x" * 129,
        "n" * 33 + ":x",
        42,
        None,
        "public:*",
    ],
)
def test_invalid_names_are_refused_with_topic_invalid(name: object) -> None:
    """Anything outside the charset, lengths or shape is TOPIC_INVALID."""
    with pytest.raises(TopicError) as caught:
        parse_topic(name)
    assert caught.value.code == "TOPIC_INVALID"


def test_unknown_namespace_is_its_own_code() -> None:
    """A well-formed name in a namespace nobody configured: TOPIC_UNKNOWN_NAMESPACE."""
    with pytest.raises(TopicError) as caught:
        Namespaces(dict(DEFAULT_NAMESPACES)).resolve("team:x")
    assert caught.value.code == "TOPIC_UNKNOWN_NAMESPACE"


def test_defaults_are_public_user_private() -> None:
    """With no configuration the three documented namespaces exist with their rules."""
    namespaces = Settings.from_env(BASE).namespaces()
    assert set(namespaces) == {"public", "user", "private"}
    public = namespaces["public"]
    assert (public.subscribe, public.history_size, public.history_ttl) == (
        "authenticated",
        100,
        300,
    )
    assert public.presence and public.join_leave and not public.publish
    assert namespaces["user"].subscribe == "owner"
    assert namespaces["private"].subscribe == "token"


def test_inline_json_replaces_the_defaults() -> None:
    """TOPIC_NAMESPACES configures exactly the namespaces it names; options default."""
    raw = json.dumps({"team": {"subscribe": "token", "publish": True}})
    namespaces = Settings.from_env(BASE | {"TOPIC_NAMESPACES": raw}).namespaces()
    assert list(namespaces) == ["team"]
    assert namespaces["team"].publish and not namespaces["team"].history


def test_file_configuration(tmp_path: Path) -> None:
    """TOPIC_NAMESPACES_FILE names a file holding the same JSON."""
    path = tmp_path / "ns.json"
    path.write_text(json.dumps({"doc": {"history_size": 10, "history_ttl": 60}}))
    namespaces = Settings.from_env(BASE | {"TOPIC_NAMESPACES_FILE": str(path)}).namespaces()
    assert namespaces["doc"].history


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOPIC_NAMESPACES": "{"}, "TOPIC_NAMESPACES: not a namespace configuration"),
        ({"TOPIC_NAMESPACES": '{"a": {"subscribe": "all"}}'}, "TOPIC_NAMESPACES:"),
        ({"TOPIC_NAMESPACES": '{"a": {"colour": 1}}'}, "TOPIC_NAMESPACES:"),
        ({"TOPIC_NAMESPACES": '{"A": {}}'}, "namespace 'A'"),
        (
            {"TOPIC_NAMESPACES": '{"a": {"history_size": 5000, "history_ttl": 1}}'},
            "TOPIC_MAX_HISTORY_SIZE",
        ),
        ({"TOPIC_NAMESPACES_FILE": "/nonexistent/ns.json"}, "TOPIC_NAMESPACES_FILE: cannot read"),
        ({"TOPIC_NAMESPACES": "{}", "TOPIC_NAMESPACES_FILE": "/x"}, "not both"),
    ],
)
def test_bad_configuration_stops_start_up_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    """Every broken configuration raises ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(BASE | env)

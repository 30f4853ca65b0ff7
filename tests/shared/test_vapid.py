"""VAPID keys: the development pair (generated once, mode 0600 from the first byte, shared by
processes), configured keys in both formats, and configuration errors naming the variable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared import vapid
from shared.settings import VAPID_FILE, ConfigError, Settings


def test_development_pair_is_generated_once_and_private(tmp_path: Path) -> None:
    """Without VAPID_PRIVATE_KEY a pair is created in DATA_DIR/vapid.json, mode 0600, and
    every later start (every service) reads the same pair."""
    first = Settings.from_env({"DATA_DIR": str(tmp_path)})
    second = Settings.from_env({"DATA_DIR": str(tmp_path)})
    assert (first.vapid_private_key, first.vapid_public_key) == (
        second.vapid_private_key,
        second.vapid_public_key,
    )
    mode = stat.S_IMODE(os.stat(tmp_path / VAPID_FILE).st_mode)
    assert mode == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".vapid")] == []


def test_configured_raw_key_derives_the_public_key(tmp_path: Path) -> None:
    """A base64url private key alone is enough; its public key is derived."""
    pair = vapid.generate()
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), "VAPID_PRIVATE_KEY": pair.private_key})
    assert settings.vapid_public_key == pair.public_key
    assert not (tmp_path / VAPID_FILE).exists()


def test_configured_pem_key_is_normalised(tmp_path: Path) -> None:
    """A PEM private key (openssl ecparam -name prime256v1) works and is normalised to raw."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), "VAPID_PRIVATE_KEY": pem})
    assert vapid.b64url_decode(
        settings.vapid_private_key
    ) == key.private_numbers().private_value.to_bytes(32, "big")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"VAPID_PRIVATE_KEY": "abc"}, "VAPID_PRIVATE_KEY"),
        ({"VAPID_PRIVATE_KEY": "not base64url!"}, "VAPID_PRIVATE_KEY"),
        (
            {"VAPID_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----"},
            "VAPID_PRIVATE_KEY",
        ),
        ({"VAPID_PRIVATE_KEY": vapid.b64url_encode(b"\xff" * 32)}, "VAPID_PRIVATE_KEY"),
        (
            {
                "VAPID_PRIVATE_KEY": vapid.generate().private_key,
                "VAPID_PUBLIC_KEY": vapid.generate().public_key,
            },
            "VAPID_PUBLIC_KEY",
        ),
        (
            {"VAPID_PRIVATE_KEY": vapid.generate().private_key, "VAPID_PUBLIC_KEY": "AAAA"},
            "VAPID_PUBLIC_KEY",
        ),
        ({"VAPID_PUBLIC_KEY": vapid.generate().public_key}, "VAPID_PUBLIC_KEY"),
        ({"VAPID_SUBJECT": "admin@example.com"}, "VAPID_SUBJECT"),
        ({"PUSH_POLICY": "sometimes"}, "PUSH_POLICY"),
        ({"PUSH_POLICY_BY_TYPE": "chat"}, "PUSH_POLICY_BY_TYPE"),
        ({"PUSH_POLICY_BY_TYPE": "chat=later"}, "PUSH_POLICY_BY_TYPE"),
        ({"PUSH_URGENCY": "urgent"}, "PUSH_URGENCY"),
    ],
)
def test_invalid_push_configuration_names_the_variable(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    """A malformed key or push setting stops start-up with an error naming the variable, and
    never echoes the private key."""
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"DATA_DIR": str(tmp_path)} | env)
    assert str(raised.value).startswith(f"{variable}:")
    private = env.get("VAPID_PRIVATE_KEY")
    if private and len(private) > 8:
        assert private not in str(raised.value)


def test_policy_by_type_overrides_the_default(tmp_path: Path) -> None:
    """PUSH_POLICY_BY_TYPE wins for the types it names; others get PUSH_POLICY."""
    settings = Settings.from_env(
        {"DATA_DIR": str(tmp_path), "PUSH_POLICY_BY_TYPE": "chat=always, digest=never"}
    )
    assert settings.push_policy_for("chat") == "always"
    assert settings.push_policy_for("digest") == "never"
    assert settings.push_policy_for("task_created") == "offline"


def test_private_key_is_a_log_secret(tmp_path: Path) -> None:
    """The VAPID private key is among the values the log filter redacts."""
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})
    assert settings.vapid_private_key in settings.secrets()

"""Settings: defaults, validation naming the variable, development secrets, documentation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from shared.settings import VARIABLES, ConfigError, Settings

SECRETS = {"SECRET_KEY": "k" * 32, "INTERNAL_TOKEN": "i" * 32}


def test_defaults_match_the_seed(tmp_path: Path) -> None:
    """Seed variables default to the seed's values."""
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), **SECRETS})
    assert settings.ws_heartbeat_interval == 30
    assert settings.ws_max_connections_per_session == 5
    assert settings.ws_connection_timeout == 300
    assert settings.gateway_port == 8000
    assert settings.notifications_port == 8001
    assert settings.agent_port == 8002
    assert settings.ws_max_message_bytes == 65536
    assert settings.notifications_url == "http://127.0.0.1:8001"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WS_HEARTBEAT_INTERVAL", "soon"),
        ("WS_MAX_CONNECTIONS_PER_SESSION", "0"),
        ("GATEWAY_PORT", "70000"),
        ("DATABASE_URL", "mysql://db"),
        ("REDIS_URL", "http://redis"),
        ("LOG_LEVEL", "LOUD"),
        ("JWT_ALGORITHM", "none"),
        ("SECRET_KEY", "short"),
        ("INTERNAL_TOKEN", "short"),
        ("WS_CONNECTION_TIMEOUT", "10"),
        ("FORWARDED_ALLOW_IPS", "*"),
        ("FORWARDED_ALLOW_IPS", "10.0.0.1,nginx"),
    ],
)
def test_invalid_value_names_the_variable(tmp_path: Path, name: str, value: str) -> None:
    """An invalid value raises ConfigError whose message starts with the variable's name."""
    env = {"DATA_DIR": str(tmp_path), **SECRETS, name: value}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(f"{name}:")


def test_asyncpg_dsn_accepts_sqlalchemy_style_url(tmp_path: Path) -> None:
    """The seed's `postgresql+asyncpg://` form is accepted and given to asyncpg without it."""
    url = "postgresql+asyncpg://u:p@db:5432/app"
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), "DATABASE_URL": url, **SECRETS})
    assert settings.asyncpg_dsn == "postgresql://u:p@db:5432/app"


def test_development_secrets_are_generated_once_and_reused(tmp_path: Path) -> None:
    """Without SECRET_KEY/INTERNAL_TOKEN, random ones are stored in DATA_DIR and reused."""
    first = Settings.from_env({"DATA_DIR": str(tmp_path)})
    second = Settings.from_env({"DATA_DIR": str(tmp_path)})
    assert len(first.secret_key) >= 32 and len(first.internal_token) >= 32
    assert first.secret_key == second.secret_key
    assert first.internal_token == second.internal_token
    assert first.secret_key != first.internal_token
    stored = json.loads((tmp_path / "secrets.json").read_text())
    assert stored["SECRET_KEY"] == first.secret_key
    assert (tmp_path / "secrets.json").stat().st_mode & 0o077 == 0


def test_explicit_secret_wins_over_stored_one(tmp_path: Path) -> None:
    """A SECRET_KEY from the environment is used even when a generated one exists."""
    Settings.from_env({"DATA_DIR": str(tmp_path)})
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), "SECRET_KEY": "e" * 40})
    assert settings.secret_key == "e" * 40


def test_readme_documents_every_variable() -> None:
    """The README's configuration table lists every variable with its default."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for variable in VARIABLES:
        assert f"`{variable.name}`" in readme, variable.name
        if variable.default:
            assert f"`{variable.default}`" in readme, variable.name


def test_dev_secrets_are_private_from_the_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DATA_DIR (and each folder created above it) is made 0700, secrets.json and the
    development VAPID key vapid.json 0600 at
    creation, under a umask that would allow anything: no chmod is ever needed (any is refused
    here), so no moment exists where another user could read them."""

    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("chmod after creation")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    old_umask = os.umask(0)
    try:
        data_dir = tmp_path / "parent" / "data"
        Settings.from_env({"DATA_DIR": str(data_dir)})
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "parent").stat().st_mode) == 0o700
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "secrets.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "vapid.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in data_dir.iterdir()) == ["secrets.json", "vapid.json"]


@pytest.mark.parametrize(
    "keys",
    [
        {"JWT_ALGORITHM": "RS256", "JWT_PUBLIC_KEY": "pem"},
        {"JWT_ALGORITHM": "ES256", "JWT_JWKS_URL": "https://id.example/jwks.json"},
    ],
)
@pytest.mark.parametrize("missing", ["JWT_AUDIENCE", "JWT_ISSUER"])
def test_asymmetric_tokens_need_audience_and_issuer(
    tmp_path: Path, keys: dict[str, str], missing: str
) -> None:
    """With RS256/ES256 keys (a PEM or a JWKS) start-up refuses to run unless both `aud` and
    `iss` are checked, naming the variable that is missing; with both it starts."""
    both = {"JWT_AUDIENCE": "app", "JWT_ISSUER": "https://id.example"}
    env = {"DATA_DIR": str(tmp_path), **SECRETS, **keys, **both}
    assert Settings.from_env(env).jwt_audience == "app"
    del env[missing]
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(f"{missing}: required with")


def test_hs256_needs_no_audience_or_issuer(tmp_path: Path) -> None:
    """The default HS256 with our own SECRET_KEY keeps `aud`/`iss` optional (no other
    application shares the key)."""
    assert Settings.from_env({"DATA_DIR": str(tmp_path), **SECRETS}).jwt_audience == ""


def test_url_passwords_are_secrets(tmp_path: Path) -> None:
    """The passwords inside DATABASE_URL and REDIS_URL (rediss:// too) are scrubbed from logs."""
    settings = Settings.from_env(
        {
            "DATA_DIR": str(tmp_path),
            **SECRETS,
            "DATABASE_URL": "postgresql://app:db-password-1@db:5432/app",
            "REDIS_URL": "rediss://gateway:redis-password-2@redis:6380/0",
        }
    )
    assert {"db-password-1", "redis-password-2"} <= set(settings.secrets())


def test_rediss_url_makes_a_tls_client(tmp_path: Path) -> None:
    """`rediss://` gives a client whose connections use TLS (no I/O here)."""
    from redis.asyncio import Redis
    from redis.asyncio.connection import SSLConnection

    from shared.redis_client import create_client

    settings = Settings.from_env(
        {"DATA_DIR": str(tmp_path), **SECRETS, "REDIS_URL": "rediss://u:p@redis:6380/0"}
    )
    client = create_client(settings)
    assert isinstance(client, Redis)
    assert client.connection_pool.connection_class is SSLConnection

"""Settings from the environment: secrets from `_FILE` twins, the API's and metrics' knobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from entitled.settings import (
    DEFAULT_ALLOWED_HOSTS,
    SECRET_VARIABLES,
    Settings,
    SettingsError,
    secret,
    without_secret_files,
)

VALUE = "s3cr3t-value-never-in-a-message"


def test_every_secret_variable_reads_its_file_twin(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(VALUE + "\n")  # a mounted secret usually ends with a newline
    for name in SECRET_VARIABLES:
        assert secret({f"{name}_FILE": str(path)}, name) == VALUE, name
        assert secret({name: VALUE}, name) == VALUE, name
        assert secret({}, name) is None


def test_both_set_is_a_clear_error_without_the_value(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(VALUE)
    for name in SECRET_VARIABLES:
        with pytest.raises(SettingsError) as info:
            secret({name: VALUE, f"{name}_FILE": str(path)}, name)
        assert f"{name} and {name}_FILE are both set" in str(info.value)
        assert VALUE not in str(info.value)


def test_unreadable_or_empty_file_names_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SettingsError, match=r"STRIPE_API_KEY_FILE: cannot read .*nope"):
        secret({"STRIPE_API_KEY_FILE": str(missing)}, "STRIPE_API_KEY")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SettingsError, match=r"ENTITLED_ADMIN_TOKEN_FILE: .* is empty"):
        secret({"ENTITLED_ADMIN_TOKEN_FILE": str(empty)}, "ENTITLED_ADMIN_TOKEN")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + VALUE.encode())
    with pytest.raises(SettingsError) as info:
        secret({"STRIPE_API_KEY_FILE": str(binary)}, "STRIPE_API_KEY")
    assert VALUE not in str(info.value)


def test_from_env_reads_secrets_from_files(tmp_path: Path) -> None:
    files = {}
    for name, value in {
        "STRIPE_WEBHOOK_SECRET": "whsec_a,whsec_b",
        "STRIPE_API_KEY": "sk_test_file",
        "ENTITLED_API_TOKEN": "read-tok",
        "ENTITLED_ADMIN_TOKEN": "admin-tok",
        "DATABASE_URL": "postgresql://u:pw@db/x",
        "ENTITLED_READ_DATABASE_URL": "postgresql://u:pw@r1/x,postgresql://u:pw@r2/x",
    }.items():
        path = tmp_path / name
        path.write_text(value + "\n")
        files[f"{name}_FILE"] = str(path)
    s = Settings.from_env(files)
    assert s.webhook_secrets == ("whsec_a", "whsec_b")
    assert s.stripe_api_key == "sk_test_file"
    assert (s.api_token, s.admin_token) == ("read-tok", "admin-tok")
    assert s.database_url == "postgresql://u:pw@db/x"
    assert s.read_database_urls == ("postgresql://u:pw@r1/x", "postgresql://u:pw@r2/x")


def test_api_and_metrics_knobs() -> None:
    s = Settings.from_env({})
    assert s.allowed_hosts == DEFAULT_ALLOWED_HOSTS
    assert s.metrics_host == "127.0.0.1"
    assert s.api_token is None and s.admin_token is None
    s = Settings.from_env(
        {"ENTITLED_ALLOWED_HOSTS": "api.example.com, api", "ENTITLED_METRICS_HOST": "0.0.0.0"}
    )
    assert s.allowed_hosts == ("api.example.com", "api")
    assert s.metrics_host == "0.0.0.0"


def test_children_get_resolved_values_without_the_file_twins(tmp_path: Path) -> None:
    env = {"DATABASE_URL_FILE": "/run/secrets/db", "STRIPE_API_KEY_FILE": "/k", "PATH": "/bin"}
    assert without_secret_files(env, ["DATABASE_URL"]) == {
        "STRIPE_API_KEY_FILE": "/k",
        "PATH": "/bin",
    }
    child = Settings(database_url="postgresql://x").child_env(env)
    assert child["DATABASE_URL"] == "postgresql://x"
    assert "DATABASE_URL_FILE" not in child

"""`entitled dev` prints only the secrets it generated itself: a webhook secret or token given
by the environment (or a `_FILE` twin) stays out of its output and goes to the children as a
value, without the twin. (The full run is tests/launcher/test_dev.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from entitled.settings import Settings
from launcher import dev
from launcher._dev_steps import child_environment, with_secrets

GIVEN = {
    "STRIPE_WEBHOOK_SECRET": "whsec_given_by_operator_1",
    "ENTITLED_API_TOKEN": "read_given_by_operator_2",
    "ENTITLED_ADMIN_TOKEN": "admin_given_by_operator_3",
}


def _summary(settings: Settings, capsys: pytest.CaptureFixture[str]) -> tuple[Settings, str]:
    settings, generated = with_secrets(settings)
    dev._summary(settings, generated, "http://127.0.0.1:1", "http://127.0.0.1:2", "it all")
    return settings, capsys.readouterr().out


def test_given_secrets_are_used_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {}
    for name, value in GIVEN.items():
        path = tmp_path / name
        path.write_text(value + "\n")
        files[f"{name}_FILE"] = str(path)
    settings = Settings.from_env({**files, "ENTITLED_HOME": str(tmp_path / "home")})
    settings, out = _summary(settings, capsys)
    for value in GIVEN.values():
        assert value not in out
    assert "from STRIPE_WEBHOOK_SECRET" in out and "from ENTITLED_ADMIN_TOKEN" in out
    assert not list((tmp_path / "home").glob("dev-*"))  # nothing generated, nothing kept

    for name, value in files.items():
        monkeypatch.setenv(name, value)
    env = child_environment(
        Settings(
            kafka_bootstrap_servers="k:9092",
            database_url="postgresql://db/x",
            webhook_secrets=settings.webhook_secrets,
            api_token=settings.api_token,
            admin_token=settings.admin_token,
        )
    )
    for name, value in GIVEN.items():
        assert env[name] == value and f"{name}_FILE" not in env  # both set would be refused
    assert Settings.from_env(env).admin_token == GIVEN["ENTITLED_ADMIN_TOKEN"]


def test_generated_secrets_are_printed_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(home=tmp_path / "home")
    settings, out = _summary(settings, capsys)
    assert settings.api_token and settings.admin_token and settings.webhook_secrets
    assert settings.api_token != settings.admin_token
    page = next(line for line in out.splitlines() if line.startswith("  page"))
    # the page gets the read token only
    assert page.endswith(f"#token={settings.api_token}") and settings.admin_token not in page
    assert settings.admin_token in out and settings.webhook_secrets[0] in out
    for name in ("dev-api-token", "dev-admin-token", "dev-webhook-secret"):
        path = tmp_path / "home" / name
        assert path.stat().st_mode & 0o077 == 0, name  # readable by the owner only
    # a restart keeps them (a bookmarked page, a configured Stripe CLI go on working)
    again, _ = _summary(Settings(home=tmp_path / "home"), capsys)
    assert (again.api_token, again.admin_token) == (settings.api_token, settings.admin_token)

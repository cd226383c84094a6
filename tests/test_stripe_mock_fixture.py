"""The `stripe_mock` fixture: the real binary answers current-shape objects, and a missing
binary fails the test (with the command that installs it) rather than skipping it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

import tests.support.stripe_mock as stripe_mock_fixture


def test_stripe_mock_answers_current_shape_objects(stripe_mock: str) -> None:
    reply = httpx.get(
        f"{stripe_mock}/v1/subscriptions/sub_123", auth=(stripe_mock_fixture.API_KEY, "")
    )
    assert reply.status_code == 200
    subscription = reply.json()
    assert subscription["object"] == "subscription"
    # basil moved the billing period from the subscription onto its items
    assert "current_period_end" in subscription["items"]["data"][0]
    assert stripe_mock.startswith("http://127.0.0.1:")


def test_missing_binary_fails_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stripe_mock_fixture, "BINARY", tmp_path / "stripe-mock")
    with pytest.raises(pytest.fail.Exception, match="make venv"):
        stripe_mock_fixture.start(tmp_path / "log")

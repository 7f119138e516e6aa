"""Store-URL redaction (common.urls): one rule for logs, reports, manifests and messages."""

from __future__ import annotations

import pytest

from common.urls import DEFAULT_STORE_URL, mask_password, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@cache:6380/2", "redis://:***@cache:6380/2"),
        ("rediss://app:pw@h/0", "rediss://app:***@h/0"),
        ("sqlite:///var/x.db", "sqlite:///var/x.db"),
        ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        # A lone user-info field: some clients send it as the password.
        ("redis://s3cret@h/0", "redis://***@h/0"),
        # Host kept as written: IPv6 brackets, port.
        ("redis://:p%40ss@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        # An '@' inside the password: everything up to the last '@' is user-info.
        ("redis://u:p@ss@h/0", "redis://u:***@h/0"),
        # URLs a parser refuses are redacted all the same.
        ("redis://:pw@h:99999999/0", "redis://:***@h:99999999/0"),
        ("redis://:pw@[::1/0", "redis://:***@[::1/0"),
        # Secret-looking query values.
        (
            "rediss://h/0?ssl_keyfile_password=abc&prefix=tt",
            "rediss://h/0?ssl_keyfile_password=***&prefix=tt",
        ),
        # An '@' after the authority is not user-info.
        ("redis://h/0?prefix=tt#a@b", "redis://h/0?prefix=tt#a@b"),
        (DEFAULT_STORE_URL, DEFAULT_STORE_URL),
    ],
)
def test_redact_url_hides_secrets_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret-pass@cache:6380/2",
        "rediss://app:s3cret-pass@h/0",
        "redis://s3cret-pass@h/0",
        "redis://:s3cret%2Dpass@h/0",
        "rediss://h/0?ssl_keyfile_password=s3cret-pass",
    ],
)
def test_mask_password_removes_the_secret_from_a_message(url: str) -> None:
    message = f"store URL {url!r}: the port must be a number (password s3cret-pass)"
    masked = mask_password(url, message)
    assert "s3cret" not in masked and "***" in masked
    assert masked.startswith("store URL ")


def test_mask_password_leaves_a_message_without_secrets_alone() -> None:
    assert (
        mask_password("redis://h:6379/0", "cannot connect to h:6379") == "cannot connect to h:6379"
    )

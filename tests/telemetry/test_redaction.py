import logging

import httpx
import pytest

from connectivity import ConfigError
from connectivity.telemetry import DEFAULT_REDACTION, REDACTED, RedactingFilter, Redaction, redact_httpx_logs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/a", "https://example.com/a"),
        ("https://user:pw@example.com:8443/a?x=1", "https://REDACTED:REDACTED@example.com:8443/a?x=1"),
        ("https://token@example.com/", "https://REDACTED@example.com/"),
        ("http://h/p?token=abc&page=2", "http://h/p?token=REDACTED&page=2"),
        ("http://h/p?Signature=s&AWSAccessKeyId=k", "http://h/p?Signature=REDACTED&AWSAccessKeyId=REDACTED"),
        ("http://h/p?access%5Ftoken=abc", "http://h/p?access%5Ftoken=REDACTED"),  # percent-encoded name
        ("http://h/p?token", "http://h/p?token"),  # no value, nothing to hide
        ("http://h/p?a=1#frag-with-secret", "http://h/p?a=1"),
        ("http://h/p@q?x=1", "http://h/p@q?x=1"),  # an @ in the path is not userinfo
        ("http://u:p@h?token=t", "http://REDACTED:REDACTED@h?token=REDACTED"),
    ],
)
def test_urls_lose_credentials_and_token_values(url: str, expected: str) -> None:
    assert DEFAULT_REDACTION.url(url) == expected


def test_headers_are_redacted_by_name_case_insensitively() -> None:
    pairs = [("Authorization", "Bearer x"), ("COOKIE", "a=b"), ("Set-Cookie", "c=d"), ("Accept", "json")]
    assert DEFAULT_REDACTION.headers_of(pairs) == [
        ("Authorization", REDACTED),
        ("COOKIE", REDACTED),
        ("Set-Cookie", REDACTED),
        ("Accept", "json"),
    ]


def test_extend_adds_to_the_defaults() -> None:
    policy = DEFAULT_REDACTION.extend(headers=["X-Tenant-Secret"], query_params=["session"])
    assert policy.header("x-tenant-secret", "v") == REDACTED
    assert policy.header("authorization", "v") == REDACTED
    assert policy.query("session=1&q=2") == "session=REDACTED&q=2"


@pytest.mark.parametrize("names", ["authorization", ["ok", ""], ["ok", 3]])
def test_bad_names_are_config_errors(names: object) -> None:
    with pytest.raises(ConfigError, match=r"Redaction\.headers"):
        Redaction(headers=names)  # type: ignore[arg-type]


def test_filter_redacts_urls_in_log_arguments(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redaction")
    logger.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="test.redaction"):
            logger.info("HTTP Request: %s %s", "GET", httpx.URL("http://u:secret@h/p?token=secret"))
            logger.info("plain %(url)s", {"url": "http://h/?api_key=secret"})
    finally:
        logger.filters.clear()
    assert "secret" not in caplog.text
    assert "http://REDACTED:REDACTED@h/p?token=REDACTED" in caplog.text
    assert "api_key=REDACTED" in caplog.text


def test_httpx_logger_gets_one_filter_only() -> None:
    redact_httpx_logs()
    redact_httpx_logs()
    filters = [f for f in logging.getLogger("httpx").filters if isinstance(f, RedactingFilter)]
    assert len(filters) == 1

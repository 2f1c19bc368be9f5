import calendar
import json
import math
from pathlib import Path

import pytest

from connectivity.policies import parse_http_date, parse_retry_after

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "retry-after-vectors.json").read_text("utf-8"))
# The HTTP-date expectations in the vectors are relative to this instant.
NOW = calendar.timegm((2050, 8, 18, 2, 0, 18, 0, 0, 0))


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{v['why']}:{v['value']!r}" for v in VECTORS])
def test_every_vector_parses_as_expected(vector: dict[str, object]) -> None:
    got = parse_retry_after(str(vector["value"]), now=NOW)
    expected = vector["expect"]
    if expected is None:
        assert got is None
    elif expected == "valid":
        assert got is not None
        assert got >= 0
    else:
        assert got == expected


def test_absent_header_is_none() -> None:
    assert parse_retry_after(None, now=NOW) is None


def test_past_date_means_now() -> None:
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=NOW) == 0


def test_absurdly_long_delay_does_not_overflow() -> None:
    assert parse_retry_after("9" * 400, now=NOW) == math.inf


@pytest.mark.parametrize(
    "value",
    ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"],
)
def test_the_three_rfc9110_date_forms_agree(value: str) -> None:
    now_2026 = calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0))
    assert parse_http_date(value, now=now_2026) == calendar.timegm((1994, 11, 6, 8, 49, 37, 0, 0, 0))


def test_rfc850_two_digit_years_within_50_years_ahead_are_in_this_century() -> None:
    now_2050 = NOW
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", now=now_2050) == calendar.timegm(
        (2094, 11, 6, 8, 49, 37, 0, 0, 0)
    )
    now_2026 = calendar.timegm((2026, 1, 1, 0, 0, 0, 0, 0, 0))
    assert parse_http_date("Friday, 06-Nov-99 08:49:37 GMT", now=now_2026) == calendar.timegm(
        (1999, 11, 6, 8, 49, 37, 0, 0, 0)
    )


@pytest.mark.parametrize(
    "value",
    [
        "Mon, 31 Feb 2050 00:00:00 GMT",
        "Mon, 01 Jan 2050 24:00:00 GMT",
        "Mon, 01 Jan 2050 00:60:00 GMT",
        "Xyz, 01 Jan 2050 00:00:00 GMT",
    ],
)
def test_impossible_dates_are_invalid(value: str) -> None:
    assert parse_http_date(value, now=NOW) is None

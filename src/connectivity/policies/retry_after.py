"""Parsing ``Retry-After`` (RFC 9110 §10.2.3) strictly.

``Retry-After = HTTP-date / delay-seconds``. ``delay-seconds`` is ``1*DIGIT`` (ASCII digits only: no sign,
fraction, exponent or list). ``HTTP-date`` is one of the three forms of RFC 9110 §5.6.7: IMF-fixdate
(``Sun, 06 Nov 1994 08:49:37 GMT``), the obsolete RFC 850 form (``Sunday, 06-Nov-94 08:49:37 GMT``) and
asctime (``Sun Nov  6 08:49:37 1994``). Day and month names and ``GMT`` are matched case-insensitively, as
deployed caches do; anything else (other zones, two-digit years in IMF-fixdate, missing comma, doubled spaces)
is invalid. An invalid value yields ``None`` and the caller falls back to its own backoff.
"""

from __future__ import annotations

import calendar
import re
import time

__all__ = ["parse_http_date", "parse_retry_after"]

_DIGITS = re.compile(r"[0-9]+\Z", re.ASCII)
_DAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_LONG_DAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MONTH = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF = re.compile(rf"{_DAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} gmt\Z", re.ASCII | re.IGNORECASE)
_RFC850 = re.compile(rf"{_LONG_DAY}, ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} gmt\Z", re.ASCII | re.IGNORECASE)
_ASCTIME = re.compile(rf"{_DAY} {_MONTH} ([0-9 ][0-9]) {_TIME} ([0-9]{{4}})\Z", re.ASCII | re.IGNORECASE)
_MONTHS = {
    name: index
    for index, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
}
_OWS = " \t"


def _epoch(year: int, month: str, day: int, hour: int, minute: int, second: int) -> float | None:
    if not (1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        return None
    month_number = _MONTHS[month.lower()]
    if day > calendar.monthrange(year, month_number)[1]:
        return None
    return float(calendar.timegm((year, month_number, day, hour, minute, min(second, 59), 0, 0, 0)))


def parse_http_date(value: str, *, now: float) -> float | None:
    """Parse an HTTP-date into POSIX seconds, or ``None`` if it is not one.

    Args:
        value: The field value, without surrounding whitespace.
        now: The current POSIX time, used to place RFC 850 two-digit years (RFC 9110 §5.6.7: a year more than
            50 years in the future is taken as the most recent past year with those digits).
    """
    if match := _IMF.match(value):
        day, month, year, hour, minute, second = match.groups()
        return _epoch(int(year), month, int(day), int(hour), int(minute), int(second))
    if match := _RFC850.match(value):
        day, month, short_year, hour, minute, second = match.groups()
        this_year = time_year(now)
        year = this_year - this_year % 100 + int(short_year)
        if year > this_year + 50:
            year -= 100
        elif year < this_year - 49:
            year += 100
        return _epoch(year, month, int(day), int(hour), int(minute), int(second))
    if match := _ASCTIME.match(value):
        month, day, hour, minute, second, year = match.groups()
        return _epoch(int(year), month, int(day.strip()), int(hour), int(minute), int(second))
    return None


def time_year(epoch: float) -> int:
    """The UTC calendar year of a POSIX time."""
    return time.gmtime(epoch).tm_year


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` value, or ``None`` if absent or invalid.

    A date in the past means "now" (0 seconds). The result is not capped: capping is the retry policy's job.

    Args:
        value: The raw field value (``None`` when the header is absent).
        now: The current POSIX time (for the HTTP-date form).
    """
    if value is None:
        return None
    value = value.strip(_OWS)
    if not value:
        return None
    if _DIGITS.match(value):
        # float() of a digit string never raises: absurdly long values become inf, which the policy caps.
        return float(value)
    when = parse_http_date(value, now=now)
    if when is None:
        return None
    return max(0.0, when - now)

"""Whole numbers from form fields and query strings, for every floor's views.

``str.isdigit()`` is no guard before ``int()``: it is true for "²" and "٣" (int() fails on the first,
accepts the second) and for a 5,000-digit string (int() refuses more than 4,300 digits, and anything
past 2**63 overflows the database's integer columns). Each was a 500; here each is simply "not a number".
"""

from __future__ import annotations

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def int_param(value: str | None, *, minimum: int = 0, maximum: int = INT32_MAX) -> int | None:
    """``value`` as an int when it is ASCII digits within [minimum, maximum], else None."""
    if value is None:
        return None
    text = str(value).strip()
    # 19 digits hold any int64; longer strings are never converted (no quadratic int() on huge input).
    if not text or len(text) > 19 or not (text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if minimum <= number <= maximum else None

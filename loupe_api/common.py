"""Pagination and input types shared by the routers."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Generic, TypeVar

from django.db.models import QuerySet
from ninja import Schema
from pydantic import AfterValidator, Field, Strict

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
# Ids fit a signed 64-bit column; bigger numbers would overflow the database driver, not "not found".
MAX_ID = 2**63 - 1

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
# Numbers in JSON bodies: a JSON integer and nothing else. Pydantic's lax mode would take true as 1 and
# "03", "+3" or 3.0 as 3, so a client's bug (or a probe) would be stored as a rating. Query and path
# parameters arrive as text and keep ``Id``/``int``.
JsonInt = Annotated[int, Strict()]
JsonId = Annotated[int, Strict(), Field(ge=1, le=MAX_ID)]


def _printable(value: str) -> str:
    # NUL is refused by PostgreSQL text columns, and no filter value needs control characters.
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError("must not contain control characters")
    return value


FilterText = Annotated[str, Field(max_length=200), AfterValidator(_printable)]
# For values that are long by nature (URLs).
LongFilterText = Annotated[str, Field(max_length=2048), AfterValidator(_printable)]


class PageQuery(Schema):
    limit: int = Field(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description=f"At most {MAX_PAGE_SIZE}.")
    offset: int = Field(0, ge=0, le=10_000_000)


T = TypeVar("T")


class Page(Schema, Generic[T]):
    items: list[T]
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last page.")


def paginate(queryset: QuerySet, page: PageQuery) -> dict:
    """One page of a queryset, fetching one row more than asked to know whether another page follows."""
    rows = list(queryset[page.offset : page.offset + page.limit + 1])
    has_more = len(rows) > page.limit
    return {
        "items": rows[: page.limit],
        "limit": page.limit,
        "offset": page.offset,
        "next_offset": page.offset + page.limit if has_more else None,
    }

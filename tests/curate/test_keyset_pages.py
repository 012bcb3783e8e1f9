"""Pages of big tables: keyset pages without COUNT(*), counts capped, estimates labelled."""

from __future__ import annotations

import pytest
from django.db import connection

from curate import selectors
from curate.selectors import keyset_page
from pool.models import Caption
from pool.selectors import pool_counts_estimate
from tests.curate.conftest import make_caption, make_image

pytestmark = pytest.mark.django_db


def test_keyset_pages_walk_forward_and_back_without_gaps(monkeypatch):
    image = make_image(1)
    ids = [make_caption(image, f"caption {i}").pk for i in range(7)]
    monkeypatch.setattr(selectors, "COUNT_CAP", 5)
    queryset = Caption.objects.all()
    first = keyset_page(queryset, after=None, before=None, limit=3)
    assert [c.pk for c in first] == ids[:3] and not first.has_previous
    assert first.count == 5 and first.count_capped
    second = keyset_page(queryset, after=first.next_after, before=None, limit=3)
    assert [c.pk for c in second] == ids[3:6] and second.has_previous and second.has_next
    last = keyset_page(queryset, after=second.next_after, before=None, limit=3)
    assert [c.pk for c in last] == ids[6:] and not last.has_next
    back = keyset_page(queryset, after=None, before=second.prev_before, limit=3)
    assert [c.pk for c in back] == ids[:3] and not back.has_previous


def test_newest_first_keyset_pages():
    image = make_image(2)
    ids = [make_caption(image, f"caption {i}").pk for i in range(5)]
    queryset = Caption.objects.all()
    first = keyset_page(queryset, after=None, before=None, limit=2, descending=True)
    assert [c.pk for c in first] == ids[::-1][:2]
    second = keyset_page(queryset, after=first.next_after, before=None, limit=2, descending=True)
    assert [c.pk for c in second] == ids[::-1][2:4]
    assert [
        c.pk for c in keyset_page(queryset, after=None, before=second.prev_before, limit=2, descending=True)
    ] == ids[::-1][:2]


def test_a_small_pool_is_counted_not_estimated():
    make_caption(make_image(3), "one pair")
    assert pool_counts_estimate() is None


@pytest.mark.postgres
def test_a_big_pool_shows_postgres_estimates(monkeypatch):
    from pool import selectors as pool_selectors

    image = make_image(4)
    for i in range(20):
        make_caption(image, f"pair {i}", status="ok" if i % 4 else "trivial")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE pool_caption")
        cursor.execute("ANALYZE pool_image")
    monkeypatch.setattr(pool_selectors, "ESTIMATE_ABOVE_ROWS", 0)
    estimate = pool_counts_estimate()
    assert estimate["captions_total"] == 20
    assert estimate["captions"] == {"ok": 15, "trivial": 5}

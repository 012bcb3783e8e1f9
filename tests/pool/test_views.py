from __future__ import annotations

import re

import pytest
from django.urls import reverse

from pool.importing import pool_import
from pool.models import CleaningRun, Image, ImportRun, RunStatus
from tests.pool.conftest import write_images

pytestmark = pytest.mark.django_db


@pytest.fixture
def imported(shard):
    return pool_import(source=str(shard))


def login(client, user):
    client.force_login(user)
    return client


@pytest.mark.parametrize("name", ["pool:browse", "pool:imports", "pool:cleaning"])
def test_pages_need_login(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302 and "/login/" in response["Location"]


@pytest.mark.parametrize("name", ["pool:browse", "pool:imports", "pool:cleaning"])
def test_annotators_are_refused(client, annotator, name):
    assert login(client, annotator).get(reverse(name)).status_code == 403


def test_browser_shows_images_captions_and_stats(client, curator, imported):
    response = login(client, curator).get(reverse("pool:browse"))
    body = response.content.decode()
    assert response.status_code == 200
    assert body.count('class="card pool-tile') == 4
    assert "a photo number 2" in body
    assert '<svg class="chart"' in body
    assert Image.objects.first().thumb_url in body


def test_browser_filters_by_caption_text_and_status(client, curator, imported):
    login(client, curator)
    body = client.get(reverse("pool:browse"), {"q": "number 1"}).content.decode()
    assert "a photo number 1" in body and "a photo number 2" not in body
    body = client.get(reverse("pool:browse"), {"status": "low_res"}).content.decode()
    assert "No images match" in body


def test_browser_htmx_request_gets_only_the_results(client, curator, imported):
    login(client, curator)
    response = client.get(reverse("pool:browse"), {"view": "table"}, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="results">')
    assert "<html" not in body and "pool-table" in body


def test_browser_pages_by_keyset(client, curator, settings, tmp_path, monkeypatch):
    monkeypatch.setattr("pool.selectors.PAGE_SIZE", 2)
    folder = tmp_path / "many"
    write_images(folder, 5)
    for i in range(5):
        (folder / f"img{i}.txt").write_text(f"caption {i}", encoding="utf-8")
    pool_import(source=str(folder))
    login(client, curator)
    ids = list(Image.objects.order_by("-pk").values_list("pk", flat=True))
    first = client.get(reverse("pool:browse")).context["page"]
    assert [i.pk for i in first.images] == ids[:2] and first.next_after == ids[1]
    second = client.get(reverse("pool:browse"), {"after": first.next_after}).context["page"]
    assert [i.pk for i in second.images] == ids[2:4]
    back = client.get(reverse("pool:browse"), {"before": second.prev_before}).context["page"]
    assert [i.pk for i in back.images] == ids[:2]


def test_image_detail_lists_all_captions_with_status_and_source(client, curator, imported):
    image = Image.objects.get(source_key="000000000")
    body = login(client, curator).get(reverse("pool:image_detail", args=[image.pk])).content.decode()
    assert "a photo number 0" in body and "alt text" in body and image.sha256 in body


def test_image_detail_404(client, curator):
    assert login(client, curator).get(reverse("pool:image_detail", args=[999])).status_code == 404


def test_curator_sees_imports_but_no_form(client, curator, imported):
    body = login(client, curator).get(reverse("pool:imports")).content.decode()
    assert "shard-00000.tar" in body and "Start import" not in body


def test_curator_cannot_start_an_import(client, curator, shard):
    response = login(client, curator).post(
        reverse("pool:import_start"), {"source": str(shard), "caption_source": "alt"}
    )
    assert response.status_code == 403
    assert ImportRun.objects.count() == 0


def test_admin_starts_an_import_that_runs(
    client, admin_user, shard, eager_celery, django_capture_on_commit_callbacks, settings
):
    settings.LOUPE_IMPORT_ROOTS = [str(shard.parent)]
    login(client, admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("pool:import_start"), {"source": str(shard), "caption_source": "alt"})
    run = ImportRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "pool:import_detail", args=[run.pk]
    )
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.created_by == admin_user
    assert Image.objects.count() == 4
    body = client.get(response["Location"]).content.decode()
    assert "000000003.jpg has no caption" in body


def test_import_form_refuses_dot_dot(client, admin_user, shard, settings):
    settings.LOUPE_IMPORT_ROOTS = [str(shard.parent.parent)]
    response = login(client, admin_user).post(
        reverse("pool:import_start"),
        {"source": f"{shard.parent}/../{shard.parent.name}/{shard.name}", "caption_source": "alt"},
    )
    assert response.status_code == 400
    assert "refused" in response.content.decode()
    assert ImportRun.objects.count() == 0


def test_import_form_refuses_paths_outside_the_import_roots(client, admin_user, shard, settings, tmp_path):
    settings.LOUPE_IMPORT_ROOTS = [str(tmp_path / "allowed")]
    response = login(client, admin_user).post(
        reverse("pool:import_start"), {"source": str(shard), "caption_source": "alt"}
    )
    assert response.status_code == 400
    assert "outside the allowed import roots" in response.content.decode()


def test_import_progress_partial_polls_until_finished(client, curator):
    run = ImportRun.objects.create(source="/x", format="folder", status=RunStatus.RUNNING, done=3, total=10)
    body = login(client, curator).get(reverse("pool:import_progress", args=[run.pk])).content.decode()
    assert 'hx-trigger="every 2s"' in body and "3/10" in body
    run.status = RunStatus.SUCCEEDED
    run.save()
    body = client.get(reverse("pool:import_progress", args=[run.pk])).content.decode()
    assert "hx-trigger" not in body


def test_admin_starts_cleaning(
    client, admin_user, imported, eager_celery, django_capture_on_commit_callbacks
):
    login(client, admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("pool:cleaning_start"), {"min_side": 100, "radius": 4})
    run = CleaningRun.objects.get()
    run.refresh_from_db()
    assert response.status_code == 302
    assert run.status == RunStatus.SUCCEEDED and run.params == {"min_side": 100, "hamming_radius": 4}
    assert set(Image.objects.values_list("status", flat=True)) == {"low_res", "unreadable"}
    body = client.get(reverse("pool:cleaning_detail", args=[run.pk])).content.decode()
    assert "low_res" in body


def test_curator_cannot_start_cleaning(client, curator):
    assert (
        login(client, curator).post(reverse("pool:cleaning_start"), {"min_side": 64, "radius": 6}).status_code
        == 403
    )


def test_admin_sees_the_import_and_cleaning_forms(client, admin_user):
    login(client, admin_user)
    assert "Start import" in client.get(reverse("pool:imports")).content.decode()
    assert "Run cleaning" in client.get(reverse("pool:cleaning")).content.decode()


def test_pages_have_no_inline_scripts_or_handlers(client, admin_user, imported):
    login(client, admin_user)
    image = Image.objects.first()
    for url in (
        reverse("pool:browse"),
        reverse("pool:browse") + "?view=table",
        reverse("pool:image_detail", args=[image.pk]),
        reverse("pool:imports"),
        reverse("pool:import_detail", args=[imported.pk]),
        reverse("pool:cleaning"),
    ):
        body = client.get(url).content.decode()
        assert "<script>" not in body and " onclick=" not in body and " onload=" not in body, url


# --- images read in place ---


def test_image_file_view_serves_the_bytes_from_the_shard(client, annotator, shard, imported):
    from tests.conftest import image_bytes

    image = Image.objects.get(source_key="000000002")
    assert image.file == "" and image.url == reverse("pool:image_file", args=[image.pk])
    # Any signed-in user, like media: annotators see their tasks' images through it.
    response = login(client, annotator).get(image.url)
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    assert response.content == image_bytes(96, 80, seed=2)
    assert response["ETag"] == f'"{image.sha256}"'


def test_image_file_view_needs_login(client, imported):
    image = Image.objects.first()
    assert client.get(image.url).status_code == 302


def test_image_file_view_refuses_bytes_that_changed_under_it(client, curator, shard, imported):
    image = Image.objects.get(source_key="000000002")
    data = bytearray(shard.read_bytes())
    data[image.offset + 100] ^= 0xFF
    shard.write_bytes(bytes(data))
    response = login(client, curator).get(image.url)
    assert response.status_code == 404 and "sha256 differs" in response.content.decode()


def test_thumbnails_are_made_once_and_kept_on_disk(client, curator, imported, settings):
    image = Image.objects.get(source_key="000000001")
    login(client, curator)
    response = client.get(image.thumb_url)
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    b"".join(response.streaming_content)
    cached = list((settings.MEDIA_ROOT / "thumbs").rglob("*.jpg"))
    assert [p.name for p in cached] == [f"{image.sha256}-{settings.LOUPE_THUMB_SIZE}.jpg"]
    # Nothing else is written: the pool's images are not copied.
    assert not (settings.MEDIA_ROOT / "images").exists()


def test_browser_filters_by_source_identity(client, curator, tmp_path):
    from tests.conftest import image_bytes
    from tests.pool.conftest import i2d_row, write_i2d_webdataset

    rows = [i2d_row(f"{i:09d}", f"{i:032x}", f"caption {i}", extra=f"tag{i % 2}") for i in range(4)]
    write_i2d_webdataset(tmp_path, "00000", rows, {r["key"]: image_bytes(seed=i) for i, r in enumerate(rows)})
    pool_import(source=str(tmp_path))
    login(client, curator)

    def shown(**params):
        body = client.get(reverse("pool:browse"), params).content.decode()
        return sorted(int(n) for n in re.findall(r"<bdi>caption (\d+)</bdi>", body))

    assert shown(uid=f"{2:032x}") == [2]
    assert shown(key="000000003") == [3]
    assert shown(url="http://example.test/000000001.jpg") == [1]
    assert shown(meta="extra=tag1") == [1, 3]
    assert shown(meta="original_width=192") == [0, 1, 2, 3]


def test_image_detail_shows_the_source_identity_and_where_the_bytes_are(client, curator, imported):
    image = Image.objects.get(source_key="000000001")
    body = login(client, curator).get(reverse("pool:image_detail", args=[image.pk])).content.decode()
    assert image.shard.uri in body and f"bytes {image.offset}" in body
    assert image.captions.get().uid in body


def test_shards_page_lists_shards_with_their_status(client, curator, imported, shard):
    body = login(client, curator).get(reverse("pool:shards")).content.decode()
    assert str(shard) in body and "indexed" in body


def test_import_form_refuses_every_path_when_no_import_root_is_set(client, admin_user, shard, settings):
    settings.LOUPE_IMPORT_ROOTS = []
    response = login(client, admin_user).post(
        reverse("pool:import_start"), {"source": str(shard), "caption_source": "alt"}
    )
    assert response.status_code == 400 and "LOUPE_IMPORT_ROOTS" in response.content.decode()
    assert ImportRun.objects.count() == 0


def test_an_import_with_problems_says_so_on_its_page(client, curator, shard):
    run = pool_import(source=str(shard))
    assert run.outcome == "finished_with_problems"
    body = login(client, curator).get(reverse("pool:import_detail", args=[run.pk])).content.decode()
    assert "Finished with problems" in body and "samples skipped" in body

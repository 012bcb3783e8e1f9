"""Export listing and download: files inside EXPORT_DIR only."""

from __future__ import annotations

import pytest

from curate.models import Export

pytestmark = pytest.mark.django_db


@pytest.fixture
def export_file(settings):
    settings.EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    path = settings.EXPORT_DIR / "kept.jsonl"
    path.write_text('{"uid": "abc"}\n')
    return Export.objects.create(kind="jsonl", path=str(path), status="succeeded", manifest={"rows": 1})


def test_admin_downloads_an_export(api_client, export_file):
    tc, _ = api_client("admin")
    listing = tc.get("/api/exports").json()
    assert listing["items"][0]["files"] == ["kept.jsonl"]
    response = tc.get(f"/api/exports/{export_file.pk}/download")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b'{"uid": "abc"}\n'
    assert 'filename="kept.jsonl"' in response["Content-Disposition"]


def test_curator_cannot_download_exports(api_client, export_file):
    tc, _ = api_client("curator")
    assert tc.get(f"/api/exports/{export_file.pk}/download").status_code == 403


def test_export_path_outside_export_dir_is_refused(api_client, settings, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    settings.EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    tc, _ = api_client("admin")
    for path in (str(secret), str(settings.EXPORT_DIR / ".." / "secret.txt"), "../secret.txt"):
        export = Export.objects.create(kind="jsonl", path=path, status="succeeded")
        response = tc.get(f"/api/exports/{export.pk}/download")
        assert response.status_code == 403, path
        assert b"do not serve" not in response.content


def test_symlink_out_of_export_dir_is_refused(api_client, settings, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    settings.EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    (settings.EXPORT_DIR / "link.jsonl").symlink_to(secret)
    export = Export.objects.create(kind="jsonl", path=str(settings.EXPORT_DIR / "link.jsonl"))
    tc, _ = api_client("admin")
    assert tc.get(f"/api/exports/{export.pk}/download").status_code == 403


def test_folder_export_serves_only_its_own_files(api_client, settings, tmp_path):
    (tmp_path / "secret.txt").write_text("do not serve")
    shards = settings.EXPORT_DIR / "wds"
    shards.mkdir(parents=True)
    (shards / "shard-000000.tar").write_bytes(b"tar bytes")
    export = Export.objects.create(kind="webdataset", path=str(shards), status="succeeded")
    tc, _ = api_client("admin")
    assert tc.get(f"/api/exports/{export.pk}").json()["files"] == ["shard-000000.tar"]
    assert tc.get(f"/api/exports/{export.pk}/download").status_code == 400
    ok = tc.get(f"/api/exports/{export.pk}/download?file=shard-000000.tar")
    assert b"".join(ok.streaming_content) == b"tar bytes"
    for bad in ("../../secret.txt", "/etc/passwd", "..%2F..%2Fsecret.txt"):
        response = tc.get(f"/api/exports/{export.pk}/download?file={bad}")
        assert response.status_code in {403, 404}, bad


def test_export_without_file_is_404(api_client):
    export = Export.objects.create(kind="jsonl", path="", status="running")
    tc, _ = api_client("admin")
    assert tc.get(f"/api/exports/{export.pk}/download").status_code == 404

"""Imports through the API: server paths only inside LOUPE_IMPORT_ROOTS; uploads unpacked safely."""

from __future__ import annotations

import io
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from loupe_api.pool import upload_unpack
from pool.models import ImportRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def import_root(settings, tmp_path):
    root = tmp_path / "imports"
    (root / "batch1").mkdir(parents=True)
    (root / "batch1" / "pairs.jsonl").write_text("")
    (tmp_path / "outside").mkdir()
    settings.LOUPE_IMPORT_ROOTS = [str(root)]
    return root


def test_imports_are_disabled_without_roots(api_client, settings):
    settings.LOUPE_IMPORT_ROOTS = []
    tc, _ = api_client("admin")
    response = tc.post("/api/imports", {"source": "/tmp"}, content_type="application/json")
    assert response.status_code == 403
    assert "LOUPE_IMPORT_ROOTS" in response.json()["detail"]


@pytest.mark.parametrize(
    "source", ["../outside", "batch1/../../outside", "/etc", "/etc/passwd", "{tmp}/outside", "batch1/../.."]
)
def test_paths_outside_the_roots_are_refused(api_client, import_root, source):
    tc, _ = api_client("admin")
    response = tc.post(
        "/api/imports", {"source": source.format(tmp=import_root.parent)}, content_type="application/json"
    )
    assert response.status_code == 403, response.content
    assert "outside the import roots" in response.json()["detail"]
    assert not ImportRun.objects.exists()


def test_symlink_leaving_the_root_is_refused(api_client, import_root):
    (import_root / "escape").symlink_to(import_root.parent / "outside")
    tc, _ = api_client("admin")
    response = tc.post("/api/imports", {"source": "escape"}, content_type="application/json")
    assert response.status_code == 403


def test_missing_path_says_so(api_client, import_root):
    tc, _ = api_client("admin")
    response = tc.post("/api/imports", {"source": "nope"}, content_type="application/json")
    assert response.status_code == 400 and "does not exist" in response.json()["detail"]


def test_nul_byte_in_path_is_422(api_client, import_root):
    tc, _ = api_client("admin")
    response = tc.post("/api/imports", {"source": "batch1\x00"}, content_type="application/json")
    assert response.status_code == 422


def test_curator_cannot_import(api_client, import_root):
    tc, _ = api_client("curator")
    response = tc.post("/api/imports", {"source": "batch1"}, content_type="application/json")
    assert response.status_code == 403


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_slip_member_is_refused(tmp_path):
    upload = SimpleUploadedFile("pairs.zip", _zip({"ok.txt": b"x", "../../evil.txt": b"x"}))
    with pytest.raises(Exception, match="points outside the archive"):
        upload_unpack(upload=upload, folder=tmp_path / "u")
    assert not (tmp_path / "evil.txt").exists()


def test_zip_bomb_is_refused(tmp_path, settings):
    settings.LOUPE_UPLOAD_MAX_UNPACKED_BYTES = 10_000
    upload = SimpleUploadedFile("pairs.zip", _zip({"big.txt": b"0" * 100_000}))
    with pytest.raises(Exception, match="unpacks to 100000 bytes"):
        upload_unpack(upload=upload, folder=tmp_path / "u")


def test_zip_is_unpacked_into_its_folder(tmp_path):
    upload = SimpleUploadedFile("pairs.zip", _zip({"a/pairs.jsonl": b"{}", "a/x.jpg": b"jpg"}))
    folder = upload_unpack(upload=upload, folder=tmp_path / "u")
    assert (folder / "a" / "pairs.jsonl").read_bytes() == b"{}"


def test_upload_of_other_file_types_is_refused(api_client):
    tc, _ = api_client("admin")
    response = tc.post("/api/imports/upload", {"file": SimpleUploadedFile("x.html", b"<script>")})
    assert response.status_code == 400 and ".zip" in response.json()["detail"]

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


def test_upload_of_other_file_types_is_refused(api_client, import_root):
    tc, _ = api_client("admin")
    response = tc.post("/api/imports/upload", {"file": SimpleUploadedFile("x.html", b"<script>")})
    assert response.status_code == 400 and ".zip" in response.json()["detail"]


SCRIPTED_SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
SCRIPTED_HTML = b"<!doctype html><html><script>alert(1)</script></html>"


def _run_after_upload(tc, name, data, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = tc.post("/api/imports/upload", {"file": SimpleUploadedFile(name, data)})
    assert response.status_code == 202, response.content
    run = tc.get(f"/api/imports/{response.json()['id']}").json()
    assert run["status"] == "succeeded", run
    return run


def test_uploaded_zip_with_a_table_imports_it_and_rejects_markup_posing_as_images(
    api_client, import_root, eager_celery, django_capture_on_commit_callbacks
):
    from pool.models import Caption, Image
    from tests.conftest import image_bytes

    lines = [
        '{"image": "a.jpg", "caption": "a real photo"}',
        '{"image": "evil.jpg", "caption": "svg named jpg"}',
        '{"image": "page.png", "caption": "html named png"}',
        '{"image": "../../../etc/passwd", "caption": "traversal"}',
    ]
    members = {"pairs.jsonl": "\n".join(lines).encode(), "a.jpg": image_bytes(seed=3)}
    members |= {"evil.jpg": SCRIPTED_SVG, "page.png": SCRIPTED_HTML}
    tc, _ = api_client("admin")
    run = _run_after_upload(tc, "pairs.zip", _zip(members), django_capture_on_commit_callbacks)
    assert list(Caption.objects.values_list("text", flat=True)) == ["a real photo"]
    assert Image.objects.count() == 1
    summary = str(run["summary"])
    assert "SVG" in summary and "HTML" in summary and "outside" in summary


def test_uploaded_zip_folder_rejects_svg_and_html(
    api_client, import_root, eager_celery, django_capture_on_commit_callbacks
):
    from pool.models import Caption
    from tests.conftest import image_bytes

    members = {"a.jpg": image_bytes(seed=3), "a.txt": b"a real photo", "evil.jpg": SCRIPTED_SVG}
    members |= {"evil.txt": b"svg", "page.png": SCRIPTED_HTML, "page.txt": b"html", "x.svg": SCRIPTED_SVG}
    tc, _ = api_client("admin")
    run = _run_after_upload(tc, "pairs.zip", _zip(members), django_capture_on_commit_callbacks)
    assert list(Caption.objects.values_list("text", flat=True)) == ["a real photo"]
    assert "SVG" in str(run["summary"]) and "HTML" in str(run["summary"])


def test_uploaded_jsonl_cannot_reach_files_outside_its_folder(
    api_client, import_root, eager_celery, django_capture_on_commit_callbacks
):
    from pool.models import Image
    from tests.conftest import image_bytes

    (import_root / "batch1" / "inside-root.jpg").write_bytes(image_bytes(seed=4))
    lines = b'{"image": "../../batch1/inside-root.jpg", "caption": "x"}\n{"image": "/etc/hostname", "caption": "y"}\n'
    tc, _ = api_client("admin")
    with django_capture_on_commit_callbacks(execute=True):
        response = tc.post("/api/imports/upload", {"file": SimpleUploadedFile("pairs.jsonl", lines)})
    assert response.status_code == 202, response.content
    run = tc.get(f"/api/imports/{response.json()['id']}").json()
    # Every row was refused: an import that imported nothing is failed, and says why.
    assert run["status"] == "failed" and run["error"].startswith("Nothing was imported"), run
    assert not Image.objects.exists()
    assert "outside" in str(run["summary"])


def test_server_path_import_runs_and_is_watchable(
    api_client, import_root, eager_celery, django_capture_on_commit_callbacks
):
    from pool.models import Caption
    from tests.conftest import image_bytes

    (import_root / "batch1" / "pairs.jsonl").unlink()
    (import_root / "batch1" / "cat.jpg").write_bytes(image_bytes(seed=5))
    (import_root / "batch1" / "cat.txt").write_text("a cat\n")
    tc, _ = api_client("admin")
    with django_capture_on_commit_callbacks(execute=True):
        response = tc.post("/api/imports", {"source": "batch1"}, content_type="application/json")
    assert response.status_code == 202
    run = tc.get(f"/api/imports/{response.json()['id']}").json()
    assert (run["status"], run["done"], run["total"]) == ("succeeded", 1, 1)
    assert list(Caption.objects.values_list("text", flat=True)) == ["a cat"]
    assert tc.get("/api/imports").json()["items"][0]["id"] == run["id"]


def _patched_zip(*, flag_bits: int = 0, method: int | None = None) -> bytes:
    """A one-member ZIP with its headers patched the way other tools write them: Python's zipfile can
    write neither encrypted members nor zstd ones, but it reads (and fails on) both."""
    data = bytearray(_zip({"pairs.jsonl": b'{"image": "a.jpg", "caption": "x"}\n'}))
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    data[local + 6] |= flag_bits
    data[central + 8] |= flag_bits
    if method is not None:
        data[local + 8 : local + 10] = method.to_bytes(2, "little")
        data[central + 10 : central + 12] = method.to_bytes(2, "little")
    return bytes(data)


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (_patched_zip(flag_bits=0x1), "is encrypted"),
        (_patched_zip(method=93), "compressed with zstd"),
        (_patched_zip(method=98), "compressed with PPMd"),
    ],
    ids=["encrypted", "zstd", "ppmd"],
)
def test_archives_zipfile_cannot_unpack_are_a_400_that_leaves_nothing_behind(
    api_client, import_root, archive, reason
):
    tc, _ = api_client("admin")
    response = tc.post("/api/imports/upload", {"file": SimpleUploadedFile("pairs.zip", archive)})
    assert response.status_code == 400 and reason in response.json()["detail"]
    assert not any((import_root / "uploads").iterdir())
    assert not ImportRun.objects.exists()


def test_damaged_compressed_data_is_a_400_that_leaves_nothing_behind(api_client, import_root):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("pairs.jsonl", b"x" * 5000)
    data = bytearray(buffer.getvalue())
    start = data.find(b"pairs.jsonl") + len("pairs.jsonl")
    data[start + 2 : start + 12] = b"\xff" * 10  # garbage inside the deflate stream
    tc, _ = api_client("admin")
    response = tc.post("/api/imports/upload", {"file": SimpleUploadedFile("pairs.zip", bytes(data))})
    assert response.status_code == 400 and "pairs.zip" in response.json()["detail"]
    assert not any((import_root / "uploads").iterdir())

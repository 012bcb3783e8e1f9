from __future__ import annotations

import pytest

from pool.images import ImageRejected, image_inspect, image_store
from tests.conftest import image_bytes
from tests.pool.conftest import png_bomb, truncated_jpeg


def test_inspect_describes_a_real_image():
    info = image_inspect(image_bytes(120, 90, seed=1))
    assert (info.width, info.height, info.format) == (120, 90, "JPEG")
    assert len(info.sha256) == 64
    assert len(info.phash) == 16
    int(info.phash, 16)


def test_perceptual_hash_differs_between_different_pictures():
    assert image_inspect(image_bytes(seed=1)).phash != image_inspect(image_bytes(seed=2)).phash


def test_perceptual_hash_survives_resizing():
    small, large = image_inspect(image_bytes(96, 80, seed=4)), image_inspect(image_bytes(384, 320, seed=4))
    distance = bin(int(small.phash, 16) ^ int(large.phash, 16)).count("1")
    assert distance <= 6


def test_truncated_image_is_rejected():
    with pytest.raises(ImageRejected) as exc:
        image_inspect(truncated_jpeg())
    assert exc.value.code == "corrupt_image"
    assert "truncated" in exc.value.message


def test_decompression_bomb_is_rejected_before_decoding():
    with pytest.raises(ImageRejected) as exc:
        image_inspect(png_bomb(30_000, 30_000))
    assert exc.value.code == "too_many_pixels"
    assert "decompression bomb" in exc.value.message


def test_image_just_over_a_lower_limit_is_rejected_not_warned(settings):
    settings.LOUPE_MAX_IMAGE_PIXELS = 10_000_000
    with pytest.raises(ImageRejected) as exc:
        image_inspect(png_bomb(4_000, 3_000))
    assert exc.value.code == "too_many_pixels"
    assert "12,000,000" in exc.value.message


def test_pixel_limit_comes_from_settings(settings):
    settings.LOUPE_MAX_IMAGE_PIXELS = 50 * 50
    with pytest.raises(ImageRejected) as exc:
        image_inspect(image_bytes(60, 60))
    assert exc.value.code == "too_many_pixels"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "SVG"),
        (b"<?xml version='1.0'?><svg></svg>", "SVG"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "HTML"),
        (b"just some text, not a picture", "not an image"),
        (b"", "empty"),
    ],
)
def test_non_images_are_rejected_with_a_reason(data, words):
    with pytest.raises(ImageRejected) as exc:
        image_inspect(data)
    assert exc.value.code == "not_an_image"
    assert words in exc.value.message


def test_store_writes_one_content_addressed_copy(tmp_path):
    data = image_bytes(seed=3, fmt="PNG")
    info = image_inspect(data)
    relative = image_store(data=data, info=info, media_root=tmp_path)
    assert relative == f"images/{info.sha256[:2]}/{info.sha256}.png"
    assert (tmp_path / relative).read_bytes() == data
    assert image_store(data=data, info=info, media_root=tmp_path) == relative
    assert [p.name for p in (tmp_path / "images" / info.sha256[:2]).iterdir()] == [f"{info.sha256}.png"]


def test_store_leaves_no_temporary_file_when_writing_fails(tmp_path, monkeypatch):
    data = image_bytes(seed=5)
    info = image_inspect(data)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("pool.images.os.replace", broken_replace)
    with pytest.raises(OSError):
        image_store(data=data, info=info, media_root=tmp_path)
    folder = tmp_path / "images" / info.sha256[:2]
    assert list(folder.iterdir()) == []


def test_png_with_a_damaged_chunk_is_rejected():
    data = bytearray(image_bytes(64, 64, seed=6, fmt="PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # inside the compressed data: the chunk's CRC no longer matches
    with pytest.raises(ImageRejected) as exc:
        image_inspect(bytes(data))
    assert exc.value.code == "corrupt_image"

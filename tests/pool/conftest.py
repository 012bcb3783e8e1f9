"""Small generated sources for pool tests: a folder with sidecars, tables and WebDataset shards."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from tests.conftest import image_bytes


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header claims a huge picture: a decompression bomb's shape, cheap to make."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def truncated_jpeg(seed: int = 50) -> bytes:
    data = image_bytes(200, 160, seed=seed)
    return data[: len(data) // 2]


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def shard(tmp_path) -> Path:
    """An img2dataset-style shard: 3 good samples, one sample missing its caption, one corrupt image."""
    members = []
    for i in range(3):
        key = f"00000{i:04d}"
        members += [
            (f"{key}.jpg", image_bytes(96, 80, seed=i)),
            (f"{key}.txt", f"a photo number {i}".encode()),
            (
                f"{key}.json",
                json.dumps({"key": key, "caption": f"a photo number {i}", "status": "success"}).encode(),
            ),
        ]
    members += [("000000003.jpg", image_bytes(96, 80, seed=3))]
    members += [("000000004.jpg", truncated_jpeg()), ("000000004.txt", b"broken picture")]
    return write_tar(tmp_path / "shard-00000.tar", members)


def write_images(folder: Path, count: int, *, start_seed: int = 0) -> list[str]:
    names = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"img{i}.jpg"
        (folder / name).write_bytes(image_bytes(96, 80, seed=start_seed + i))
        names.append(name)
    return names


@pytest.fixture
def table_dir(tmp_path) -> Path:
    folder = tmp_path / "table"
    write_images(folder / "images", 3)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path

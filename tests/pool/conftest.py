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


# --- img2dataset-shaped output, written by hand (fast); tests/pool/test_img2dataset.py runs the real tool


def i2d_row(key: str, uid: str | None, caption: str | None, *, status: str = "success", **extra) -> dict:
    """A row of img2dataset's per-shard Parquet (the columns it writes, save_additional_columns first)."""
    failed = status != "success"
    row = {"uid": uid} if uid is not None else {}
    row.update(extra)
    row.update(
        {
            "caption": caption,
            "url": f"http://example.test/{key}.jpg",
            "key": key,
            "status": status,
            "error_message": "HTTP Error 404: Not Found" if failed else None,
            "width": None if failed else 96,
            "height": None if failed else 80,
            "original_width": None if failed else 192,
            "original_height": None if failed else 160,
            "exif": None if failed else "{}",
            "sha256": None if failed else "0" * 64,
        }
    )
    return row


def write_i2d_webdataset(folder: Path, shard: str, rows: list[dict], images: dict[str, bytes]) -> Path:
    """``shard``.tar with ``key.jpg``/``key.txt``/``key.json`` for each success row that has an image in
    ``images``, ``shard``.parquet with every row, as img2dataset writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    members = []
    for row in rows:
        key = row["key"]
        if row["status"] != "success" or key not in images:
            continue
        members += [
            (f"{key}.jpg", images[key]),
            (f"{key}.txt", (row["caption"] or "").encode()),
            (f"{key}.json", json.dumps(row).encode()),
        ]
    write_tar(folder / f"{shard}.tar", members)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard}.parquet")
    return folder / f"{shard}.tar"


@pytest.fixture
def s3_server(monkeypatch):
    """A real S3 endpoint (moto's server mode) on 127.0.0.1, with fsspec pointed at it; yields a boto3
    client to put objects with."""
    import socket
    import urllib.request

    import boto3
    import fsspec.config
    from moto.server import ThreadedMotoServer

    from pool import storage

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # moto keeps its buckets in process-wide state, whichever server serves them: start empty.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).read()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": endpoint}})
    storage.filesystems_forget()
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="pools")
    yield client
    storage.filesystems_forget()
    server.stop()


# --- the real img2dataset, fetching from a local HTTP server --------------------------------------

I2D_SCRIPT = """
import sys
from img2dataset import download
url_list, out, formats = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
for fmt in formats:
    download(
        url_list=url_list, input_format="parquet", url_col="url", caption_col="caption",
        save_additional_columns=["uid", "license"], output_format=fmt, output_folder=f"{out}/{fmt}",
        processes_count=1, thread_count=4, resize_mode="no", number_sample_per_shard=5,
        distributor="multiprocessing", timeout=5, retries=0, enable_wandb=False, disable_all_reencoding=True,
    )
"""


def img2dataset_pool(folder: Path, *, count: int, formats: tuple[str, ...]) -> dict:
    """Serve ``count`` distinct images over HTTP on 127.0.0.1 and run the real img2dataset on a URL list
    Parquet holding uid and caption (one caption spans two lines; one URL is missing, so img2dataset
    records a failed download). Returns {"out": folder of the outputs, "rows": the URL list's rows}."""
    import functools
    import os
    import subprocess
    import sys
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import pyarrow as pa
    import pyarrow.parquet as pq

    images = folder / "www"
    images.mkdir(parents=True)
    for i in range(count):
        (images / f"{i}.jpg").write_bytes(image_bytes(64 + i, 48, seed=1000 + i))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(images)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        rows = [
            {
                "url": f"{base}/{i}.jpg",
                "caption": f"picture {i}\nsecond line" if i == 1 else f"picture {i}",
                "uid": f"{(i * 7919 + 13):032x}",
                "license": "cc-by" if i % 2 else "cc0",
            }
            for i in range(count)
        ]
        rows.append({"url": f"{base}/missing.jpg", "caption": "gone", "uid": "f" * 32, "license": "cc0"})
        pq.write_table(pa.Table.from_pylist(rows), folder / "urls.parquet")
        env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                I2D_SCRIPT,
                str(folder / "urls.parquet"),
                str(folder / "out"),
                ",".join(formats),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        server.shutdown()
    return {"out": folder / "out", "rows": rows}

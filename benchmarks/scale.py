#!/usr/bin/env python
"""The scale benchmark: a pool of millions of pairs on PostgreSQL, and each stage timed at that size.

Subcommands share one results file (``benchmarks/out/scale/results.json``, one entry per stage and
pool size), so stages added later (filter, preview, export, pages, select) sit beside these:

``build``
    Creates a pool of ``--pairs`` pairs in a realistic shape directly with ``COPY`` (the schema comes
    from ``manage.py migrate`` on that database; no ORM call per row), generated shard by shard so
    memory stays flat with the pool's size:

    - ``Shard`` rows of 10,000 pairs, with img2dataset-like tar URIs (the tars themselves are NOT
      written: the rows locate bytes that do not exist, so stages that decode images cannot run here);
    - ``Image`` rows: distinct sha256, random 64-bit phash with about 1% exact and 2% near (1-3 bits)
      duplicates, width/height, about 1% rejected and 0.5% unreadable, tar offsets/lengths;
    - ``Caption`` rows: one alt text per image (32-hex uid, key, url, text from a vocabulary,
      ``text_sha256``, small meta JSON), plus 3 synthetic captions on each annotated image;
    - an annotation campaign with a 4-caption task on 2% of the images;
    - a finished ``ScoringRun`` at reward model version 0 (cosine, CLIPScore) and one at version 1, a
      registered, active reward model (a real ``RewardEnsemble`` checkpoint of the features' width,
      random weights), each with a ``Score`` row per usable pair; cosine is the synthetic features'
      true cosine, reward/criteria/uncertainty are synthetic (``rescore`` computes the real ones);
    - open flags (low reward, disagreement) on about 0.5% of the pairs;
    - synthetic features in ``scoring.shard_features``'s by-shard layout (``--dim``, float16, image
      and text) for the encoder identity of the runs: ``open_clip:ViT-B-32:<random weights file>``.

``rescore``
    Rescores the pool with the reward model from the cached shard features
    (``scoring.bulk_rescore``), and, in the same run, today's per-chunk path
    (``scoring.inference.scoring_chunk_score`` over the content-keyed cache) on a subset.

    python benchmarks/scale.py build --pairs 1000000 --database-url postgres://loupe@127.0.0.1:54350/scale_1m \\
        --cache-dir /work/scale-run/cache-1m
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

OUT = REPO / "benchmarks" / "out" / "scale"
SHARD_PAIRS = 10_000
TASK_SHARE = 0.02  # images with a 4-caption annotation task
EXTRA_CAPTIONS = 3  # synthetic captions added to an annotated image (the task ranks 4)
ENCODER_ARCH = "ViT-B-32"
TABLES = [
    "pool_shard",
    "pool_image",
    "pool_caption",
    "scoring_score",
    "scoring_scoringchunk",
    "annotate_task",
    "annotate_taskcaption",
    "annotate_flag",
]

WORDS = [
    "a",
    "the",
    "an",
    "of",
    "in",
    "on",
    "with",
    "and",
    "at",
    "by",
    "near",
    "over",
    "under",
    "beside",
    "behind",
    "two",
    "three",
    "several",
    "many",
    "small",
    "large",
    "old",
    "new",
    "red",
    "blue",
    "green",
    "yellow",
    "black",
    "white",
    "brown",
    "grey",
    "orange",
    "pink",
    "purple",
    "wooden",
    "metal",
    "glass",
    "stone",
    "dog",
    "cat",
    "bird",
    "horse",
    "cow",
    "sheep",
    "car",
    "bus",
    "bicycle",
    "train",
    "boat",
    "plane",
    "house",
    "building",
    "tree",
    "flower",
    "grass",
    "mountain",
    "river",
    "lake",
    "beach",
    "sea",
    "sky",
    "cloud",
    "sunset",
    "street",
    "road",
    "bridge",
    "city",
    "village",
    "park",
    "garden",
    "field",
    "forest",
    "table",
    "chair",
    "sofa",
    "bed",
    "kitchen",
    "room",
    "window",
    "door",
    "wall",
    "floor",
    "man",
    "woman",
    "child",
    "boy",
    "girl",
    "people",
    "person",
    "group",
    "family",
    "friends",
    "player",
    "team",
    "crowd",
    "food",
    "pizza",
    "cake",
    "bread",
    "fruit",
    "apple",
    "banana",
    "coffee",
    "cup",
    "plate",
    "bowl",
    "bottle",
    "book",
    "phone",
    "computer",
    "laptop",
    "screen",
    "camera",
    "picture",
    "photo",
    "image",
    "painting",
    "drawing",
    "illustration",
    "logo",
    "icon",
    "vector",
    "background",
    "pattern",
    "texture",
    "design",
    "sign",
    "poster",
    "card",
    "shirt",
    "dress",
    "shoes",
    "hat",
    "bag",
    "standing",
    "sitting",
    "walking",
    "running",
    "playing",
    "eating",
    "holding",
    "looking",
    "smiling",
    "riding",
    "flying",
    "swimming",
    "parked",
    "covered",
    "filled",
    "made",
    "colorful",
    "bright",
    "dark",
    "beautiful",
    "vintage",
    "modern",
    "close",
    "up",
    "view",
    "front",
    "top",
    "side",
    "aerial",
    "night",
    "day",
    "winter",
    "summer",
    "snow",
    "rain",
    "sunny",
    "stock",
    "free",
    "download",
    "hd",
    "high",
    "quality",
    "wallpaper",
    "white-background",
    "isolated",
    "closeup",
    "portrait",
    "landscape",
    "detail",
    "set",
    "collection",
]


# --- shared ------------------------------------------------------------------------------------------


def django_setup(*, database_url: str, cache_dir: str | None = None, model_dir: str | None = None) -> None:
    os.environ["DATABASE_URL"] = database_url
    if cache_dir:
        os.environ["LOUPE_EMBEDDING_CACHE_DIR"] = str(cache_dir)
    if model_dir:
        os.environ["LOUPE_MODEL_DIR"] = str(model_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def results_record(stage: str, pairs: int, record: dict) -> Path:
    """Merge ``record`` into the shared results file under ``<stage>/<pairs>``."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(stage, {})[str(pairs)] = record
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    return path


class CpuClock:
    """CPU seconds of this process and of its PostgreSQL backend (same machine: /proc), so throughput
    can be stated per CPU-second as well as per wall second on a shared, overloaded machine."""

    def __init__(self):
        from django.db import connection

        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.backend = cursor.fetchone()[0]
        self.start = self.read()

    def read(self) -> tuple[float, float]:
        t = os.times()
        try:
            fields = Path(f"/proc/{self.backend}/stat").read_text().rsplit(")", 1)[1].split()
            server = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            server = float("nan")
        return t.user + t.system, server

    def elapsed(self) -> dict:
        now = self.read()
        return {"client_cpu_s": now[0] - self.start[0], "server_cpu_s": now[1] - self.start[1]}


def load_conditions() -> dict:
    return {"loadavg": os.getloadavg(), "cpus": os.cpu_count(), "at": time.strftime("%Y-%m-%d %H:%M:%S")}


def database_sizes() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        total = cursor.fetchone()[0]
        cursor.execute(
            "SELECT relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r' "
            "ORDER BY 2 DESC LIMIT 15"
        )
        tables = {name: {"total": t, "heap": h} for name, t, h in cursor.fetchall()}
    return {"database_bytes": total, "tables": tables}


def folder_bytes(path: Path, *, physical: bool = False) -> int:
    """Bytes of the files under ``path``; ``physical``: each hard-linked file once."""
    sizes = {}
    for f in Path(path).rglob("*"):
        if f.is_file():
            st = f.stat()
            sizes[(st.st_dev, st.st_ino) if physical else f] = st.st_size
    return sum(sizes.values())


# --- build ---------------------------------------------------------------------------------------------


def encoder_weights(path: Path) -> str:
    """A ViT-B-32 with random weights saved as a local file (no download): the features' identity."""
    if not path.is_file():
        import open_clip
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        model = open_clip.create_model(ENCODER_ARCH, pretrained=None)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return f"open_clip:{ENCODER_ARCH}:{path}"


def _constraints_drop(cursor) -> list[str]:
    """Drop the secondary indexes, unique and foreign-key constraints of the bulk tables and return
    the statements that recreate them: building an index once after the load is several times faster
    than maintaining it row by row with random keys (sha256, uid)."""
    recreate: list[str] = []
    cursor.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid::regclass::text = ANY(%s) AND contype IN ('u', 'f') ORDER BY contype DESC",
        [TABLES],
    )
    for table, name, definition in cursor.fetchall():
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        recreate.append(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    cursor.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid::regclass::text = ANY(%s) AND NOT i.indisprimary "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        [TABLES],
    )
    for name, definition in cursor.fetchall():
        cursor.execute(f"DROP INDEX {name}")
        recreate.insert(0, definition)  # indexes before foreign keys (which validate with a join)
    return recreate


def _features_link(root, encoder, fingerprint, source, shard_id, image_ids, caption_ids, image_row) -> bool:
    """Shard ``shard_id``'s features as hard links to shard ``source``'s float16 arrays (its own id
    arrays): the layout, sizes and reads of a real shard at a fraction of the disk. False when the
    source's shape differs (then the caller writes real arrays)."""
    import json
    import tempfile

    import numpy as np

    from scoring.shard_features import DONE, shard_features_root

    base = shard_features_root(root, encoder, fingerprint)
    src = base / str(source)
    meta = json.loads((src / DONE).read_text())
    if meta["images"] != len(image_ids) or meta["captions"] != len(caption_ids):
        return False
    if not np.array_equal(np.load(src / "caption_image_row.i4.npy"), image_row):
        return False
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".tmp-{shard_id}-"))
    for name in ("images.f16.npy", "texts.f16.npy"):
        os.link(src / name, tmp / name)
    np.save(tmp / "image_ids.i8.npy", np.asarray(image_ids, dtype=np.int64))
    np.save(tmp / "caption_ids.i8.npy", np.asarray(caption_ids, dtype=np.int64))
    np.save(tmp / "caption_image_row.i4.npy", np.asarray(image_row, dtype=np.int32))
    (tmp / DONE).write_text(json.dumps({**meta, "shard_id": int(shard_id), "linked_from": int(source)}))
    os.replace(tmp, base / str(shard_id))
    return True


def _tsv(rows) -> bytes:
    return ("".join("\t".join(row) + "\n" for row in rows)).encode()


def _copy(cursor, table: str, columns: list[str], payload: bytes) -> None:
    quoted = ", ".join(f'"{c}"' for c in columns)
    with cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
        for start in range(0, len(payload), 1 << 22):
            copy.write(payload[start : start + (1 << 22)])


def pool_build(args) -> dict:
    import hashlib

    import numpy as np

    model_dir = Path(args.model_dir or f"{args.cache_dir.rstrip('/')}-models")
    django_setup(database_url=args.database_url, cache_dir=args.cache_dir, model_dir=str(model_dir))
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from annotate.models import Campaign
    from pool.models import RunStatus
    from scoring.active_model import ActiveModel, active_model_set
    from scoring.encoder_names import encoder_fingerprint
    from scoring.models import ScoringRun
    from scoring.reward_model import RewardEnsemble, RewardHeadConfig, save_checkpoint
    from scoring.shard_features import shard_features_read, shard_features_root, shard_features_write
    from training.models import ModelStatus, RewardModel

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pool_caption")
        if cursor.fetchone()[0]:
            raise SystemExit(f"{args.database_url} already holds captions: build into an empty database.")

    encoder = encoder_weights(Path(args.weights))
    fingerprint = encoder_fingerprint(encoder)
    campaign = Campaign.objects.create(name="scale", captions_per_task=4, overlap=3, gold_rate=0.0)
    criteria = campaign.criterion_keys

    # The reward model: a real checkpoint of the features' width, registered and active as training does.
    import torch

    torch.manual_seed(args.seed)
    net = RewardEnsemble(RewardHeadConfig(image_dim=args.dim, text_dim=args.dim, criteria=criteria))
    version = 1
    ckpt = model_dir / f"reward-v{version}.pt"
    sha = save_checkpoint(
        ckpt,
        net,
        {
            "encoder": encoder,
            "criteria": criteria,
            "version": version,
            "campaign": campaign.name,
            "encoder_fingerprint": fingerprint,
            "note": "random weights: benchmarks/scale.py",
        },
    )
    RewardModel.objects.create(
        version=version,
        encoder=encoder,
        encoder_fingerprint=fingerprint,
        campaign=campaign,
        checkpoint=str(ckpt),
        checkpoint_sha256=sha,
        config={"note": "random weights (benchmarks/scale.py)"},
        status=ModelStatus.ACTIVE,
        promoted_at=timezone.now(),
    )
    active_model_set(
        model=ActiveModel(encoder=encoder, version=version, checkpoint=str(ckpt), checkpoint_sha256=sha),
        encoder=encoder,
    )
    now = timezone.now()
    runs = {
        v: ScoringRun.objects.create(
            encoder=encoder,
            encoder_fingerprint=fingerprint,
            reward_model_version=v,
            reward_checkpoint_sha256=sha if v else "",
            chunk_size=SHARD_PAIRS,
            params={"checkpoint": str(ckpt), "checkpoint_sha256": sha} if v else {},
            status=RunStatus.SUCCEEDED,
            started_at=now,
            finished_at=now,
            summary={"note": "synthetic scores written by benchmarks/scale.py build"},
        )
        for v in (0, version)
    }

    rng = np.random.default_rng(args.seed)
    words = np.array(WORDS, dtype=object)
    n_shards = -(-args.pairs // SHARD_PAIRS)
    ts = now.isoformat()
    with connection.cursor() as cursor:
        recreate = _constraints_drop(cursor)
    totals = dict(images=0, captions=0, scores=0, tasks=0, flags=0, feature_seconds=0.0, copy_seconds=0.0)
    image_id = caption_id = task_id = taskcaption_id = flag_id = score_id = 0
    phash_pool = rng.integers(0, 2**63, size=64, dtype=np.int64)
    for s in range(n_shards):
        shard_id = s + 1
        pairs = min(SHARD_PAIRS, args.pairs - s * SHARD_PAIRS)
        n_tasks = int(pairs * TASK_SHARE / (1 + EXTRA_CAPTIONS * TASK_SHARE))
        n_images = pairs - EXTRA_CAPTIONS * n_tasks
        uri = f"s3://scale-pool/laion-like/{s:05d}.tar"
        # Image rows ------------------------------------------------------------------------------
        img_ids = np.arange(image_id + 1, image_id + n_images + 1)
        sha = rng.bytes(32 * n_images)
        shas = [sha[i * 32 : (i + 1) * 32].hex() for i in range(n_images)]
        ph = rng.integers(0, 2**63, size=n_images, dtype=np.int64)
        kind = rng.random(n_images)
        exact = kind < 0.01
        near = (kind >= 0.01) & (kind < 0.03)
        ph[exact] = phash_pool[rng.integers(0, len(phash_pool), exact.sum())]
        flips = np.zeros(near.sum(), dtype=np.int64)
        for _ in range(3):
            flips |= np.int64(1) << rng.integers(0, 63, near.sum()).astype(np.int64)
        ph[near] = phash_pool[rng.integers(0, len(phash_pool), near.sum())] ^ flips
        phash_pool[rng.integers(0, len(phash_pool), 8)] = ph[rng.integers(0, n_images, 8)]
        sizes = np.array([[640, 480], [512, 512], [800, 600], [1024, 768], [300, 225], [1280, 720]])
        wh = sizes[rng.integers(0, len(sizes), n_images)]
        nbytes = rng.integers(4_000, 120_000, n_images)
        status_roll = rng.random(n_images)
        # img2dataset's tar: each sample is .jpg, .txt, .json members (512-byte header + padded data)
        member = 512 + (nbytes + 511) // 512 * 512 + 2 * 1024
        offsets = np.concatenate([[0], np.cumsum(member)[:-1]]) + 512
        keys = [f"{s:05d}{i:04d}" for i in range(n_images)]
        image_rows = []
        for i in range(n_images):
            st = "rejected" if status_roll[i] < 0.01 else "unreadable" if status_roll[i] < 0.015 else "ok"
            reason = {"ok": "", "rejected": "curator rejected", "unreadable": "truncated JPEG"}[st]
            image_rows.append(
                (
                    str(img_ids[i]),
                    shas[i],
                    f"{int(ph[i]) & 0xFFFFFFFFFFFFFFFF:016x}",
                    str(wh[i, 0]),
                    str(wh[i, 1]),
                    "JPEG",
                    str(nbytes[i]),
                    ts,
                    str(shard_id),
                    "",
                    str(offsets[i]),
                    str(nbytes[i]),
                    "\\N",
                    "\\N",
                    "",
                    uri,
                    f"{keys[i]}.jpg",
                    st,
                    reason,
                    "\\N",
                    ts,
                )
            )
        image_cols = [
            "id",
            "sha256",
            "phash",
            "width",
            "height",
            "format",
            "bytes",
            "inspected_at",
            "shard_id",
            "uri",
            "offset",
            "length",
            "row_group",
            "row",
            "file",
            "source",
            "source_key",
            "status",
            "status_reason",
            "duplicate_of_id",
            "created_at",
        ]
        # Caption rows: one alt text per image, 3 synthetic more on the first n_tasks images ----------
        per_image = np.ones(n_images, dtype=np.int64)
        per_image[:n_tasks] += EXTRA_CAPTIONS
        cap_image_row = np.repeat(np.arange(n_images, dtype=np.int32), per_image)
        n_caps = len(cap_image_row)
        cap_ids = np.arange(caption_id + 1, caption_id + n_caps + 1)
        lengths = rng.integers(4, 22, n_caps)
        word_idx = rng.integers(0, len(words), (n_caps, 22))
        uid_bytes = rng.bytes(16 * n_caps)
        first_of_image = np.concatenate([[True], cap_image_row[1:] != cap_image_row[:-1]])
        caption_rows, text_shas = [], []
        for j in range(n_caps):
            text = " ".join(words[word_idx[j, : lengths[j]]])
            tsha = hashlib.sha256(text.encode()).hexdigest()
            text_shas.append(tsha)
            r = cap_image_row[j]
            alt = bool(first_of_image[j])
            uid = uid_bytes[j * 16 : (j + 1) * 16].hex()
            caption_rows.append(
                (
                    str(cap_ids[j]),
                    str(img_ids[r]),
                    text,
                    tsha,
                    "alt" if alt else "synthetic",
                    "\\N",
                    "ok",
                    "",
                    "",
                    "0",
                    uid,
                    "f",
                    keys[r] if alt else f"{keys[r]}-s{j}",
                    f"https://img{r % 97}.example.com/photos/{uid[:12]}.jpg" if alt else "",
                    f'{{"original_width": {wh[r, 0]}, "original_height": {wh[r, 1]}, "status": "success"}}'
                    if alt
                    else "{}",
                    ts,
                )
            )
        caption_cols = [
            "id",
            "image_id",
            "text",
            "text_sha256",
            "source",
            "parent_id",
            "status",
            "status_reason",
            "decision",
            "decision_version",
            "uid",
            "uid_derived",
            "key",
            "url",
            "meta",
            "created_at",
        ]
        # Features: unit image vectors, text = image + noise (so cosines spread like a real pool's) ------
        t0 = time.perf_counter()
        source = (
            (shard_id - 1) % args.distinct_feature_shards + 1 if args.distinct_feature_shards else shard_id
        )
        if source != shard_id and _features_link(
            args.cache_dir, encoder, fingerprint, source, shard_id, img_ids, cap_ids, cap_image_row
        ):
            feats = shard_features_read(
                shard_features_root(args.cache_dir, encoder, fingerprint) / str(shard_id)
            )
            img16, txt16 = feats.images, feats.texts
        else:
            img_f = rng.standard_normal((n_images, args.dim), dtype=np.float32)
            img_f /= np.linalg.norm(img_f, axis=1, keepdims=True)
            mix = rng.uniform(0.0, 0.6, (n_caps, 1)).astype(np.float32)
            txt_f = mix * img_f[cap_image_row] + rng.standard_normal(
                (n_caps, args.dim), dtype=np.float32
            ) / np.sqrt(args.dim)
            txt_f /= np.linalg.norm(txt_f, axis=1, keepdims=True)
            img16, txt16 = img_f.astype(np.float16), txt_f.astype(np.float16)
            del img_f, txt_f
            shard_features_write(
                args.cache_dir,
                encoder,
                fingerprint,
                shard_id,
                image_ids=img_ids,
                images=img16,
                caption_ids=cap_ids,
                texts=txt16,
                caption_image_row=cap_image_row,
                meta={"synthetic": True},
            )
        cosine = np.einsum(
            "nd,nd->n",
            np.asarray(img16)[cap_image_row].astype(np.float32),
            np.asarray(txt16, dtype=np.float32),
        )
        del img16, txt16
        totals["feature_seconds"] += time.perf_counter() - t0
        # Scores (usable pairs only, like a scoring run): v0 cosine/CLIPScore, v1 + synthetic reward ----
        usable = np.array([image_rows[r][17] == "ok" for r in cap_image_row])
        reward = (cosine * 4 + rng.normal(0, 0.5, n_caps)).astype(np.float64)
        unc = rng.uniform(0.01, 0.4, n_caps)
        crit = np.clip(1 + 4 * rng.random((n_caps, len(criteria))), 1, 5)
        score_rows = []
        for j in np.flatnonzero(usable):
            c = float(cosine[j])
            clip = 2.5 * max(c, 0.0)
            for v in (0, version):
                score_id += 1
                if v:
                    crit_json = (
                        "{" + ", ".join(f'"{k}": {crit[j, q]:.4f}' for q, k in enumerate(criteria)) + "}"
                    )
                    rw, cr, un = f"{reward[j]:.6f}", crit_json, f"{unc[j]:.6f}"
                else:
                    rw = cr = un = "\\N"
                score_rows.append(
                    (
                        str(score_id),
                        str(cap_ids[j]),
                        encoder,
                        fingerprint,
                        str(v),
                        f"{c:.7f}",
                        f"{clip:.7f}",
                        rw,
                        cr,
                        un,
                        "f",
                        "",
                        ts,
                    )
                )
        score_cols = [
            "id",
            "caption_id",
            "encoder",
            "encoder_fingerprint",
            "reward_model_version",
            "cosine",
            "clipscore",
            "reward",
            "criteria",
            "uncertainty",
            "truncated",
            "error",
            "updated_at",
        ]
        # Tasks on the first n_tasks images (their 4 captions), flags on ~0.5% of the pairs -------------
        task_rows, tc_rows = [], []
        for t in range(n_tasks):
            task_id += 1
            task_rows.append(
                (
                    str(task_id),
                    str(campaign.pk),
                    str(img_ids[t]),
                    f"{rng.random():.6f}",
                    "f",
                    "\\N",
                    "open",
                    "0",
                    "0",
                    ts,
                )
            )
            for p, j in enumerate(np.flatnonzero(cap_image_row == t)):
                taskcaption_id += 1
                tc_rows.append((str(taskcaption_id), str(task_id), str(cap_ids[j]), str(p)))
        flag_rows = []
        for j in np.flatnonzero(usable & (rng.random(n_caps) < 0.005)):
            flag_id += 1
            reason = "low_reward" if flag_id % 3 else "disagreement"
            details = f'{{"reward": {reward[j]:.4f}, "clipscore": {2.5 * max(float(cosine[j]), 0.0):.4f}}}'
            flag_rows.append((str(flag_id), str(cap_ids[j]), reason, details, "t", ts, ts))
        t0 = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cursor:
            raw = cursor.cursor
            _copy(
                raw,
                "pool_shard",
                [
                    "id",
                    "uri",
                    "format",
                    "metadata_uri",
                    "image_column",
                    "fingerprint",
                    "status",
                    "status_reason",
                    "samples",
                    "indexed_at",
                    "checked_at",
                    "created_at",
                ],
                _tsv(
                    [
                        (
                            str(shard_id),
                            uri,
                            "webdataset",
                            uri[:-4] + ".parquet",
                            "",
                            f'{{"size": {int(offsets[-1] + member[-1] + 1024)}, "mtime": 1764547200}}',
                            "indexed",
                            "",
                            str(pairs),
                            ts,
                            ts,
                            ts,
                        )
                    ]
                ),
            )
            _copy(raw, "pool_image", image_cols, _tsv(image_rows))
            _copy(raw, "pool_caption", caption_cols, _tsv(caption_rows))
            _copy(raw, "scoring_score", score_cols, _tsv(score_rows))
            _copy(
                raw,
                "annotate_task",
                [
                    "id",
                    "campaign_id",
                    "image_id",
                    "priority",
                    "is_gold",
                    "gold_ranking",
                    "status",
                    "judgment_count",
                    "claim_count",
                    "created_at",
                ],
                _tsv(task_rows),
            )
            _copy(raw, "annotate_taskcaption", ["id", "task_id", "caption_id", "position"], _tsv(tc_rows))
            _copy(
                raw,
                "annotate_flag",
                ["id", "caption_id", "reason", "details", "is_open", "created_at", "updated_at"],
                _tsv(flag_rows),
            )
            n_usable = int(usable.sum())
            _copy(
                raw,
                "scoring_scoringchunk",
                ["run_id", "index", "first_id", "last_id", "pairs", "failed", "done", "finished_at"],
                _tsv(
                    [
                        (
                            str(runs[v].pk),
                            str(s),
                            str(cap_ids[0]),
                            str(cap_ids[-1]),
                            str(n_usable),
                            "0",
                            "t",
                            ts,
                        )
                        for v in runs
                    ]
                ),
            )
        totals["copy_seconds"] += time.perf_counter() - t0
        image_id += n_images
        caption_id += n_caps
        totals["images"] += n_images
        totals["captions"] += n_caps
        totals["scores"] += len(score_rows)
        totals["tasks"] += n_tasks
        totals["flags"] += len(flag_rows)
        if (s + 1) % 10 == 0 or s + 1 == n_shards:
            print(
                f"shard {s + 1}/{n_shards}: {caption_id:,} pairs, {time.perf_counter() - started:.0f} s, "
                f"peak RSS {peak_rss_mb():.0f} MB",
                flush=True,
            )
    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        for table in TABLES:
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
        for statement in recreate:
            cursor.execute(statement)
        for run in runs.values():
            cursor.execute(
                "UPDATE scoring_scoringrun SET total = %s, done = %s, chunks_total = %s, chunks_done = %s "
                "WHERE id = %s",
                [totals["scores"] // 2, totals["scores"] // 2, n_shards, n_shards, run.pk],
            )
        cursor.execute("UPDATE pool_shard SET import_run_id = NULL")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    totals["index_seconds"] = time.perf_counter() - t0
    totals["build_seconds"] = time.perf_counter() - started
    record = {
        "pairs": caption_id,
        "shards": n_shards,
        "dim": args.dim,
        "encoder": encoder,
        "encoder_fingerprint": fingerprint,
        "reward_model_version": version,
        "reward_checkpoint": str(ckpt),
        "database_url": args.database_url,
        "cache_dir": args.cache_dir,
        "model_dir": str(model_dir),
        **totals,
        **database_sizes(),
        "cache_bytes": folder_bytes(Path(args.cache_dir)),
        "cache_bytes_physical": folder_bytes(Path(args.cache_dir), physical=True),
        "distinct_feature_shards": args.distinct_feature_shards or n_shards,
        "peak_rss_mb": peak_rss_mb(),
        "load": load_conditions(),
    }
    record["database_bytes_per_pair"] = record["database_bytes"] / max(caption_id, 1)
    record["cache_bytes_per_pair"] = record["cache_bytes"] / max(caption_id, 1)
    results_record("build", caption_id, record)
    print(json.dumps({k: v for k, v in record.items() if k != "tables"}, indent=2))
    return record


# --- rescore --------------------------------------------------------------------------------------------


def _register_version(encoder: str, fingerprint: str, *, like: int, note: str) -> int:
    """A new registry version (candidate) whose checkpoint is a fresh random RewardEnsemble of the same
    shape as version ``like``: what a retrain hands to the rescore (new heads, same encoder)."""
    import torch
    from django.conf import settings
    from django.db.models import Max

    from scoring.reward_model import RewardEnsemble, load_checkpoint, save_checkpoint
    from training.models import RewardModel

    base = RewardModel.objects.get(version=like)
    old, meta = load_checkpoint(base.checkpoint)
    version = (RewardModel.objects.aggregate(v=Max("version"))["v"] or 0) + 1
    torch.manual_seed(version)
    net = RewardEnsemble(old.config)
    path = Path(settings.MODEL_DIR) / f"reward-v{version}.pt"
    sha = save_checkpoint(path, net, {**meta, "version": version, "note": note})
    RewardModel.objects.create(
        version=version,
        encoder=encoder,
        encoder_fingerprint=fingerprint,
        campaign=base.campaign,
        checkpoint=str(path),
        checkpoint_sha256=sha,
        config={"note": note},
    )
    return version


def _copy_version(encoder: str, fingerprint: str, version: int, note: str) -> int:
    """Another registry version with the same weights as ``version`` (for today's path, so its scores can
    be compared with the bulk path's pair by pair)."""
    import shutil

    from django.conf import settings
    from django.db.models import Max

    from pool.hashing import file_sha256
    from scoring.checkpoint_meta import checkpoint_meta_read, checkpoint_meta_write
    from training.models import RewardModel

    base = RewardModel.objects.get(version=version)
    new = (RewardModel.objects.aggregate(v=Max("version"))["v"] or 0) + 1
    path = Path(settings.MODEL_DIR) / f"reward-v{new}.pt"
    shutil.copyfile(base.checkpoint, path)
    meta = checkpoint_meta_read(base.checkpoint) or {}
    checkpoint_meta_write(path, {**meta, "meta": {**meta.get("meta", {}), "version": new}})
    RewardModel.objects.create(
        version=new,
        encoder=encoder,
        encoder_fingerprint=fingerprint,
        campaign=base.campaign,
        checkpoint=str(path),
        checkpoint_sha256=file_sha256(path),
        config={"note": note},
    )
    return new


def _content_cache_fill(run, shard_ids: list[int]) -> int:
    """Copy the subset's features into the content-keyed cache (what today's path reads)."""
    import numpy as np
    from django.conf import settings

    from pool.models import Caption, Image
    from scoring.cache import EmbeddingCache
    from scoring.shard_features import shard_features_read, shard_features_root

    cache = EmbeddingCache(
        run.encoder, fingerprint=run.encoder_fingerprint, root=settings.EMBEDDING_CACHE_DIR
    )
    n = 0
    for shard_id in shard_ids:
        feats = shard_features_read(
            shard_features_root(BULK_FEATURES_ROOT, run.encoder, run.encoder_fingerprint) / str(shard_id)
        )
        sha_of = dict(Image.objects.filter(id__in=feats.image_ids.tolist()).values_list("id", "sha256"))
        cache.put_images([sha_of[i] for i in feats.image_ids.tolist()], np.asarray(feats.images))
        tsha_of = dict(
            Caption.objects.filter(id__in=feats.caption_ids.tolist()).values_list("id", "text_sha256")
        )
        tshas = [tsha_of[c] for c in feats.caption_ids.tolist()]
        first = {}
        for row, t in enumerate(tshas):
            first.setdefault(t, row)
        cache.put_texts(list(first), np.asarray(feats.texts)[list(first.values())])
        n += len(tshas)
    return n


BULK_FEATURES_ROOT = ""


def _write_methods_measure(run, shard_ids: list[int]) -> dict:
    """Each write option on the same precomputed scores, inside a transaction rolled back afterwards
    (the rows never stay): rows/s of the write alone. ``fresh``: the version has no rows yet (a new
    model); ``existing``: ``run``'s version already has them (a rerun)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from django.db import transaction

    from scoring import bulk_rescore
    from scoring.models import ScoringRun

    model, keys = bulk_rescore._reward_model(run)
    parts = [bulk_rescore.shard_scores(run, s, model, keys) for s in shard_ids]
    n = sum(len(p) for p in parts)

    class Rollback(Exception):
        pass

    def parquet(scoring_run, scores, folder=OUT / "parquet-probe"):
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "caption_id": scores.caption_ids,
                "cosine": scores.cosine,
                "clipscore": scores.clipscore,
                "reward": scores.reward,
                "uncertainty": scores.uncertainty,
                **{f"criteria_{k}": scores.criteria[:, i] for i, k in enumerate(scores.criteria_keys)},
            }
        )
        pq.write_table(table, folder / f"{int(scores.caption_ids[0])}.parquet")

    methods = {
        name: (lambda m: lambda r, sc: bulk_rescore.scores_write(run=r, scores=sc, method=m))(name)
        for name in ("orm", "copy_text_upsert", "copy_upsert", "copy_replace")
    }
    methods["parquet_files"] = parquet
    parquet(run, parts[0])  # warm-up: pyarrow's lazy initialisation is not a write cost
    fresh_run = ScoringRun(
        encoder=run.encoder,
        encoder_fingerprint=run.encoder_fingerprint,
        reward_model_version=run.reward_model_version + 1000,  # no rows under it
    )
    out = {"pairs": n}
    for case, target in (("fresh", fresh_run), ("existing", run)):
        for name, write in methods.items():
            started = time.perf_counter()
            try:
                with transaction.atomic():
                    for part in parts:
                        write(target, part)
                    elapsed = time.perf_counter() - started
                    raise Rollback
            except Rollback:
                pass
            out[f"{case}/{name}"] = {"seconds": elapsed, "pairs_per_s": n / elapsed}
            print(f"  write {case:8s} {name:24s} {n / elapsed:10,.0f} pairs/s", flush=True)
    # bf16 vs float32 heads on one shard (the compute alone).
    import torch

    feats = bulk_rescore.shard_features_read(bulk_rescore._features_root(run) / str(shard_ids[0]))
    images, texts, rows = (
        np.asarray(feats.images),
        np.asarray(feats.texts),
        np.asarray(feats.caption_image_row),
    )
    # CPU time of this process (the heads are single-threaded here): wall time on a machine shared
    # with a dozen other jobs measures the neighbours more than the code.
    for label, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        started = time.process_time()
        reward = bulk_rescore.heads_predict(
            model, images, texts, rows, embed_dim=model.config.embed_dim, dtype=dtype
        )[1]
        elapsed = time.process_time() - started
        out[f"heads/{label}"] = {"pairs_per_cpu_s": len(texts) / elapsed}
        if label == "float32":
            reference = reward
        else:
            out[f"heads/{label}"]["max_abs_diff_vs_float32"] = float(np.abs(reward - reference).max())
        print(f"  heads {label:14s} {len(texts) / elapsed:10,.0f} pairs per CPU-second", flush=True)
    # The model's own forward (what today's path runs), same shard, for reference.
    with torch.inference_mode():
        started = time.process_time()
        model(torch.from_numpy(images[rows].astype(np.float32)), torch.from_numpy(texts.astype(np.float32)))
        out["heads/model_forward"] = {"pairs_per_cpu_s": len(texts) / (time.process_time() - started)}
    print(
        f"  heads model forward  {out['heads/model_forward']['pairs_per_cpu_s']:10,.0f} pairs per CPU-second"
    )
    return out


def _timed_stages(timing: dict):
    """Time ``scoring.bulk_rescore``'s three stages (heads, writes, the load table's index build and
    attach) into ``timing``; return the function that puts the real ones back."""
    from scoring import bulk_rescore

    names = {
        "shard_scores": "compute_seconds",
        "scores_write": "write_seconds",
        "bulk_rescore_finish": "finish_seconds",
    }
    real = {name: getattr(bulk_rescore, name) for name in names}

    def timed(name):
        def call(*a, **k):
            t0 = time.perf_counter()
            try:
                return real[name](*a, **k)
            finally:
                timing[names[name]] = timing.get(names[name], 0.0) + time.perf_counter() - t0

        return call

    for name in names:
        timing.setdefault(names[name], 0.0)
        setattr(bulk_rescore, name, timed(name))
    return lambda: [setattr(bulk_rescore, name, fn) for name, fn in real.items()]


def _rescore_worker(job) -> dict:
    """One spawned worker of ``rescore --workers N``: score the given chunks of the run."""
    database_url, cache_dir, model_dir, run_id, indexes, threads = job
    django_setup(database_url=database_url, cache_dir=cache_dir, model_dir=model_dir)
    import torch

    from scoring import bulk_rescore

    torch.set_num_threads(threads)
    timing: dict = {}
    _timed_stages(timing)
    clock = CpuClock()
    for index in indexes:
        bulk_rescore.bulk_rescore_chunk(run_id=run_id, chunk_index=index)
    return {**timing, **clock.elapsed(), "chunks": len(indexes), "peak_rss_mb": peak_rss_mb()}


def _cpu_sum(parent: dict, workers: list[dict]) -> dict:
    """CPU seconds of the parent and its backend plus every worker's and its backend's."""
    import math

    # With workers, the parent's connection was closed before they started (its backend's figure is
    # NaN) and the parent did no scoring: count the workers and their backends.
    def own(key: str) -> float:
        return 0.0 if workers and math.isnan(parent[key]) else parent[key]

    return {key: own(key) + sum(w[key] for w in workers) for key in ("client_cpu_s", "server_cpu_s")}


def rescore_bench(args) -> dict:
    """Bulk rescore of the whole pool with new heads, today's path on a subset, in the same run."""
    global BULK_FEATURES_ROOT
    import tempfile

    import numpy as np

    django_setup(database_url=args.database_url, cache_dir=args.cache_dir, model_dir=args.model_dir)
    import torch
    from django.conf import settings
    from django.db import connection

    from pool.models import Caption
    from scoring import bulk_rescore
    from scoring.encoders import encoder_load
    from scoring.inference import scoring_chunk_score
    from scoring.models import Score, ScoringRun
    from scoring.services import scoring_run_plan, scoring_run_start

    torch.set_num_threads(args.threads)
    BULK_FEATURES_ROOT = str(settings.EMBEDDING_CACHE_DIR)
    base = ScoringRun.objects.filter(reward_model_version__gt=0).order_by("id").first()
    encoder, fingerprint = base.encoder, base.encoder_fingerprint
    pairs = Caption.objects.count() if args.pairs is None else args.pairs
    record: dict = {"pairs_in_pool": pairs, "threads": args.threads, "load_before": load_conditions()}

    # 1. The bulk rescore of every shard with a new version's heads (a fresh version: inserts).
    version = _register_version(encoder, fingerprint, like=base.reward_model_version, note="scale.py rescore")
    run = bulk_rescore.bulk_rescore_start(encoder=encoder, reward_model_version=version, enqueue=False)
    timing: dict = {}
    restore = _timed_stages(timing)
    clock = CpuClock()
    started = time.perf_counter()
    pending = bulk_rescore.bulk_rescore_plan(run=run)
    plan_seconds = time.perf_counter() - started
    # The exact total: the task counts it after fanning out, while the chunks run; here before them.
    count_started = time.perf_counter()
    bulk_rescore.bulk_rescore_total_count(run=run)
    record["total_count_seconds"] = time.perf_counter() - count_started
    limit = args.shards or len(pending)
    # A sample (--shards N): the first N shard chunks only; chunk 0 (the captions outside featured
    # shards, one scan of the pool) is a once-per-run cost that would dominate a small sample.
    todo = [i for i in pending if i != bulk_rescore.REST_CHUNK][:limit] if args.shards else pending
    workers_cpu: list[dict] = []
    if args.workers > 1:
        # What `celery -Q gpu -c N` does: N processes, each scoring its own shards' chunks (every N-th
        # one here), so one process's heads run while another's PostgreSQL backend writes.
        import multiprocessing

        from django.db import connections

        connections.close_all()
        context = multiprocessing.get_context("spawn")
        jobs = [
            (args.database_url, args.cache_dir, args.model_dir, run.pk, todo[w :: args.workers], args.threads)
            for w in range(args.workers)
        ]
        with context.Pool(args.workers) as workers:
            for result in workers.imap_unordered(_rescore_worker, jobs):
                workers_cpu.append(result)
                for key in ("compute_seconds", "write_seconds", "finish_seconds"):
                    timing[key] += result[key]
                print(f"  bulk: a worker finished {result['chunks']} chunks", flush=True)
    else:
        for i, index in enumerate(todo):
            bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=index)
            if (i + 1) % 50 == 0:
                elapsed = time.perf_counter() - started
                done = ScoringRun.objects.get(pk=run.pk).done
                print(
                    f"  bulk: {i + 1}/{len(pending)} chunks, {done:,} pairs, {done / elapsed:,.0f} pairs/s",
                    flush=True,
                )
    run.refresh_from_db()
    if args.shards and run.status == "running":
        # A sample: the run is not complete, so its load table would never be attached. Cancel it:
        # the chunks it committed are attached as a cancelled run's are.
        from scoring.services import scoring_run_cancel

        scoring_run_cancel(run=run)
        bulk_rescore.bulk_rescore_finish(run_id=run.pk)
    bulk_seconds = time.perf_counter() - started
    restore()
    compute, write = timing["compute_seconds"], timing["write_seconds"]
    run.refresh_from_db()
    record["bulk"] = {
        "run": run.pk,
        "version": version,
        "status": run.status,
        "pairs": run.done,
        "chunks": run.chunks_done,
        "seconds": bulk_seconds,
        "plan_seconds": plan_seconds,
        "compute_seconds": compute,
        "write_seconds": write,
        # The load table's index build and attach (scoring.score_partitions), in the last worker.
        "finish_seconds": timing["finish_seconds"],
        "load_table": (run.params or {}).get("load_table"),
        "load_finished": (run.params or {}).get("load_finished"),
        "pairs_per_s": run.done / bulk_seconds,
        **_cpu_sum(clock.elapsed(), workers_cpu),
        "peak_rss_mb": max([peak_rss_mb(), *(w["peak_rss_mb"] for w in workers_cpu)]),
        "write_method": bulk_rescore.write_method_default(),
        "workers": args.workers,
        "heads_dtype": str(bulk_rescore.heads_dtype()).removeprefix("torch."),
        "plan_pairs_per_s_excluded": run.done / max(bulk_seconds - plan_seconds, 1e-9),
    }
    print(
        f"bulk rescore: {run.done:,} pairs in {bulk_seconds:.0f} s = {run.done / bulk_seconds:,.0f} pairs/s "
        f"(compute {compute:.0f} s, write {write:.0f} s, index and attach {timing['finish_seconds']:.0f} s), peak RSS {peak_rss_mb():.0f} MB",
        flush=True,
    )

    # 2. Today's path (scoring_chunk_score over the content-keyed cache) on the first shards' pairs,
    #    same weights under another version, so the two paths' scores can be compared pair by pair.
    n_sub = max(1, args.baseline_pairs // SHARD_PAIRS)
    sub_shards = sorted(run.chunks.exclude(index=0).values_list("index", flat=True))[:n_sub]
    baseline_version = _copy_version(encoder, fingerprint, version, note="scale.py rescore: today's path")
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        settings.EMBEDDING_CACHE_DIR = Path(scratch)  # a private content-keyed cache for the baseline
        sub_ids = list(
            bulk_rescore._usable(Caption.objects.filter(image__shard_id__in=sub_shards)).values_list(
                "id", flat=True
            )
        )
        baseline = scoring_run_start(
            encoder=encoder, reward_model_version=baseline_version, caption_ids=sub_ids, enqueue=False
        )
        t0 = time.perf_counter()
        _content_cache_fill(baseline, sub_shards)
        fill_seconds = time.perf_counter() - t0
        enc = encoder_load(encoder)
        clock = CpuClock()
        started = time.perf_counter()
        for index in scoring_run_plan(run=baseline):
            scoring_chunk_score(run_id=baseline.pk, chunk_index=index, encoder=enc)
        base_seconds = time.perf_counter() - started
        base_cpu = clock.elapsed()
        settings.EMBEDDING_CACHE_DIR = Path(BULK_FEATURES_ROOT)
    baseline.refresh_from_db()
    record["baseline"] = {
        "run": baseline.pk,
        "version": baseline_version,
        "status": baseline.status,
        "pairs": baseline.done,
        "seconds": base_seconds,
        "content_cache_fill_seconds": fill_seconds,
        "pairs_per_s": baseline.done / base_seconds,
        **base_cpu,
    }
    for part in ("bulk", "baseline"):
        r = record[part]
        r["pairs_per_cpu_s"] = r["pairs"] / (r["client_cpu_s"] + r["server_cpu_s"])
    ratio = record["bulk"]["pairs_per_s"] / record["baseline"]["pairs_per_s"]
    record["speedup"] = ratio
    record["speedup_per_cpu_s"] = record["bulk"]["pairs_per_cpu_s"] / record["baseline"]["pairs_per_cpu_s"]
    print(
        f"per CPU-second (client + PostgreSQL backend): bulk {record['bulk']['pairs_per_cpu_s']:,.0f}, today's "
        f"path {record['baseline']['pairs_per_cpu_s']:,.0f} pairs ({record['speedup_per_cpu_s']:.1f}x)",
        flush=True,
    )
    print(
        f"today's path: {baseline.done:,} pairs in {base_seconds:.1f} s = {baseline.done / base_seconds:,.0f} "
        f"pairs/s; bulk is {ratio:.1f}x",
        flush=True,
    )
    # Same weights, same features: the two paths' scores must agree.
    a = dict(
        Score.objects.filter(reward_model_version=version, caption_id__in=sub_ids).values_list(
            "caption_id", "reward"
        )
    )
    b = dict(
        Score.objects.filter(reward_model_version=baseline_version, caption_id__in=sub_ids).values_list(
            "caption_id", "reward"
        )
    )
    common = sorted(set(a) & set(b))
    diff = np.abs(np.array([a[c] for c in common]) - np.array([b[c] for c in common]))
    record["agreement"] = {
        "pairs": len(common),
        "max_abs_reward_diff": float(diff.max()) if len(diff) else None,
    }
    print(
        f"agreement on {len(common):,} pairs: max |reward diff| {record['agreement']['max_abs_reward_diff']}"
    )

    # 3. The write options on the same scores (rolled back).
    if args.write_shards:
        record["writes"] = _write_methods_measure(run, sub_shards[: args.write_shards])
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size('scoring_score')")
        record["scoring_score_bytes_after"] = cursor.fetchone()[0]
    record["load_after"] = load_conditions()
    if args.drop_rows:
        # The measured versions' rows are not needed afterwards: keep the database's size steady
        # between runs (autovacuum reuses the space).
        from scoring.score_partitions import score_version_delete

        dropped = score_version_delete(
            (encoder, fingerprint, version), tables=[record["bulk"]["load_table"] or ""]
        )
        dropped += score_version_delete((encoder, fingerprint, baseline_version))
        print(f"dropped {dropped:,} score rows of versions {version} and {baseline_version}", flush=True)
    results_record("rescore", f"{pairs}-{args.label}" if args.label else pairs, record)
    return record


# --- main ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="create the pool (PostgreSQL COPY) and its synthetic features")
    build.add_argument("--pairs", type=int, required=True)
    build.add_argument("--database-url", required=True)
    build.add_argument("--cache-dir", required=True, help="LOUPE_EMBEDDING_CACHE_DIR of the pool")
    build.add_argument("--model-dir", default=None, help="LOUPE_MODEL_DIR (default: <cache-dir>-models)")
    build.add_argument(
        "--weights",
        default="/work/scale-run/models/ViT-B-32-random.pt",
        help="the encoder's weights file (created with random weights when missing)",
    )
    build.add_argument("--dim", type=int, default=512, help="feature width (ViT-B-32: 512)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument(
        "--distinct-feature-shards",
        type=int,
        default=0,
        help="write real feature arrays for the first K shards only; later shards hard-link theirs "
        "(same layout and logical size, 1/K of the disk). 0: every shard real",
    )
    rescore = sub.add_parser("rescore", help="bulk rescore from cached features vs today's path on a subset")
    rescore.add_argument("--database-url", required=True)
    rescore.add_argument("--cache-dir", required=True)
    rescore.add_argument("--model-dir", required=True)
    rescore.add_argument(
        "--pairs", type=int, default=None, help="the pool's size for the results (default: counted)"
    )
    rescore.add_argument("--shards", type=int, default=0, help="rescore only the first N shards (0: all)")
    rescore.add_argument("--baseline-pairs", type=int, default=50_000)
    rescore.add_argument("--write-shards", type=int, default=3, help="shards for the write-option comparison")
    rescore.add_argument("--threads", type=int, default=1, help="torch threads (per worker)")
    rescore.add_argument("--label", default="", help="results key suffix (several variants per pool size)")
    rescore.add_argument("--drop-rows", action="store_true", help="delete the measured versions' rows after")
    rescore.add_argument(
        "--no-load-table",
        action="store_true",
        help="upsert every chunk into scoring_score (the path before scoring.score_partitions)",
    )
    rescore.add_argument(
        "--workers", type=int, default=1, help="processes scoring shards at once (like celery -c N)"
    )
    rescore.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="the heads' first-layer matmuls (LOUPE_BULK_RESCORE_DTYPE)",
    )
    rescore.add_argument("--scratch", default=None, help="folder for the baseline's content-keyed cache")
    args = parser.parse_args()
    if args.command == "build":
        pool_build(args)
    elif args.command == "rescore":
        os.environ["LOUPE_BULK_RESCORE_DTYPE"] = args.dtype
        os.environ["LOUPE_BULK_RESCORE_LOAD_TABLE"] = "0" if args.no_load_table else "1"
        rescore_bench(args)


if __name__ == "__main__":
    main()

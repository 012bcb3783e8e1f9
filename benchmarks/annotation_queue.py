#!/usr/bin/env python
"""Benchmark of the annotation queue on PostgreSQL: next-task and submit, against a naive queue.

Builds a fresh database with (at ``--scale 1``) 100,000 images, 1,000,000 captions, 100,000 tasks of
4 captions, 300 annotators and 200,000 judgments (40% of tasks complete with 3 judgments, 40% with 2,
20% untouched, 5% of the untouched gold). Rows are generated inside PostgreSQL with
``INSERT ... SELECT generate_series`` (no Python loop per row), so a full-scale build takes about a minute.

Then, interleaved in the same run, it times ``requests`` rounds of:
- **indexed queue** (``annotate.services``): ``task_next`` (walks ``task_queue_idx`` with SKIP LOCKED,
  denormalised counters) and ``judgment_submit``;
- **naive queue**: ORDER BY priority over every task of the campaign with the index defeated, counting
  judgments and active assignments per task on every request, and a submit that recounts judgments.

Server time is the wall time of the Python call, database round trips included.

    DATABASE_URL=postgres://loupe@127.0.0.1:54329/postgres \
        python benchmarks/annotation_queue.py --scale 0.1 --requests 1000

The database named by ``--db-name`` is dropped and re-created.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.pg import insert_select, recreate_database  # noqa: E402 - needs the repository on sys.path


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def populate(*, scale: float, annotators: int, seed: int) -> dict:
    from django.contrib.auth.models import User
    from django.db import connection

    from annotate import services
    from annotate.models import Assignment, Judgment, Task, TaskCaption
    from pool.models import Caption, Image

    n = max(100, int(100_000 * scale))  # images = tasks
    per_image = 10  # captions per image -> 1,000,000 at scale 1
    complete, partial = int(0.4 * n), int(0.8 * n)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(%s)", [seed / 1000])
    campaign = services.campaign_create(name="bench", captions_per_task=4, overlap=3, gold_rate=0.05)
    users = User.objects.bulk_create(
        [User(username=f"bench{i:04d}", password="!") for i in range(annotators)]
    )
    first_uid = min(u.pk for u in users)
    assert max(u.pk for u in users) - first_uid == annotators - 1, "user ids must be contiguous"

    insert_select(
        Image,
        {
            "id": "g",
            "sha256": "md5(g::text) || md5((g + 1)::text)",
            "phash": "substr(md5(g::text), 1, 16)",
            "width": "640",
            "height": "480",
            "format": "'JPEG'",
            "file": "'bench/' || g || '.jpg'",
            "source": "'bench'",
            "status": "'ok'",
        },
        f"FROM generate_series(1, {n}) AS g",
    )
    insert_select(
        Caption,
        {
            "id": "g",
            "image_id": f"(g - 1) / {per_image} + 1",
            "text": "'a photo number ' || g || ' of something seen from ' || mod(g, 7) || ' metres'",
            "text_sha256": "md5('c' || g) || md5('d' || g)",
            "source": "'alt'",
            "status": "'ok'",
        },
        f"FROM generate_series(1, {n * per_image}) AS g",
    )
    c = "((t - 1) * {per} + {k})"
    gold_ranking = (
        "jsonb_build_array("
        + ", ".join(f"jsonb_build_array({c.format(per=per_image, k=k)})" for k in range(1, 5))
        + ")"
    )
    insert_select(
        Task,
        {
            "id": "t",
            "campaign_id": str(campaign.pk),
            "image_id": "t",
            "priority": "random()",
            "status": f"CASE WHEN t <= {complete} THEN 'complete' ELSE 'open' END",
            "judgment_count": f"CASE WHEN t <= {complete} THEN 3 WHEN t <= {partial} THEN 2 ELSE 0 END",
            "claim_count": "0",
            "is_gold": f"(t > {partial} AND mod(t, 20) = 0)",
            "gold_ranking": f"CASE WHEN t > {partial} AND mod(t, 20) = 0 THEN {gold_ranking} ELSE NULL END",
        },
        f"FROM generate_series(1, {n}) AS t",
    )
    insert_select(
        TaskCaption,
        {
            "id": "g",
            "task_id": "(g - 1) / 4 + 1",
            "caption_id": f"((g - 1) / 4) * {per_image} + mod(g - 1, 4) + 1",
            "position": "mod(g - 1, 4)",
        },
        f"FROM generate_series(1, {4 * n}) AS g",
    )
    insert_select(
        Assignment,
        {
            "task_id": "t",
            "user_id": f"{first_uid} + mod(t * 3 + k, {annotators})",
            "status": "'submitted'",
            "created_at": "now() - interval '1 day'",
            "expires_at": "now() - interval '23 hours'",
        },
        f"FROM generate_series(1, {n}) AS t, generate_series(0, 2) AS k "
        f"WHERE t <= {complete} OR (t <= {partial} AND k < 2)",
    )
    ids = [f"((a.task_id - 1) * {per_image} + {k})" for k in range(1, 5)]
    ranking = (
        f"jsonb_build_array(jsonb_build_array({ids[0]}), jsonb_build_array({ids[1]}, {ids[2]}), "
        f"jsonb_build_array({ids[3]}))"
    )
    row = "'" + json.dumps({key: 3 for key in campaign.criterion_keys}) + "'::jsonb"
    ratings = "jsonb_build_object(" + ", ".join(f"{i}::text, {row}" for i in ids) + ")"
    judgments = insert_select(
        Judgment,
        {
            "task_id": "a.task_id",
            "user_id": "a.user_id",
            "assignment_id": "a.id",
            "ranking": ranking,
            "ratings": ratings,
            "duration_ms": "3000 + (random() * 20000)::int",
            "client_key": "md5('k' || a.id)::uuid",
            "created_at": "now() - random() * interval '30 days'",
        },
        "FROM annotate_assignment AS a",
    )
    with connection.cursor() as cursor:
        # What autovacuum does after a bulk load: statistics for the planner and the visibility map
        # that lets the claim read the user's seen/judged sets index-only.
        cursor.execute("VACUUM ANALYZE")
    return {
        "campaign": campaign,
        "users": users,
        "images": n,
        "captions": n * per_image,
        "tasks": n,
        "judgments": judgments,
        "build_seconds": time.perf_counter() - started,
    }


NAIVE_CANDIDATE = """
SELECT t.id FROM annotate_task t
WHERE t.campaign_id + 0 = %(campaign)s AND t.status || '' = 'open'
  AND (SELECT count(*) FROM annotate_judgment j WHERE j.task_id = t.id)
    + (SELECT count(*) FROM annotate_assignment a
       WHERE a.task_id = t.id AND a.status = 'active' AND a.expires_at > now()) < %(overlap)s
  AND NOT EXISTS (SELECT 1 FROM annotate_assignment a WHERE a.task_id = t.id AND a.user_id = %(user)s)
ORDER BY t.priority + 0 DESC, t.id + 0
LIMIT 1
FOR UPDATE OF t
"""


def naive_task_next(*, campaign, user):
    """The queue as it is often first written: no index, every task's counts recomputed per request."""
    from datetime import timedelta

    from django.db import connection, transaction
    from django.utils import timezone

    from annotate.models import Assignment, Task

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                NAIVE_CANDIDATE, {"campaign": campaign.pk, "overlap": campaign.overlap, "user": user.pk}
            )
            row = cursor.fetchone()
        if row is None:
            return None
        now = timezone.now()
        return Assignment.objects.create(
            task=Task.objects.get(pk=row[0]),
            user=user,
            created_at=now,
            expires_at=now + timedelta(minutes=30),
        )


def naive_judgment_submit(*, user, task, ranking, ratings, client_key):
    from django.db import transaction

    from annotate.models import Assignment, Judgment, Task

    with transaction.atomic():
        assignment = Assignment.objects.select_for_update().get(task=task, user=user, status="active")
        judgment = Judgment.objects.create(
            task=task,
            user=user,
            assignment=assignment,
            ranking=ranking,
            ratings=ratings,
            client_key=client_key,
        )
        assignment.status = "submitted"
        assignment.save(update_fields=["status"])
        if Judgment.objects.filter(task=task).count() >= task.campaign.overlap:
            Task.objects.filter(pk=task.pk).update(status="complete")
    return judgment


def measure(*, campaign, users, requests: int, naive_requests: int, seed: int) -> dict:
    from annotate import selectors, services
    from annotate.models import TaskCaption

    rng = random.Random(seed)
    timings: dict[str, list[float]] = {
        "next": [],
        "submit": [],
        "progress": [],
        "naive_next": [],
        "naive_submit": [],
    }
    keys = campaign.criterion_keys

    def answer(task):
        ids = list(
            TaskCaption.objects.filter(task=task).order_by("position").values_list("caption_id", flat=True)
        )
        rng.shuffle(ids)
        ranking = [[ids[0]], ids[1:3], ids[3:]] if len(ids) >= 4 else [[i] for i in ids]
        return ranking, {str(i): {k: rng.randint(1, 5) for k in keys} for i in ids}

    for i in range(max(requests, naive_requests)):
        if i < requests:
            user = rng.choice(users)
            t0 = time.perf_counter()
            assignment = services.task_next(campaign=campaign, user=user)
            timings["next"].append(time.perf_counter() - t0)
            if assignment is not None:
                ranking, ratings = answer(assignment.task)
                t0 = time.perf_counter()
                services.judgment_submit(
                    user=user, task=assignment.task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
                )
                timings["submit"].append(time.perf_counter() - t0)
                # What the page shows after each submit: done today, total, left in the queue.
                t0 = time.perf_counter()
                selectors.campaign_progress(campaign=campaign, user=user)
                timings["progress"].append(time.perf_counter() - t0)
        if i < naive_requests:
            user = rng.choice(users)
            t0 = time.perf_counter()
            assignment = naive_task_next(campaign=campaign, user=user)
            timings["naive_next"].append(time.perf_counter() - t0)
            if assignment is not None:
                ranking, ratings = answer(assignment.task)
                t0 = time.perf_counter()
                naive_judgment_submit(
                    user=user, task=assignment.task, ranking=ranking, ratings=ratings, client_key=uuid.uuid4()
                )
                timings["naive_submit"].append(time.perf_counter() - t0)
    return {
        name: {
            "n": len(values),
            "median_ms": 1000 * statistics.median(values) if values else float("nan"),
            "p95_ms": 1000 * _percentile(values, 0.95),
        }
        for name, values in timings.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=float, default=1.0, help="1.0 = 1M captions, 100k tasks, 200k judgments"
    )
    parser.add_argument("--requests", type=int, default=1000, help="timed rounds of the indexed queue")
    parser.add_argument("--naive-requests", type=int, default=None, help="timed rounds of the naive queue")
    parser.add_argument("--annotators", type=int, default=300)
    parser.add_argument("--db-name", default="loupe_annot_bench", help="dropped and re-created")
    parser.add_argument(
        "--server-url",
        default=os.environ.get("DATABASE_URL", "postgres://loupe@127.0.0.1:54329/postgres"),
        help="any database URL on the PostgreSQL server (used to create the benchmark database)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    if not args.server_url.startswith(("postgres://", "postgresql://")):
        parser.error("the benchmark needs PostgreSQL: pass --server-url postgres://... or set DATABASE_URL")
    os.environ["DATABASE_URL"] = recreate_database(args.server_url, args.db_name)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    data = populate(scale=args.scale, annotators=args.annotators, seed=args.seed)
    print(
        f"built {data['images']:,} images, {data['captions']:,} captions, {data['tasks']:,} tasks, "
        f"{data['judgments']:,} judgments in {data['build_seconds']:.0f} s",
        flush=True,
    )
    results = measure(
        campaign=data["campaign"],
        users=data["users"],
        requests=args.requests,
        naive_requests=args.naive_requests if args.naive_requests is not None else args.requests,
        seed=args.seed,
    )
    labels = {
        "next": "next task, indexed queue",
        "submit": "submit, indexed queue",
        "progress": "progress counts after submit",
        "naive_next": "next task, naive queue",
        "naive_submit": "submit, naive queue",
    }
    print(f"\n| scale {args.scale} | requests | median ms | p95 ms |\n|---|---:|---:|---:|")
    for key, label in labels.items():
        r = results[key]
        print(f"| {label} | {r['n']} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} |")
    if args.json:
        summary = {k: v for k, v in data.items() if k not in {"campaign", "users"}}
        args.json.write_text(json.dumps({"scale": args.scale, "data": summary, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

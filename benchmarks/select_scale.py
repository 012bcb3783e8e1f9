#!/usr/bin/env python
"""Active-learning selection on a pool built by ``benchmarks/scale.py build``: one
``task_priorities_refresh`` of the campaign's open tasks with the active reward model, features read
from the by-shard files (``scoring.features.caption_features_by_shard``), priorities written back.

    DATABASE_URL=postgres://.../scale_10m LOUPE_EMBEDDING_CACHE_DIR=... LOUPE_MODEL_DIR=... \\
    LOUPE_DEFAULT_ENCODER=open_clip:ViT-B-32:<weights> python benchmarks/select_scale.py

(the values are in the scale pool's README). Prints and appends to benchmarks/out/select_scale.json.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def main() -> None:
    import django

    django.setup()
    import torch

    from annotate.models import Campaign, Task, TaskStatus
    from pool.models import Caption
    from training.priorities import task_priorities_refresh

    torch.set_num_threads(1)
    campaign = Campaign.objects.order_by("-pk").first()
    open_tasks = Task.objects.filter(campaign=campaign, status=TaskStatus.OPEN).count()
    pairs = Caption.objects.order_by("-pk").values_list("pk", flat=True).first()  # ids are dense here
    load_before = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    summary = task_priorities_refresh(campaign=campaign)
    result = {
        "pairs": pairs,
        "open_tasks": open_tasks,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "summary": summary,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    print(json.dumps(result, default=str, indent=2))
    out = REPO / "benchmarks" / "out" / "select_scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous[str(pairs)] = result
    out.write_text(json.dumps(previous, default=str, indent=2))


if __name__ == "__main__":
    main()

"""Exports of judgments, streamed task by task so a campaign of any size fits in memory.

Formats are documented in docs/annotation.md ("Exports").
"""

from __future__ import annotations

import json
from itertools import combinations
from typing import TextIO

from django.db.models import Prefetch
from django.utils import timezone

from annotate.agreement import consensus_ranking, midranks
from annotate.models import Campaign, Judgment, Task, TaskCaption

CHUNK = 500


def _tasks_with_judgments(campaign: Campaign):
    """Tasks that have at least one judgment, with captions and judgments fetched per chunk."""
    tasks = (
        Task.objects.filter(campaign=campaign, judgment_count__gt=0)
        .select_related("image", "image__shard")
        .prefetch_related(
            Prefetch(
                "task_captions",
                queryset=TaskCaption.objects.select_related("caption").order_by("position"),
            ),
            Prefetch("judgments", queryset=Judgment.objects.select_related("user").order_by("id")),
        )
        .order_by("id")
    )
    return tasks.iterator(chunk_size=CHUNK)


def _dump(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _consensus(judgments: list[Judgment], criterion_keys: list[str]) -> dict:
    """Mean-rank consensus ranking and mean rating per caption and criterion over a task's judgments."""
    ratings: dict[str, dict[str, float]] = {}
    for caption_id in judgments[0].ratings if judgments else []:
        ratings[caption_id] = {}
        for key in criterion_keys:
            values = [j.ratings.get(caption_id, {}).get(key) for j in judgments]
            values = [v for v in values if v is not None]
            ratings[caption_id][key] = round(sum(values) / len(values), 4) if values else None
    return {
        "ranking": consensus_ranking([j.ranking for j in judgments]),
        "mean_ratings": ratings,
        "judgments": len(judgments),
    }


def judgments_coco_hf(*, campaign: Campaign, stream: TextIO) -> int:
    """COCO-HF-style JSON: one record per judged task with its image, captions and every judgment.

    Returns the number of task records written.
    """
    info = {
        "campaign": campaign.name,
        "campaign_id": campaign.pk,
        "criteria": campaign.criteria,
        "captions_per_task": campaign.captions_per_task,
        "overlap": campaign.overlap,
        "exported_at": timezone.now().isoformat(),
        "format": "loupe-coco-hf/1",
        "ranking_format": "tiers of caption ids, best first; ids in one tier are tied",
    }
    stream.write('{"info":' + _dump(info) + ',"annotations":[')
    written = 0
    for task in _tasks_with_judgments(campaign):
        image = task.image
        judgments = list(task.judgments.all())
        record = {
            "task_id": task.pk,
            "image": {
                "id": image.pk,
                # A media copy's path, else the file the image lives in (empty for shard members: see
                # "location" and the pool's shard registry).
                "file_name": image.file or image.uri,
                "location": {"shard": image.shard.uri, "offset": image.offset, "length": image.length}
                if image.shard_id and image.offset is not None
                else None,
                "sha256": image.sha256,
                "width": image.width,
                "height": image.height,
                "source": image.source,
                "source_key": image.source_key,
            },
            "captions": [
                {
                    "id": link.caption_id,
                    "uid": link.caption.uid or f"{image.sha256[:16]}{link.caption.text_sha256[:16]}",
                    "text": link.caption.text,
                    "source": link.caption.source,
                }
                for link in task.task_captions.all()
            ],
            "is_gold": task.is_gold,
            "gold_ranking": task.gold_ranking if task.is_gold else None,
            "consensus": _consensus(judgments, campaign.criterion_keys),
            "judgments": [
                {
                    "judgment_id": j.pk,
                    "annotator": j.user.username,
                    "annotator_id": j.user_id,
                    "ranking": j.ranking,
                    "ratings": j.ratings,
                    "duration_ms": j.duration_ms,
                    "created_at": j.created_at.isoformat(),
                    # Only the latest version is exported; earlier ones stay in Loupe (JudgmentRevision).
                    "version": j.version,
                    "ranking_basis": j.ranking_basis,
                }
                for j in judgments
            ],
        }
        stream.write(("," if written else "") + "\n" + _dump(record))
        written += 1
    stream.write("\n]}\n")
    return written


def pairs_from_ranking(ranking: list[list[int]]) -> list[tuple[int, int, bool]]:
    """(better, worse, tie) for every pair of captions in a ranking; for a tie the order is by id."""
    ranks = midranks(ranking)
    pairs = []
    for x, y in combinations(sorted(ranks), 2):
        if ranks[x] == ranks[y]:
            pairs.append((x, y, True))
        elif ranks[x] < ranks[y]:
            pairs.append((x, y, False))
        else:
            pairs.append((y, x, False))
    return pairs


PREFERENCE_FORMAT = (
    "TRL preference dataset, standard form with an explicit prompt: `prompt` names the image, `chosen` is "
    "the caption ranked higher, `rejected` the lower one (RewardTrainer / DPOTrainer read these three "
    "columns and ignore the rest). Ties are left out unless asked for; then `tie` is true and the order "
    "of the two is by caption id (train them with a 0.5 target, not as a preference)."
)


def preference_prompt(image_sha256: str) -> str:
    """The context of a pair: the image, named by its content hash (a text-only reward model sees an
    opaque token; a vision pipeline resolves it through ``image_sha256`` / ``image_file``)."""
    return f"<image sha256:{image_sha256}>\nCaption: "


def preference_pairs_jsonl(
    *, campaign: Campaign, stream: TextIO, include_ties: bool = False, stats: dict | None = None
) -> int:
    """One JSON line per ranked pair of captions of every judgment, in TRL's preference format
    (``prompt``/``chosen``/``rejected``) with Loupe's ids beside them. Returns the lines written.

    A tie is not a preference, so ties are left out (counted in ``stats["ties_excluded"]``) unless
    ``include_ties``. ``weight`` is 1 / (the judgment's pairs in the file), so each judgment's pairs sum
    to one and a task with many captions does not dominate. ``stats`` (a dict) receives the counts a
    manifest describes the file with.
    """
    lines = ties = judgments = 0
    tasks: set[int] = set()
    for task in _tasks_with_judgments(campaign):
        links = list(task.task_captions.all())
        texts = {link.caption_id: link.caption.text for link in links}
        image = task.image
        for judgment in task.judgments.all():
            pairs = pairs_from_ranking(judgment.ranking)
            kept = [pair for pair in pairs if include_ties or not pair[2]]
            ties += len(pairs) - len(kept) if not include_ties else 0
            judgments += 1
            if kept:
                tasks.add(task.pk)
            weight = 1.0 / len(kept) if kept else 0.0
            for chosen, rejected, tie in kept:
                stream.write(
                    _dump(
                        {
                            "prompt": preference_prompt(image.sha256),
                            "chosen": texts.get(chosen, ""),
                            "rejected": texts.get(rejected, ""),
                            "tie": tie,
                            "weight": weight,
                            "image_sha256": image.sha256,
                            "image_file": image.file,
                            "task_id": task.pk,
                            "image_id": task.image_id,
                            "judgment_id": judgment.pk,
                            "annotator": judgment.user.username,
                            "chosen_id": chosen,
                            "rejected_id": rejected,
                            "is_gold": task.is_gold,
                        }
                    )
                    + "\n"
                )
                lines += 1
    if stats is not None:
        stats.update(
            pairs=lines,
            ties_excluded=ties,
            ties_included=include_ties,
            judgments=judgments,
            tasks=len(tasks),
            format=PREFERENCE_FORMAT,
        )
    return lines

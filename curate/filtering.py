"""Filter runs: cut the scored pool down to the pairs worth training on.

A rule is an AND of predicates over one scoring (encoder, reward model version):

- ``top_percent``: the best k% by reward among usable scored pairs (Compress & Align kept 30%);
- ``reward_min``: reward at least this;
- ``cosine_min``: image-text cosine at least this (DataComp's CLIPScore filter: presets 0.25 and 0.28);
- ``criteria_min``: per-criterion minimums on the predicted 1-5 scores, e.g. ``{"accuracy": 3}``;
- ``balance_clusters``: keep the same number of pairs, but spread over k-means clusters of image
  embeddings (best reward first inside each cluster) instead of taking the global top;
- ``vlm_min``: minimums on a multimodal judge's MLM-Filter metrics (0-100: ``itm``, ``odf``, ``ctq``,
  ``su``), from the judge ``vlm_scorer``; the MLM-Filter preset keeps ITM >= 66 and ODF >= 20 (its best
  DataComp-medium filter). Pairs the judge has not seen (outside its band) are dropped, or judged by
  the other predicates alone with ``vlm_unjudged="keep"``. The judge's weights fingerprint is fixed
  when the run is created, so a later judge at the same path never changes what a run used.

Only usable pairs (image ok, caption ok) are considered. Curator decisions override the rule: accept ->
kept whatever the scores; reject -> dropped; rewrite -> the original is dropped and its rewrite is a
candidate pair in its own right (judged by the rule once scored, kept while not yet scored, because a
curator wrote it).

A run (``filter_evaluate``) reads a few id sets and combines them as sorted numpy arrays, with no join
of the pool tables: the scored pairs of the model with the one or two score columns the rule needs (one
binary ``COPY`` of the score table on PostgreSQL), the unusable captions (status not ok, or image status
not ok: small, through the status indexes), the curator-decided captions (the decision index) and the
rewrites (a partial index). The percentile cut is ``np.partition`` over the usable scores; predicates a
numpy column cannot express (criteria, the judge's metrics) run as one SQL query over the score table
alone. ``filter_plan``'s querysets say the same thing in SQL (the reference semantics, used by the
best-caption-per-image option and the tests); ``tests/curate/test_filter_fast_path.py`` checks both agree.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from curate.models import FilterRun
from pool.models import Caption, CaptionSource, CaptionStatus, CuratorDecision, Image, ImageStatus, RunStatus
from scoring.models import Score, VlmScore
from scoring.selectors import model_scores, score_weights_current

logger = logging.getLogger(__name__)

PRESETS: dict[str, dict] = {
    "top-30": {"top_percent": 30.0},
    "datacomp-0.25": {"top_percent": None, "cosine_min": 0.25},
    "datacomp-0.28": {"top_percent": None, "cosine_min": 0.28},
    "mlm-filter": {"top_percent": None, "vlm_min": {"itm": 66.0, "odf": 20.0}},
}
VLM_METRICS = ("itm", "odf", "ctq", "su")
STREAM_CHUNK = 50_000
HISTOGRAM_BINS = 40


class FilterNeedsConfirm(ValueError):
    """The rule keeps nothing or everything; running it needs an explicit confirmation."""


class FilterNeedsRewardModel(ValueError):
    """The rule ranks or thresholds by reward, but the scores it would read have no reward."""


def rule_reward_check(*, rule: FilterRule, encoder: str, reward_model_version: int) -> None:
    """Refuse, with what to do instead, a rule that needs rewards from scores that have none: without
    this a ``--top-percent 30`` on CLIPScore-only scores "keeps nothing" and asks for a confirmation."""
    needs = [
        name
        for name, used in (
            ("Keeping the top k% by reward", rule.top_percent is not None),
            ("A reward minimum", rule.reward_min is not None),
            ("Minimums on the predicted criteria", bool(rule.criteria_min)),
        )
        if used
    ]
    if not needs:
        return
    if reward_model_version == 0:
        why = f"the scores of {encoder} are CLIPScore only (no reward model)"
    elif (
        not scored_pairs(encoder=encoder, reward_model_version=reward_model_version)
        .filter(reward__isnull=False)
        .exists()
    ):
        why = f"no pair of {encoder} has been scored with reward model v{reward_model_version} yet"
    else:
        return
    raise FilterNeedsRewardModel(
        f"{' and '.join(needs)} needs a reward model, but {why}. Filter by CLIPScore instead: a "
        "minimum image-text cosine such as DataComp's 0.28 (the datacomp-0.28 preset; on the command "
        "line --clipscore-min 0.28). Or train a reward model on your judgments first (the models page, "
        "or manage.py train_reward --campaign NAME), score the pool with it, then filter by reward."
    )


@dataclass
class FilterRule:
    top_percent: float | None = 30.0
    reward_min: float | None = None
    cosine_min: float | None = None
    criteria_min: dict[str, float] = field(default_factory=dict)
    balance_clusters: int = 0
    preset: str = ""
    vlm_min: dict[str, float] = field(default_factory=dict)
    vlm_scorer: str = ""
    vlm_fingerprint: str = ""
    vlm_unjudged: str = "drop"
    # Keep at most one caption per image: the best-ranked of those that pass. With model rewrites and
    # descriptions beside the alt text, an image whose alt text fails stays in with its best caption
    # instead of being dropped, and no image is counted twice (AITQE's rewrite-instead-of-drop).
    best_caption_per_image: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> FilterRule:
        data = dict(data or {})
        preset = data.get("preset") or ""
        if preset:
            if preset not in PRESETS:
                raise ValueError(f"Unknown preset {preset!r}: choose one of {', '.join(PRESETS)}.")
            for key, value in PRESETS[preset].items():
                data.setdefault(key, value)
        rule = cls(
            top_percent=_opt_float(data.get("top_percent", 30.0)),
            reward_min=_opt_float(data.get("reward_min")),
            cosine_min=_opt_float(data.get("cosine_min")),
            criteria_min={str(k): float(v) for k, v in (data.get("criteria_min") or {}).items()},
            balance_clusters=int(data.get("balance_clusters") or 0),
            preset=preset,
            vlm_min={str(k): float(v) for k, v in (data.get("vlm_min") or {}).items()},
            vlm_scorer=str(data.get("vlm_scorer") or ""),
            vlm_fingerprint=str(data.get("vlm_fingerprint") or ""),
            vlm_unjudged=str(data.get("vlm_unjudged") or "drop"),
            best_caption_per_image=bool(data.get("best_caption_per_image")),
        )
        if rule.vlm_min and not rule.vlm_fingerprint:
            rule.vlm_fingerprint, rule.vlm_scorer = vlm_judge_resolve(rule.vlm_scorer)
        rule.validate()
        return rule

    def validate(self) -> None:
        if self.top_percent is not None and not 0 <= self.top_percent <= 100:
            raise ValueError(f"top_percent must be between 0 and 100, got {self.top_percent}.")
        if self.cosine_min is not None and not -1 <= self.cosine_min <= 1:
            raise ValueError(f"cosine_min is a cosine similarity (-1..1), got {self.cosine_min}.")
        for key, value in self.criteria_min.items():
            if not 1 <= value <= 5:
                raise ValueError(f"Minimum for criterion {key!r} must be on the 1-5 scale, got {value}.")
        if self.balance_clusters < 0:
            raise ValueError("balance_clusters must be 0 (off) or a number of clusters.")
        for key, value in self.vlm_min.items():
            if key not in VLM_METRICS:
                raise ValueError(f"Unknown judge metric {key!r}: use {', '.join(VLM_METRICS)}.")
            if not 0 <= value <= 100:
                raise ValueError(f"Minimum for judge metric {key!r} must be on the 0-100 scale, got {value}.")
        if self.vlm_unjudged not in ("drop", "keep"):
            raise ValueError("vlm_unjudged is 'drop' (pairs the judge has not seen are dropped) or 'keep'.")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self, *, reward_model_version: int | None = None) -> str:
        parts = []
        if self.top_percent is not None:
            parts.append(f"top {self.top_percent:g}% by {rank_label(reward_model_version)}")
        if self.reward_min is not None:
            parts.append(f"reward ≥ {self.reward_min:g}")
        if self.cosine_min is not None:
            parts.append(f"cosine ≥ {self.cosine_min:g}")
        parts += [f"{key} ≥ {value:g}" for key, value in self.criteria_min.items()]
        parts += [f"{key.upper()} ≥ {value:g}" for key, value in self.vlm_min.items()]
        text = " AND ".join(parts) or "keep every usable scored pair"
        if self.best_caption_per_image:
            text += ", the best caption of each image"
        if self.balance_clusters:
            text += f", balanced over {self.balance_clusters} clusters"
        return f"{self.preset}: {text}" if self.preset else text

    @property
    def histogram_field(self) -> str:
        if self.top_percent is None and self.reward_min is None:
            if self.cosine_min:
                return "cosine"
            if self.vlm_min:
                return next(iter(self.vlm_min))  # the judge's first metric, e.g. itm
        return "reward"


def vlm_judge_resolve(scorer: str) -> tuple[str, str]:
    """(weights fingerprint, name) of the judge whose scores a rule uses: the named judge's latest
    fingerprint, or with no name the judge that scored most recently. ``ValueError`` when none has."""
    judged = VlmScore.objects.exclude(scorer_fingerprint="")
    if scorer:
        judged = judged.filter(scorer=scorer)
    latest = judged.order_by("-updated_at").values_list("scorer_fingerprint", "scorer").first()
    if latest is None:
        which = f"judge {scorer!r}" if scorer else "a multimodal judge"
        raise ValueError(
            f"No pair has scores from {which}: run score_pool --scorer vlm:<dir> --band reward:40-60 first."
        )
    return latest


def rank_field(reward_model_version: int | None) -> str:
    """The score "top k%" ranks by: the reward model's reward, or CLIPScore when there is no reward model
    (version 0, scores without a reward): the baseline, instead of a rule that silently keeps nothing."""
    return "reward" if reward_model_version != 0 else "clipscore"


def rank_label(reward_model_version: int | None) -> str:
    return "reward" if reward_model_version != 0 else "CLIPScore (no reward model yet)"


def _opt_float(value) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def scored_pairs(
    *, encoder: str, reward_model_version: int, encoder_fingerprint: str | None = None
) -> QuerySet[Score]:
    """Scores of usable pairs for one scoring (the current weights' when no fingerprint is given):
    what a rule is evaluated over."""
    return model_scores(
        encoder=encoder, reward_model_version=reward_model_version, encoder_fingerprint=encoder_fingerprint
    ).filter(caption__status=CaptionStatus.OK, caption__image__status=ImageStatus.OK)


def reward_cutoff(
    *, encoder: str, reward_model_version: int, top_percent: float, encoder_fingerprint: str | None = None
) -> tuple[float | None, int]:
    """(lowest reward inside the top ``top_percent``%, number of pairs with a reward).

    One ORDER BY ... OFFSET on the (encoder, fingerprint, version, reward) index instead of loading the
    column. Pairs tied with the cut value are all kept, so a run can keep a few more than k%.
    """
    field_name = rank_field(reward_model_version)
    with_reward = scored_pairs(
        encoder=encoder, reward_model_version=reward_model_version, encoder_fingerprint=encoder_fingerprint
    ).filter(**{f"{field_name}__isnull": False})
    total = with_reward.count()
    wanted = math.ceil(total * top_percent / 100)
    if not wanted:
        return None, total
    cut = with_reward.order_by(f"-{field_name}").values_list(field_name, flat=True)[wanted - 1 : wanted]
    return float(cut[0]), total


def _rule_scores(
    *,
    encoder: str,
    reward_model_version: int,
    encoder_fingerprint: str,
    rule: FilterRule,
    cutoff,
    usable: bool = True,
) -> QuerySet[Score]:
    # Inside an EXISTS whose outer query already keeps usable pairs only, the status joins are waste.
    key = {
        "encoder": encoder,
        "reward_model_version": reward_model_version,
        "encoder_fingerprint": encoder_fingerprint,
    }
    scores = scored_pairs(**key) if usable else model_scores(**key)
    if rule.top_percent is not None:
        if cutoff is None:
            return scores.none()
        scores = scores.filter(**{f"{rank_field(reward_model_version)}__gte": cutoff})
    if rule.reward_min is not None:
        scores = scores.filter(reward__gte=rule.reward_min)
    if rule.cosine_min is not None:
        scores = scores.filter(cosine__gte=rule.cosine_min)
    for key, minimum in rule.criteria_min.items():
        scores = scores.filter(**{f"criteria__{key}__gte": minimum})
    if rule.vlm_min:
        judged = VlmScore.objects.filter(caption=OuterRef("caption"), scorer_fingerprint=rule.vlm_fingerprint)
        passing = judged.filter(error="", **{f"{key}__gte": value for key, value in rule.vlm_min.items()})
        condition = Exists(passing)
        if rule.vlm_unjudged == "keep":
            condition = condition | ~Exists(judged)
        scores = scores.filter(condition)
    return scores


@dataclass
class FilterPlan:
    """The querysets of one evaluation; counts and ids come from them."""

    encoder: str
    reward_model_version: int
    encoder_fingerprint: str
    rule: FilterRule
    cutoff: float | None
    considered: QuerySet[Caption]
    kept: QuerySet[Caption]
    rule_passed: QuerySet[Caption]
    overrides: dict[str, QuerySet[Caption]]


def filter_plan(
    *, encoder: str, reward_model_version: int, rule: FilterRule, encoder_fingerprint: str | None = None
) -> FilterPlan:
    """The rule over the scores of one model; ``encoder_fingerprint`` None: the current weights'."""
    if encoder_fingerprint is None:
        encoder_fingerprint = score_weights_current(
            encoder=encoder, reward_model_version=reward_model_version
        ).encoder_fingerprint
    key = {
        "encoder": encoder,
        "reward_model_version": reward_model_version,
        "encoder_fingerprint": encoder_fingerprint,
    }
    cutoff = None
    if rule.top_percent is not None:
        cutoff, _ = reward_cutoff(**key, top_percent=rule.top_percent)
    any_score = model_scores(**key).filter(caption=OuterRef("pk"))
    passing = _rule_scores(**key, rule=rule, cutoff=cutoff, usable=False).filter(caption=OuterRef("pk"))
    usable = Caption.objects.filter(status=CaptionStatus.OK, image__status=ImageStatus.OK)
    is_rewrite = Q(source=CaptionSource.REWRITE)
    considered = usable.filter(Exists(any_score) | Q(decision=CuratorDecision.ACCEPT) | is_rewrite)
    undecided = Q(decision="")
    kept = usable.filter(
        Q(decision=CuratorDecision.ACCEPT)
        | (undecided & Exists(passing))
        # A rewrite nobody has scored yet: the curator's text is the best judgement available.
        | (undecided & is_rewrite & ~Exists(any_score))
    )
    if rule.best_caption_per_image:
        kept = _best_caption_per_image(kept, key=key, rule=rule, cutoff=cutoff)
    overrides = {
        "accepted_against_rule": usable.filter(decision=CuratorDecision.ACCEPT).exclude(Exists(passing)),
        "rejected_against_rule": usable.filter(Exists(passing), decision=CuratorDecision.REJECT),
        "replaced_by_rewrite": usable.filter(decision=CuratorDecision.REWRITE),
        "unscored_rewrites_kept": usable.filter(undecided & is_rewrite & ~Exists(any_score)),
    }
    return FilterPlan(
        encoder=encoder,
        reward_model_version=reward_model_version,
        encoder_fingerprint=encoder_fingerprint,
        rule=rule,
        cutoff=cutoff,
        considered=considered,
        kept=kept,
        rule_passed=usable.filter(Exists(passing)),
        overrides=overrides,
    )


def _best_caption_per_image(kept, *, key: dict, rule: FilterRule, cutoff) -> QuerySet[Caption]:
    """Of each image's kept captions, the one ranked best (reward, else CLIPScore; ties: the oldest).

    A caption is dropped when a sibling of the same image also passes the rule, undecided or accepted,
    and ranks higher: one EXISTS over the (encoder, fingerprint, version, score) index per caption.
    A curator's accept still wins over the ranking only if it is the best one: an image yields one pair.
    """
    field_name = rank_field(key["reward_model_version"])
    own = model_scores(**key).filter(caption=OuterRef("pk")).values(field_name)[:1]
    siblings = _rule_scores(**key, rule=rule, cutoff=cutoff, usable=False).filter(
        caption__image_id=OuterRef("image_id"),
        caption__status=CaptionStatus.OK,
        caption__decision__in=["", CuratorDecision.ACCEPT],
    )
    better = siblings.filter(
        Q(**{f"{field_name}__gt": OuterRef("own_rank")})
        | Q(**{field_name: OuterRef("own_rank"), "caption_id__lt": OuterRef("pk")})
    )
    return kept.annotate(own_rank=Subquery(own)).exclude(Exists(better))


def stream_rows(
    queryset: QuerySet, fields: tuple[str, ...], chunk: int = STREAM_CHUNK
) -> Iterator[list[tuple]]:
    """Raw rows of ``queryset.values_list(*fields)`` in chunks, through a server-side cursor on PostgreSQL.

    Skips the ORM's per-row conversion, which is most of the cost at a million rows; use it for plain
    columns only (no JSON or datetime conversion happens).
    """
    sql, params = queryset.values_list(*fields).query.sql_with_params()
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(chunk):
            yield rows


def stream_ids(queryset: QuerySet, field_name: str = "id") -> np.ndarray:
    parts = [
        np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        for rows in stream_rows(queryset.order_by(), (field_name,))
    ]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


# --- the fast evaluation: id sets as sorted numpy arrays ------------------------------------------

_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def copy_blocks(copy, size: int = 1 << 22) -> Iterator[bytes]:
    """A COPY TO stream regrouped into blocks of about ``size`` bytes: psycopg hands over one row per
    block, and a Python step per row is what this path exists to avoid."""
    parts: list[bytes] = []
    held = 0
    for block in copy:
        parts.append(bytes(block))
        held += len(block)
        if held >= size:
            yield b"".join(parts)
            parts, held = [], 0
    if parts:
        yield b"".join(parts)


# ``copy_columns`` sends a block of 2^20 consecutive ids as one array per column (about 12 MB each).
ARRAY_BLOCK_BITS = 20


def _raw_array_loader():
    """A psycopg loader that hands a binary array over as bytes (numpy parses it, not Python objects)."""
    from psycopg.adapt import Loader
    from psycopg.pq import Format

    class RawArray(Loader):
        format = Format.BINARY

        def load(self, data) -> bytes:
            return bytes(data)

    return RawArray


def _binary_array(data: bytes, kind: str) -> np.ndarray:
    """A one-dimensional PostgreSQL binary array of int8 or float8 without NULLs, as numpy."""
    if not data:
        return np.zeros(0, dtype=np.int64 if kind == "i" else np.float64)
    ndim, has_nulls = np.frombuffer(data[:8], ">i4")
    if ndim == 0:
        return np.zeros(0, dtype=np.int64 if kind == "i" else np.float64)
    if ndim != 1 or has_nulls:
        raise RuntimeError("Unexpected array from PostgreSQL (expected one dimension, no NULLs).")
    count = int(np.frombuffer(data[12:16], ">i4")[0])
    element = np.dtype([("length", ">i4"), ("value", ">i8" if kind == "i" else ">f8")])
    values = np.frombuffer(data, dtype=element, offset=20, count=count)
    return values["value"].astype(np.int64 if kind == "i" else np.float64)


def _copy_columns_arrays(wrapped: str, params, kinds: str, in_table_order: bool) -> list[np.ndarray]:
    """``copy_columns`` as binary arrays: one ``array_agg`` per column for each block of 2^20 values of
    the first column (an id), streamed a block at a time through a server-side cursor.

    COPY sends one protocol message per row, and the Python step per message was most of the time at
    10M rows (40 s of the top-30% filter's 60); a block is one message of ~1M values per column. The
    aggregates of a block take their rows in the same order, so the columns stay aligned.
    """
    import psycopg

    aggregates = ", ".join(f"array_agg(w.c{n})" for n in range(len(kinds)))
    names = ", ".join(f"c{n}" for n in range(len(kinds)))
    query = f"SELECT {aggregates} FROM ({wrapped}) AS w({names}) GROUP BY w.c0 >> {ARRAY_BLOCK_BITS}"
    parts: list[list[np.ndarray]] = [[] for _ in kinds]
    with transaction.atomic(), connection.cursor() as django_cursor:
        if in_table_order:
            django_cursor.execute("SET LOCAL enable_indexscan = off")
        raw = django_cursor.cursor.connection
        # Django's cursors bind client-side, which cannot ask for binary results; a cursor of the same
        # connection and transaction that binds server-side can. The hash aggregate spills to disk past
        # work_mem, so the server's memory stays bounded; a block's rows arrive as one row here.
        with psycopg.Cursor(raw) as cursor:
            for name in ("int8", "float8"):
                # On this cursor only: every other query keeps psycopg's usual array loading.
                cursor.adapters.register_loader(raw.adapters.types[name].array_oid, _raw_array_loader())
            cursor.execute(query, params, binary=True)
            while (row := cursor.fetchone()) is not None:
                for n, kind in enumerate(kinds):
                    parts[n].append(_binary_array(row[n] or b"", kind))
    return [
        np.concatenate(p) if p else np.zeros(0, dtype=np.int64 if k == "i" else np.float64)
        for p, k in zip(parts, kinds, strict=True)
    ]


def copy_columns(
    sql: str,
    params,
    kinds: str,
    *,
    in_table_order: bool = False,
    by_blocks: bool = False,
) -> list[np.ndarray]:
    """Columns of ``sql`` as numpy arrays: ``kinds`` has one letter per column, ``i`` (bigint) or ``f``
    (float8, NULL -> NaN). PostgreSQL: one ``COPY (...) TO STDOUT (FORMAT BINARY)`` parsed with numpy
    (a fixed-width row per pair, no Python object per row), or, with ``by_blocks`` (the first column is
    an id), binary arrays per block of ids, faster at millions of rows (one message per block instead of
    one per row; slower for small results, where the aggregate's planning and hashing dominate); other
    databases: a streamed cursor."""
    casts = ", ".join(
        f"q.c{n}::bigint" if kind == "i" else f"COALESCE(q.c{n}::float8, 'NaN'::float8)"
        for n, kind in enumerate(kinds)
    )
    names = ", ".join(f"c{n}" for n in range(len(kinds)))
    wrapped = f"SELECT {casts} FROM ({sql}) AS q({names})"
    if connection.vendor != "postgresql":
        columns: list[list] = [[] for _ in kinds]
        with connection.chunked_cursor() as cursor:
            cursor.execute(sql, params)
            while rows := cursor.fetchmany(STREAM_CHUNK):
                for n, col in enumerate(zip(*rows, strict=True)):
                    columns[n].extend(col)
        return [
            np.array(col, dtype=np.int64)
            if kind == "i"
            else np.array([np.nan if v is None else v for v in col], dtype=np.float64)
            for col, kind in zip(columns, kinds, strict=True)
        ]
    if by_blocks:
        if not kinds.startswith("i"):
            raise ValueError("copy_columns(by_blocks=True) groups by its first column, which must be an id.")
        return _copy_columns_arrays(wrapped, params, kinds, in_table_order)
    # A row: int16 field count, then per field int32 length + 8 bytes (bigint and float8 alike).
    fields = [("n", ">i2")]
    for n, kind in enumerate(kinds):
        fields += [(f"l{n}", ">i4"), (f"v{n}", ">i8" if kind == "i" else ">f8")]
    row_type = np.dtype(fields)
    parts: list[np.ndarray] = []
    pending = b""
    header_done = False
    with transaction.atomic(), connection.cursor() as cursor:
        if in_table_order:
            # Most of a model's score rows: a plain index scan fetches them from the heap in index
            # order, one random page read per row on a table bigger than memory; a bitmap or
            # sequential scan reads the pages once, in order.
            cursor.execute("SET LOCAL enable_indexscan = off")
        with cursor.cursor.copy(f"COPY ({wrapped}) TO STDOUT (FORMAT BINARY)", params) as copy:
            for block in copy_blocks(copy):
                pending += block
                if not header_done:
                    if len(pending) < 19:
                        continue
                    if not pending.startswith(_COPY_SIGNATURE):
                        raise RuntimeError("Unexpected COPY BINARY header from PostgreSQL.")
                    extension = int.from_bytes(pending[15:19], "big")
                    pending = pending[19 + extension :]
                    header_done = True
                whole = len(pending) // row_type.itemsize * row_type.itemsize
                if whole:
                    parts.append(np.frombuffer(pending[:whole], dtype=row_type).copy())
                    pending = pending[whole:]
    if pending not in (b"", b"\xff\xff"):
        raise RuntimeError(f"COPY BINARY stream ended with {len(pending)} unparsed bytes.")
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=row_type)
    if rows.size and (rows["n"] != len(kinds)).any():
        raise RuntimeError("COPY BINARY returned rows of an unexpected width.")
    return [rows[f"v{n}"].astype(np.int64 if kind == "i" else np.float64) for n, kind in enumerate(kinds)]


def _sql(queryset: QuerySet, *fields: str) -> tuple[str, tuple]:
    return queryset.order_by().values_list(*fields).query.sql_with_params()


def _id_set(queryset: QuerySet, field_name: str = "id") -> np.ndarray:
    """Sorted distinct int64 ids of one column of ``queryset``."""
    return np.unique(copy_columns(*_sql(queryset, field_name), "i")[0])


def unusable_caption_ids() -> np.ndarray:
    """Captions that are not usable pairs: their status or their image's is not ok. ``< 'ok' OR > 'ok'``
    instead of ``<> 'ok'``: two ranges of the status indexes, not a scan of the pool."""
    own = Caption.objects.filter(Q(status__lt=CaptionStatus.OK) | Q(status__gt=CaptionStatus.OK))
    image = Caption.objects.filter(Q(image__status__lt=ImageStatus.OK) | Q(image__status__gt=ImageStatus.OK))
    return np.union1d(_id_set(own), _id_set(image))


@dataclass
class FilterResult:
    """What a run records, computed by ``filter_evaluate``."""

    cutoff: float | None
    considered: int
    kept: np.ndarray  # sorted caption ids
    rule_part: np.ndarray  # the kept pairs nobody decided on (what cluster balancing may replace)
    rule_passed: int
    overrides: dict[str, int]


def _sorted(values) -> np.ndarray:
    return np.unique(np.asarray(values, dtype=np.int64))


def filter_evaluate(
    *, encoder: str, reward_model_version: int, rule: FilterRule, encoder_fingerprint: str | None = None
) -> FilterResult:
    """The rule's kept ids and counts, as ``filter_plan`` defines them, without joining the pool tables.

    Memory: a few int64/float64 arrays of the scored pairs (about 30 bytes a pair at the peak), never a
    model object per pair. ``best_caption_per_image`` compares siblings of an image, which needs the
    join: it goes through ``filter_plan``'s querysets instead.
    """
    if encoder_fingerprint is None:
        encoder_fingerprint = score_weights_current(
            encoder=encoder, reward_model_version=reward_model_version
        ).encoder_fingerprint
    key = {
        "encoder": encoder,
        "reward_model_version": reward_model_version,
        "encoder_fingerprint": encoder_fingerprint,
    }
    if rule.best_caption_per_image:
        return _evaluate_by_plan(key, rule)
    unusable = unusable_caption_ids()
    decided = Caption.objects.filter(decision__gt="").values_list("id", "decision")
    by_decision: dict[str, list[int]] = {}
    for pk, decision in decided.iterator(chunk_size=STREAM_CHUNK):
        by_decision.setdefault(decision, []).append(pk)
    decided_ids = _sorted([pk for ids in by_decision.values() for pk in ids])
    accepted = np.setdiff1d(_sorted(by_decision.get(CuratorDecision.ACCEPT, [])), unusable)
    rejected = np.setdiff1d(_sorted(by_decision.get(CuratorDecision.REJECT, [])), unusable)
    rewritten = np.setdiff1d(_sorted(by_decision.get(CuratorDecision.REWRITE, [])), unusable)
    rewrites = Caption.objects.filter(source=CaptionSource.REWRITE).values_list("id", "decision")
    rewrite_ids, rewrite_undecided = [], []
    for pk, decision in rewrites.iterator(chunk_size=STREAM_CHUNK):
        rewrite_ids.append(pk)
        if decision == "":
            rewrite_undecided.append(pk)
    rewrite_all = np.setdiff1d(_sorted(rewrite_ids), unusable)
    rewrite_undecided = np.setdiff1d(_sorted(rewrite_undecided), unusable)

    # The scored pairs with the columns the rule compares in numpy.
    rank = rank_field(reward_model_version)
    columns: list[str] = []
    if rule.top_percent is not None:
        columns.append(rank)
    if rule.reward_min is not None and "reward" not in columns:
        columns.append("reward")
    if rule.cosine_min is not None and "cosine" not in columns:
        columns.append("cosine")
    scores = model_scores(**key)
    values = copy_columns(
        *_sql(scores, "caption_id", *columns),
        "i" + "f" * len(columns),
        # The rank indexes cover (caption, rank, cosine): an index-only scan, unless another column
        # must come from the rows.
        in_table_order=not set(columns) <= {rank, "cosine"},
        by_blocks=True,
    )
    order = np.argsort(values[0], kind="stable")
    scored = values[0][order]
    column = {name: values[1 + n][order] for n, name in enumerate(columns)}
    del values, order
    scored_usable = ~np.isin(scored, unusable, assume_unique=True)

    cutoff = None
    passing = np.ones(scored.size, dtype=bool)
    if rule.top_percent is not None:
        ranked = column[rank][scored_usable]
        ranked = ranked[~np.isnan(ranked)]
        wanted = math.ceil(ranked.size * rule.top_percent / 100)
        if wanted:
            # The wanted-th largest: what ORDER BY rank DESC OFFSET wanted-1 returns.
            cutoff = float(np.partition(ranked, ranked.size - wanted)[ranked.size - wanted])
            passing &= column[rank] >= cutoff
        else:
            passing[:] = False
        del ranked
    if rule.reward_min is not None:
        passing &= column["reward"] >= rule.reward_min
    if rule.cosine_min is not None:
        passing &= column["cosine"] >= rule.cosine_min
    passed = scored[passing]
    if rule.criteria_min or rule.vlm_min:
        # Predicates on JSON criteria and the judge's table: SQL over the score table alone.
        numeric = FilterRule(
            **{**rule.to_dict(), "top_percent": None, "reward_min": None, "cosine_min": None}
        )
        sql_passing = _rule_scores(**key, rule=numeric, cutoff=None, usable=False)
        passed = np.intersect1d(passed, _id_set(sql_passing, "caption_id"), assume_unique=True)
    del column, passing

    passed_usable = np.setdiff1d(passed, unusable, assume_unique=True)
    unscored_rewrites = np.setdiff1d(np.setdiff1d(rewrite_undecided, decided_ids), scored, assume_unique=True)
    rule_part = np.union1d(np.setdiff1d(passed_usable, decided_ids, assume_unique=True), unscored_rewrites)
    kept = np.union1d(accepted, rule_part)
    considered = int(scored_usable.sum()) + int(
        np.setdiff1d(np.union1d(accepted, rewrite_all), scored, assume_unique=True).size
    )
    overrides = {
        "accepted_against_rule": int(np.setdiff1d(accepted, passed, assume_unique=True).size),
        "rejected_against_rule": int(np.intersect1d(rejected, passed, assume_unique=True).size),
        "replaced_by_rewrite": int(rewritten.size),
        "unscored_rewrites_kept": int(unscored_rewrites.size),
    }
    return FilterResult(
        cutoff=cutoff,
        considered=considered,
        kept=kept,
        rule_part=rule_part,
        rule_passed=int(passed_usable.size),
        overrides=overrides,
    )


def _evaluate_by_plan(key: dict, rule: FilterRule) -> FilterResult:
    plan = filter_plan(**key, rule=rule)
    return FilterResult(
        cutoff=plan.cutoff,
        considered=plan.considered.count(),
        kept=stream_ids(plan.kept),
        rule_part=stream_ids(plan.kept.filter(decision="")),
        rule_passed=plan.rule_passed.count(),
        overrides={name: qs.count() for name, qs in plan.overrides.items()},
    )


def score_histogram(
    *,
    encoder: str,
    reward_model_version: int,
    score_field: str = "reward",
    bins: int = HISTOGRAM_BINS,
    vlm_fingerprint: str = "",
    encoder_fingerprint: str | None = None,
) -> tuple[list[int], list[float]]:
    """Histogram of one score over the usable scored pairs, from the streamed column (a judge metric
    when ``score_field`` is one of itm/odf/ctq/su)."""
    counts = np.zeros(bins, dtype=np.int64)
    if score_field in VLM_METRICS:
        queryset = VlmScore.objects.filter(
            scorer_fingerprint=vlm_fingerprint,
            caption__status=CaptionStatus.OK,
            caption__image__status=ImageStatus.OK,
            **{f"{score_field}__isnull": False},
        )
    else:
        queryset = scored_pairs(
            encoder=encoder,
            reward_model_version=reward_model_version,
            encoder_fingerprint=encoder_fingerprint,
        ).filter(**{f"{score_field}__isnull": False})
    bounds = queryset.order_by(score_field).values_list(score_field, flat=True)
    lo = bounds.first()
    hi = queryset.order_by(f"-{score_field}").values_list(score_field, flat=True).first()
    if lo is None:
        return [], []
    if hi == lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, bins + 1)
    for rows in stream_rows(queryset.order_by(), (score_field,)):
        values = np.fromiter((row[0] for row in rows), dtype=np.float64, count=len(rows))
        counts += np.histogram(values, bins=edges)[0]
    return counts.tolist(), edges.tolist()


@dataclass
class FilterPreview:
    rule: FilterRule
    considered: int
    kept: int
    cutoff: float | None
    counts: list[int]
    edges: list[float]
    cut: float | None
    score_field: str
    warning: str = ""
    # > 0: the numbers are estimated from this many sampled usable pairs (``filter_preview_sampled``).
    sample_size: int = 0

    @property
    def sampled(self) -> bool:
        return self.sample_size > 0

    @property
    def compression_ratio(self) -> float | None:
        return self.considered / self.kept if self.kept else None

    @property
    def kept_percent(self) -> float:
        return 100 * self.kept / self.considered if self.considered else 0.0


def filter_preview(
    *,
    encoder: str,
    reward_model_version: int,
    rule: FilterRule,
    histogram: bool = True,
    encoder_fingerprint: str | None = None,
    exact: bool | None = None,
) -> FilterPreview:
    """Counts and histogram of a rule: exact on demo-scale pools, estimated from a sample above
    ``PREVIEW_EXACT_MAX`` score rows (``exact`` None: decide by the table's size)."""
    if exact is None:
        exact = not preview_is_sampled()
    if not exact:
        if encoder_fingerprint is None:
            encoder_fingerprint = score_weights_current(
                encoder=encoder, reward_model_version=reward_model_version
            ).encoder_fingerprint
        key = {
            "encoder": encoder,
            "reward_model_version": reward_model_version,
            "encoder_fingerprint": encoder_fingerprint,
        }
        return filter_preview_sampled(key=key, rule=rule, histogram=histogram)
    plan = filter_plan(
        encoder=encoder,
        reward_model_version=reward_model_version,
        rule=rule,
        encoder_fingerprint=encoder_fingerprint,
    )
    considered, kept = plan.considered.count(), plan.kept.count()
    score_field = rule.histogram_field
    if score_field == "reward":
        score_field = rank_field(reward_model_version)
    counts, edges = (
        score_histogram(
            encoder=encoder,
            reward_model_version=reward_model_version,
            score_field=score_field,
            vlm_fingerprint=rule.vlm_fingerprint,
            encoder_fingerprint=plan.encoder_fingerprint,
        )
        if histogram
        else ([], [])
    )
    if score_field == "cosine":
        cut = rule.cosine_min
    elif score_field in VLM_METRICS:
        cut = rule.vlm_min.get(score_field)
    else:
        candidates = [value for value in (plan.cutoff, rule.reward_min) if value is not None]
        cut = max(candidates) if candidates else None
    return FilterPreview(
        rule=rule,
        considered=considered,
        kept=kept,
        cutoff=plan.cutoff,
        counts=counts,
        edges=edges,
        cut=cut,
        score_field=score_field,
        warning=_warning(considered, kept),
    )


# --- the preview at scale: estimated from a sample --------------------------------------------------

# Above this many score rows (PostgreSQL's table estimate) the page's preview is estimated from a
# random sample instead of counted: exact counts and a histogram of 10M pairs take tens of seconds,
# the sample answers in well under a second. The page says "about" and the sample size.
PREVIEW_EXACT_MAX = 200_000
PREVIEW_SAMPLE_ROWS = 20_000


def _score_table_estimate() -> int:
    if connection.vendor != "postgresql":
        return 0  # SQLite serves demo-scale pools: count exactly
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [Score._meta.db_table]
        )
        row = cursor.fetchone()
    return max(int(row[0] or 0), 0) if row else 0


def preview_is_sampled() -> bool:
    return _score_table_estimate() > PREVIEW_EXACT_MAX


def _sample_rows(key: dict, rule: FilterRule, percent: float) -> list[tuple]:
    """Score rows of one model from a ``TABLESAMPLE SYSTEM`` page sample (repeatable: the same rule
    previews the same numbers), joined to their caption and image by primary key."""
    vlm_join, vlm_cols, params = "", "NULL, NULL, NULL, NULL, NULL, NULL", []
    if rule.vlm_min:
        vlm_join = f"LEFT JOIN {VlmScore._meta.db_table} v ON v.caption_id = s.caption_id AND v.scorer_fingerprint = %s"
        vlm_cols = "v.id, v.error, v.itm, v.odf, v.ctq, v.su"
        params.append(rule.vlm_fingerprint)
    sql = (
        "SELECT s.reward, s.cosine, s.clipscore, s.criteria, c.decision, "
        "(c.status = 'ok' AND i.status = 'ok'), " + vlm_cols + " "
        f"FROM {Score._meta.db_table} s TABLESAMPLE SYSTEM (%s) REPEATABLE (7) "
        f"JOIN {Caption._meta.db_table} c ON c.id = s.caption_id "
        f"JOIN {Image._meta.db_table} i ON i.id = c.image_id "
        f"{vlm_join} "
        "WHERE s.encoder = %s AND s.encoder_fingerprint = %s AND s.reward_model_version = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            [percent, *params, key["encoder"], key["encoder_fingerprint"], key["reward_model_version"]],
        )
        return cursor.fetchall()


def _criteria(value) -> dict:
    if isinstance(value, str | bytes):
        import json

        return json.loads(value)
    return value or {}


def filter_preview_sampled(*, key: dict, rule: FilterRule, histogram: bool = True) -> FilterPreview:
    """``filter_preview``'s numbers estimated from a page sample of the score table: counts scaled by
    the sampling rate, the top-k% cut and the histogram from the sampled pairs. Curator decisions in
    the sample apply as in a run; rewrites nobody has scored yet and the one-caption-per-image option
    are not in the estimate (the run counts them)."""
    table_rows = max(_score_table_estimate(), 1)
    percent = min(100.0, 100.0 * PREVIEW_SAMPLE_ROWS / table_rows)
    rows = _sample_rows(key, rule, percent)
    scale = 100.0 / percent
    usable = [r for r in rows if r[5]]
    values = {
        "reward": np.array([np.nan if r[0] is None else r[0] for r in usable], dtype=np.float64),
        "cosine": np.array([np.nan if r[1] is None else r[1] for r in usable], dtype=np.float64),
        "clipscore": np.array([np.nan if r[2] is None else r[2] for r in usable], dtype=np.float64),
    }
    decision = np.array([r[4] for r in usable], dtype=object)
    passing = np.ones(len(usable), dtype=bool)
    cutoff = None
    rank = rank_field(key["reward_model_version"])
    if rule.top_percent is not None:
        ranked = values[rank][~np.isnan(values[rank])]
        wanted = math.ceil(ranked.size * rule.top_percent / 100)
        if wanted:
            cutoff = float(np.partition(ranked, ranked.size - wanted)[ranked.size - wanted])
            passing &= values[rank] >= cutoff
        else:
            passing[:] = False
    if rule.reward_min is not None:
        passing &= values["reward"] >= rule.reward_min
    if rule.cosine_min is not None:
        passing &= values["cosine"] >= rule.cosine_min
    for name, minimum in rule.criteria_min.items():
        got = [_criteria(r[3]).get(name) for r in usable]
        passing &= np.array([v is not None and v >= minimum for v in got], dtype=bool)
    if rule.vlm_min:
        judged = np.array([r[6] is not None for r in usable], dtype=bool)
        ok = np.array(
            [
                r[6] is not None
                and r[7] == ""
                and all(
                    r[8 + VLM_METRICS.index(m)] is not None and r[8 + VLM_METRICS.index(m)] >= v
                    for m, v in rule.vlm_min.items()
                )
                for r in usable
            ],
            dtype=bool,
        )
        passing &= ok | (~judged if rule.vlm_unjudged == "keep" else False)
    kept_mask = (decision == CuratorDecision.ACCEPT) | ((decision == "") & passing)
    considered, kept = round(len(usable) * scale), round(int(kept_mask.sum()) * scale)
    score_field = rule.histogram_field
    if score_field == "reward":
        score_field = rank
    counts, edges = [], []
    if histogram and score_field in values:
        column = values[score_field][~np.isnan(values[score_field])]
        if column.size:
            lo, hi = float(column.min()), float(column.max())
            edges_arr = np.linspace(lo, hi if hi > lo else lo + 1e-6, HISTOGRAM_BINS + 1)
            counts = np.histogram(column, bins=edges_arr)[0].tolist()
            edges = edges_arr.tolist()
    if score_field == "cosine":
        cut = rule.cosine_min
    elif score_field in VLM_METRICS:
        cut = rule.vlm_min.get(score_field)
    else:
        candidates = [value for value in (cutoff, rule.reward_min) if value is not None]
        cut = max(candidates) if candidates else None
    return FilterPreview(
        rule=rule,
        considered=considered,
        kept=kept,
        cutoff=cutoff,
        counts=counts,
        edges=edges,
        cut=cut,
        score_field=score_field,
        warning=_warning(considered, kept) if usable else _warning(0, 0),
        sample_size=len(usable),
    )


def _warning(considered: int, kept: int) -> str:
    if considered == 0:
        return "No usable scored pairs for this encoder and model version: score the pool first."
    if kept == 0:
        return "This rule keeps nothing: every pair would be dropped."
    if kept >= considered:
        return "This rule keeps everything: nothing would be filtered out."
    return ""


def _balanced_ids(plan: FilterPlan, target: int, clusters: int) -> tuple[np.ndarray | None, str]:
    """Pick ``target`` pairs spread evenly over k-means clusters of image embeddings, or explain why not."""
    from scoring.features import caption_features

    thresholds = FilterRule(**{**plan.rule.to_dict(), "top_percent": None, "balance_clusters": 0})
    eligible = _rule_scores(
        encoder=plan.encoder,
        reward_model_version=plan.reward_model_version,
        encoder_fingerprint=plan.encoder_fingerprint,
        rule=thresholds,
        cutoff=None,
    ).filter(caption__decision="", reward__isnull=False)
    rows = [row for chunk in stream_rows(eligible.order_by(), ("caption_id", "reward")) for row in chunk]
    if len(rows) <= target or clusters < 2:
        return None, "Cluster balancing skipped: fewer eligible pairs than the rule keeps."
    reward_of = {cid: reward for cid, reward in rows}
    try:
        feats, got = [], []
        all_ids = [r[0] for r in rows]
        for start in range(0, len(all_ids), 4096):
            image, _text, row_ids = caption_features(
                encoder=plan.encoder, caption_ids=all_ids[start : start + 4096]
            )
            feats.append(np.asarray(image, dtype=np.float32))
            got.extend(row_ids)
        features = np.concatenate(feats)
    except Exception as exc:  # embeddings not cached or encoder unavailable here
        return None, f"Cluster balancing skipped: image embeddings unavailable ({exc})."
    if len(got) <= target:
        return None, "Cluster balancing skipped: too few pairs have image embeddings."
    ids = np.array(got, dtype=np.int64)
    rewards = np.array([reward_of[cid] for cid in got], dtype=np.float64)
    from sklearn.cluster import MiniBatchKMeans

    k = min(clusters, len(ids))
    rng = np.random.default_rng(0)
    sample = features[rng.choice(len(ids), size=min(len(ids), 20_000), replace=False)]
    labels = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=3).fit(sample).predict(features)
    order = np.lexsort((-rewards, labels))  # by cluster, best reward first
    by_cluster = [order[labels[order] == c] for c in range(k)]
    chosen: list[int] = []
    # Round-robin over clusters: a small cluster's unused quota goes to the others.
    depth = 0
    while len(chosen) < target:
        added = False
        for members in by_cluster:
            if depth < len(members) and len(chosen) < target:
                chosen.append(members[depth])
                added = True
        if not added:
            break
        depth += 1
    return np.sort(ids[np.array(chosen, dtype=np.int64)]), f"Balanced over {k} image-embedding clusters."


def filter_run_create(
    *,
    encoder: str,
    reward_model_version: int,
    rule: FilterRule,
    user=None,
    confirm: bool = False,
    clipscore_ranking: bool = False,
) -> FilterRun:
    """Validate and queue a run; a rule that keeps nothing or everything needs ``confirm=True``.

    The run records the weights of the scores it reads (the current ones now): it is computed from
    those scores and no others, even if the pool is rescored with other weights before it executes.

    A reward rule over CLIPScore-only scores is refused with what to do instead, unless the caller
    asks for ``clipscore_ranking`` (the loop before its first promotion): then "top k%" ranks by
    CLIPScore and the run's rule text says so.
    """
    only_top_k = rule.reward_min is None and not rule.criteria_min
    if not (clipscore_ranking and reward_model_version == 0 and only_top_k):
        rule_reward_check(rule=rule, encoder=encoder, reward_model_version=reward_model_version)
    weights = score_weights_current(encoder=encoder, reward_model_version=reward_model_version)
    preview = filter_preview(
        encoder=encoder,
        reward_model_version=reward_model_version,
        rule=rule,
        histogram=False,
        encoder_fingerprint=weights.encoder_fingerprint,
    )
    if preview.warning and not confirm:
        raise FilterNeedsConfirm(preview.warning)
    return FilterRun.objects.create(
        encoder=encoder,
        encoder_fingerprint=weights.encoder_fingerprint,
        reward_model_version=reward_model_version,
        reward_checkpoint_sha256=weights.reward_checkpoint_sha256,
        rule=rule.to_dict(),
        params={
            "rule_text": rule.describe(reward_model_version=reward_model_version),
            "confirmed_warning": preview.warning,
        },
        created_by=user,
    )


def _kept_path(run: FilterRun) -> Path:
    return Path(settings.EXPORT_DIR) / "filter-runs" / f"filter-run-{run.pk}-kept.npy"


def filter_run_execute(*, run: FilterRun) -> FilterRun:
    """Evaluate the run's rule, write the kept caption ids (sorted int64 .npy) and record the counts."""
    # A redelivered task finds the run RUNNING after its worker died: redo it (the .npy is replaced atomically).
    if run.status == RunStatus.SUCCEEDED:
        return run
    run.status, run.started_at, run.error = RunStatus.RUNNING, timezone.now(), ""
    run.save(update_fields=["status", "started_at", "error"])
    try:
        rule = FilterRule.from_dict(run.rule)
        key = {
            "encoder": run.encoder,
            "reward_model_version": run.reward_model_version,
            "encoder_fingerprint": run.encoder_fingerprint,
        }
        result = filter_evaluate(**key, rule=rule)
        run.considered = result.considered
        run.total = run.considered
        run.save(update_fields=["considered", "total"])
        kept_ids = result.kept
        messages = []
        if rule.balance_clusters:
            rule_part = result.rule_part
            plan = filter_plan(**key, rule=rule)
            balanced, message = _balanced_ids(plan, target=len(rule_part), clusters=rule.balance_clusters)
            messages.append(message)
            if balanced is not None:
                kept_ids = np.union1d(np.setdiff1d(kept_ids, rule_part), balanced)
        path = _kept_path(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, kept_ids.astype(np.int64))
        os.replace(tmp, path)
        run.kept = int(kept_ids.size)
        run.kept_file = str(path)
        run.summary = {
            "rule_text": rule.describe(reward_model_version=run.reward_model_version),
            "reward_cutoff": result.cutoff,
            "rule_passed": result.rule_passed,
            **result.overrides,
            "messages": messages,
        }
        run.done, run.status, run.finished_at = run.considered, RunStatus.SUCCEEDED, timezone.now()
        run.save()
    except Exception as exc:
        logger.exception("filter run %s failed", run.pk)
        run.status, run.error, run.finished_at = (
            RunStatus.FAILED,
            f"{type(exc).__name__}: {exc}",
            timezone.now(),
        )
        run.save(update_fields=["status", "error", "finished_at"])
        raise
    return run


def filter_run_kept_ids_mmap(*, run: FilterRun) -> np.ndarray:
    """The kept ids memory-mapped: a page of a run's pairs reads a few blocks, not the whole file."""
    if not run.kept_file or not Path(run.kept_file).exists():
        raise FileNotFoundError(
            f"Filter run {run.pk}: its kept-ids file {run.kept_file or '(none)'} is missing, so its pairs "
            "cannot be listed. Run the filter again."
        )
    return np.load(run.kept_file, mmap_mode="r")


def filter_run_kept_ids(*, run: FilterRun) -> np.ndarray:
    if not run.kept_file or not Path(run.kept_file).exists():
        raise FileNotFoundError(
            f"Filter run {run.pk} (status {run.status}): its kept-ids file {run.kept_file or '(none)'} is missing."
        )
    return np.load(run.kept_file)

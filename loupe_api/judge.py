"""The multimodal judge's scores (MLM-Filter's four metrics) and judge runs over a band (curators read,
admins start runs)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import F
from django.http import HttpRequest
from ninja import Query, Router, Schema, Status
from ninja.errors import HttpError
from pydantic import Field

from accounts.roles import ADMIN, CURATOR
from loupe_api.auth import require_role
from loupe_api.common import FilterText, Id, LongFilterText, Page, PageQuery, paginate
from scoring.active_model import active_model_get
from scoring.models import VlmScore
from scoring.vlm_runs import vlm_band_resolve, vlm_run_start

router = Router(tags=["judge"])


class JudgeScoreOut(Schema):
    caption_id: int
    uid: str
    scorer: str
    scorer_fingerprint: str
    itm: float | None
    odf: float | None
    ctq: float | None
    su: float | None
    truncated: bool
    error: str
    updated_at: datetime

    @staticmethod
    def resolve_uid(obj: VlmScore) -> str:
        return obj.caption.uid


class JudgeScoreQuery(PageQuery):
    scorer: LongFilterText | None = None
    scorer_fingerprint: FilterText | None = None
    caption_id: Id | None = None
    min_itm: float | None = Field(None, ge=0, le=100)
    max_itm: float | None = Field(None, ge=0, le=100)
    min_odf: float | None = Field(None, ge=0, le=100)


@router.get("/judge-scores", response=Page[JudgeScoreOut], summary="List the judge's MLM-Filter scores")
def judge_score_list(request: HttpRequest, query: Query[JudgeScoreQuery]):
    require_role(request, CURATOR)
    scores = VlmScore.objects.select_related("caption")
    for field, value in (
        ("scorer", query.scorer),
        ("scorer_fingerprint", query.scorer_fingerprint),
        ("caption_id", query.caption_id),
        ("itm__gte", query.min_itm),
        ("itm__lte", query.max_itm),
        ("odf__gte", query.min_odf),
    ):
        if value is not None:
            scores = scores.filter(**{field: value})
    return paginate(scores.order_by(F("itm").asc(nulls_last=True), "id"), query)


class JudgeRunIn(Schema):
    scorer: LongFilterText = Field(description="vlm:<local checkpoint dir> (or vlm:<hub id> with internet)")
    encoder: LongFilterText = Field(description="The scoring whose band is judged.")
    field: str = Field("reward", description="reward or clipscore")
    low_percent: float = Field(40, ge=0, le=100)
    high_percent: float = Field(60, ge=0, le=100)


class JudgeRunOut(Schema):
    id: int
    status: str
    encoder: str
    params: dict


@router.post("/judge-runs", response={202: JudgeRunOut}, summary="Judge a band of a scoring (the cascade)")
def judge_run_create(request: HttpRequest, body: JudgeRunIn):
    require_role(request, ADMIN)
    active = active_model_get(encoder=body.encoder)
    try:
        band = vlm_band_resolve(
            encoder=body.encoder,
            reward_model_version=active.version if active else 0,
            field=body.field,
            low_percent=body.low_percent,
            high_percent=body.high_percent,
        )
        run = vlm_run_start(scorer=body.scorer, band=band, user=request.auth)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from exc
    return Status(202, run)

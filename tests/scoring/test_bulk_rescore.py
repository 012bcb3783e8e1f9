"""Bulk rescore from the by-shard features: the same scores as today's path, shard chunks that rerun
without doubling, the fallback for captions the features lack, both write paths, and (PostgreSQL) a
new version loaded into a partition of its own."""

from __future__ import annotations

import numpy as np
import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.urls import reverse

from pool.models import Caption, Image, ImageStatus, RunStatus, Shard
from scoring import bulk_rescore, score_partitions
from scoring.active_model import ActiveModel, active_model_set
from scoring.cache import EmbeddingCache
from scoring.encoders import encoder_load
from scoring.inference import scoring_run_sync
from scoring.models import Score, ScoringChunk, ScoringRun
from scoring.services import scoring_run_cancel, scoring_run_resume, scoring_run_start
from scoring.shard_features import shard_features_write
from tests.conftest import image_bytes
from tests.scoring.conftest import pool_caption, pool_image

pytestmark = pytest.mark.django_db

VERSION = 7
LONG = " ".join(["a very long caption about a photograph"] * 20)  # past the text tower's 77 tokens


def _reward_model(encoder, tmp_path):
    import torch

    from scoring.reward_model import RewardEnsemble, RewardHeadConfig, save_checkpoint

    torch.manual_seed(0)
    model = RewardEnsemble(
        RewardHeadConfig(
            image_dim=encoder.image_feature_dim,
            text_dim=encoder.text_feature_dim,
            n_heads=3,
            criteria=["accuracy", "detail"],
        )
    )
    # Non-trivial standardisation, so a mistake in the split first layer would show.
    model.feat_mean.uniform_(-0.1, 0.1)
    model.feat_std.uniform_(0.5, 1.5)
    path = tmp_path / "rm.pt"
    meta = {"encoder": encoder.name, "criteria": ["accuracy", "detail"], "version": VERSION}
    sha = save_checkpoint(path, model, meta)
    active_model_set(model=ActiveModel(encoder.name, VERSION, str(path), sha), encoder=encoder.name)


def _pool() -> dict:
    """Shard 1: 4 images x 2 captions (one long), one of them rejected; shard 2: 2 images; 2 images
    imported as files (no shard)."""
    shards = [Shard.objects.create(uri=f"file:///pool/{i:05d}.tar", format="webdataset") for i in (1, 2)]
    captions = {"shard1": [], "shard2": [], "rest": [], "rejected": []}
    for i in range(8):
        image = pool_image(image_bytes(40, 32, seed=i))
        image.shard = shards[0] if i < 4 else shards[1] if i < 6 else None
        if i == 3:
            image.status = ImageStatus.REJECTED
        image.save()
        group = "rejected" if i == 3 else "shard1" if i < 4 else "shard2" if i < 6 else "rest"
        for j in range(2):
            text = LONG if (i, j) == (0, 1) else f"picture {i} caption {j}"
            captions[group].append(pool_caption(image, text).id)
    return {"shards": shards, "captions": captions}


def _features_from_cache(encoder, shard, leave_out: set[int] = frozenset()) -> None:
    """Write a shard's features from the content-keyed cache (what the shard pass would write)."""
    cache = EmbeddingCache(encoder.name, fingerprint=encoder.fingerprint, root=settings.EMBEDDING_CACHE_DIR)
    images = list(Image.objects.filter(shard=shard).order_by("id"))
    captions = [c for c in Caption.objects.filter(image__shard=shard).order_by("id") if c.id not in leave_out]
    image_feats, found = cache.get_images([i.sha256 for i in images])
    images_kept = [i for i, ok in zip(images, found, strict=True) if ok]
    image_feats = image_feats[found]
    row_of = {img.id: r for r, img in enumerate(images_kept)}
    captions = sorted((c for c in captions if c.image_id in row_of), key=lambda c: (row_of[c.image_id], c.id))
    text_feats, found = cache.get_texts([c.text_sha256 for c in captions])
    assert found.all()
    shard_features_write(
        settings.EMBEDDING_CACHE_DIR,
        encoder.name,
        encoder.fingerprint,
        shard.pk,
        image_ids=[i.id for i in images_kept],
        images=image_feats,
        caption_ids=[c.id for c in captions],
        texts=text_feats,
        caption_image_row=[row_of[c.image_id] for c in captions],
    )


def _score_values(version: int) -> dict[int, tuple]:
    return {
        s.caption_id: (s.cosine, s.clipscore, s.reward, s.criteria, s.uncertainty, s.truncated, s.error)
        for s in Score.objects.filter(reward_model_version=version)
    }


def _assert_close(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for cid, exp in expected.items():
        cos, clip, reward, criteria, unc, truncated, error = got[cid]
        assert cos == pytest.approx(exp[0], abs=1e-6)
        assert clip == pytest.approx(exp[1], abs=1e-5)
        assert reward == pytest.approx(exp[2], abs=1e-5)
        assert set(criteria) == set(exp[3])
        for key, value in exp[3].items():
            assert criteria[key] == pytest.approx(value, abs=2e-4)  # both rounded to 4 decimals
        assert unc == pytest.approx(exp[4], abs=1e-5)
        assert (truncated, error) == (exp[5], exp[6])


@pytest.fixture
def scored_pool(tiny_clip_name, tmp_path):
    """The pool scored by today's path (version 0 for CLIPScore, then the reward model), and the
    shard features written from the cache that path filled."""
    pool = _pool()
    encoder = encoder_load(tiny_clip_name)
    scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, reward_model_version=0, enqueue=False))
    _reward_model(encoder, tmp_path)
    scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, enqueue=False))
    expected = _score_values(VERSION)
    # The second caption of shard 1's first image is "added after the pass": no features.
    late = pool["captions"]["shard1"][1]
    _features_from_cache(encoder, pool["shards"][0], leave_out={late})
    _features_from_cache(encoder, pool["shards"][1])
    Score.objects.filter(reward_model_version=VERSION).delete()
    return {**pool, "encoder": encoder, "expected": expected, "late": late}


@pytest.mark.parametrize("method", ["orm", "copy_upsert", "copy_replace", "copy_text_upsert"])
def test_bulk_rescore_gives_todays_scores_for_every_usable_pair(scored_pool, tiny_clip_name, method):
    if method.startswith("copy") and connection.vendor != "postgresql":
        pytest.skip("COPY needs PostgreSQL")
    run = bulk_rescore.bulk_rescore_start(encoder=tiny_clip_name, enqueue=False)
    assert run.params["bulk"] and run.reward_model_version == VERSION
    run = bulk_rescore.bulk_rescore_sync(run=run, write_method=method)
    assert run.status == RunStatus.SUCCEEDED, run.error
    captions = scored_pool["captions"]
    usable = captions["shard1"] + captions["shard2"] + captions["rest"]
    assert sorted(run.chunks.values_list("index", flat=True)) == [0] + [s.pk for s in scored_pool["shards"]]
    assert (run.done, run.total, run.failed_pairs) == (len(usable), len(usable), 0)
    got = _score_values(VERSION)
    _assert_close(got, scored_pool["expected"])
    assert not set(captions["rejected"]) & set(got)
    # The long caption's truncation comes from its version-0 row (the features do not carry it).
    assert sum(v[5] for v in got.values()) == 1


def test_rerunning_a_shard_replaces_its_rows_and_never_doubles_them(scored_pool, tiny_clip_name):
    run = bulk_rescore.bulk_rescore_sync(
        run=bulk_rescore.bulk_rescore_start(encoder=tiny_clip_name, enqueue=False)
    )
    shard = scored_pool["shards"][0]
    before = dict(Score.objects.filter(reward_model_version=VERSION).values_list("caption_id", "updated_at"))
    # A redelivered message of a done chunk does nothing.
    assert bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=shard.pk) == "run succeeded"
    ScoringRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING)
    assert bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=shard.pk) == "already done"
    # Forced to run again (e.g. features rewritten): the shard's rows are replaced in place.
    ScoringChunk.objects.filter(run=run, index=shard.pk).update(done=False)
    assert bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=shard.pk) == "scored"
    scores = Score.objects.filter(reward_model_version=VERSION)
    assert not scores.values("caption_id").annotate(n=Count("id")).filter(n__gt=1).exists()
    after = dict(scores.values_list("caption_id", "updated_at"))
    assert set(after) == set(before)
    assert all(after[c] > before[c] for c in scored_pool["captions"]["shard1"])
    assert all(after[c] == before[c] for c in scored_pool["captions"]["shard2"])
    _assert_close(_score_values(VERSION), scored_pool["expected"])


def test_scores_written_by_todays_path_are_overwritten_not_doubled(scored_pool, tiny_clip_name):
    scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, enqueue=False))
    n = Score.objects.filter(reward_model_version=VERSION).count()
    bulk_rescore.bulk_rescore_sync(run=bulk_rescore.bulk_rescore_start(encoder=tiny_clip_name, enqueue=False))
    assert Score.objects.filter(reward_model_version=VERSION).count() == n
    _assert_close(_score_values(VERSION), scored_pool["expected"])


def test_a_killed_run_is_resumed_by_the_bulk_tasks(
    scored_pool, tiny_clip_name, eager_celery, django_capture_on_commit_callbacks
):
    run = bulk_rescore.bulk_rescore_start(encoder=tiny_clip_name, enqueue=False)
    pending = bulk_rescore.bulk_rescore_plan(run=run)
    bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=pending[1])  # then the worker died
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.chunks_done == 1
    with django_capture_on_commit_callbacks(execute=True):
        resumed = scoring_run_resume(run=run)  # what the stale-run sweep calls
    assert sorted(resumed) == sorted(set(pending) - {pending[1]})
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.chunks_done == run.chunks_total == 3
    _assert_close(_score_values(VERSION), scored_pool["expected"])
    # The planner died before its count: the total is made exact when the last chunk finishes the run.
    captions = scored_pool["captions"]
    assert run.total == run.done == len(captions["shard1"] + captions["shard2"] + captions["rest"])


def test_the_plan_needs_no_count_of_the_pool(scored_pool, tiny_clip_name):
    """Planning reads the shards' feature ids only; the exact total is a separate count afterwards."""
    run = bulk_rescore.bulk_rescore_start(encoder=tiny_clip_name, enqueue=False)
    bulk_rescore.bulk_rescore_plan(run=run)
    run.refresh_from_db()
    featured = sum(
        len(bulk_rescore.shard_features_read(bulk_rescore._features_root(run) / str(s.pk)).caption_ids)
        for s in scored_pool["shards"]
    )
    assert run.total == featured  # provisional: the captions with features, usable or not
    captions = scored_pool["captions"]
    exact = len(captions["shard1"] + captions["shard2"] + captions["rest"])
    assert bulk_rescore.bulk_rescore_total_count(run=run) == exact
    run.refresh_from_db()
    assert run.total == exact


def test_heads_predict_matches_the_models_forward_on_duplicated_images():
    import torch

    from scoring.reward_model import RewardEnsemble, RewardHeadConfig

    torch.manual_seed(1)
    model = RewardEnsemble(RewardHeadConfig(image_dim=12, text_dim=8, embed_dim=8, criteria=["a"])).eval()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((5, 12)).astype(np.float16)
    texts = rng.standard_normal((9, 8)).astype(np.float16)
    image_row = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])
    cosine, reward, criteria, unc = bulk_rescore.heads_predict(
        model, images, texts, image_row, embed_dim=8, batch=4
    )
    with torch.inference_mode():
        out = model(
            torch.from_numpy(images[image_row].astype(np.float32)), torch.from_numpy(texts.astype(np.float32))
        )
    np.testing.assert_allclose(reward, out.reward.numpy(), atol=1e-5)
    np.testing.assert_allclose(criteria, out.criteria.numpy(), atol=1e-5)
    np.testing.assert_allclose(unc, out.uncertainty.numpy(), atol=1e-5)
    expected_cos = np.einsum("nd,nd->n", images[image_row, :8].astype(np.float32), texts.astype(np.float32))
    np.testing.assert_allclose(cosine, expected_cos, atol=1e-6)


def test_a_judge_cannot_be_bulk_rescored():
    with pytest.raises(bulk_rescore.BulkRescoreError, match="judge"):
        bulk_rescore.bulk_rescore_start(encoder="vlm:/nowhere", enqueue=False)


def test_copy_write_on_sqlite_is_refused_with_a_clear_error(scored_pool, tiny_clip_name):
    if connection.vendor == "postgresql":
        pytest.skip("SQLite only")
    run = bulk_rescore.bulk_rescore_start(encoder=tiny_clip_name, enqueue=False)
    bulk_rescore.bulk_rescore_plan(run=run)
    with pytest.raises(bulk_rescore.BulkRescoreError, match="PostgreSQL"):
        bulk_rescore.bulk_rescore_chunk(
            run_id=run.pk, chunk_index=scored_pool["shards"][0].pk, write_method="copy_upsert"
        )


# --- a new version loaded into its own partition (PostgreSQL, scoring.score_partitions) ---------------
# The same scores, visible all at once, attached once, recovered after a worker died between its last
# chunk and the attach, merged when rows of the version appeared meanwhile, dropped as one table.


requires_partitions = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="partitions of scoring_score are PostgreSQL's"
)


def _partition_of(caption_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM scoring_score WHERE caption_id = %s AND reward_model_version = %s",
            [caption_id, VERSION],
        )
        return cursor.fetchone()[0]


def _start(tiny_clip_name) -> ScoringRun:
    return bulk_rescore.bulk_rescore_start(encoder=tiny_clip_name, enqueue=False)


@requires_partitions
def test_the_scoring_table_is_partitioned_with_the_old_rows_in_its_default_partition():
    assert score_partitions.partitioned()
    assert score_partitions.table_state("scoring_score_default") == "attached"


@requires_partitions
def test_a_new_version_is_loaded_apart_and_attached_as_its_partition(scored_pool, tiny_clip_name):
    run = _start(tiny_clip_name)
    pending = bulk_rescore.bulk_rescore_plan(run=run)
    run.refresh_from_db()
    name = run.params["load_table"]
    assert name == f"scoring_score_r{run.pk}" and score_partitions.table_state(name) == "loading"
    bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=pending[0])
    # Nothing of the version is visible before the run finishes.
    assert not Score.objects.filter(reward_model_version=VERSION).exists()
    for index in pending[1:]:
        bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=index)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.params["load_finished"] == "attached"
    assert score_partitions.table_state(name) == "attached"
    _assert_close(_score_values(VERSION), scored_pool["expected"])
    assert {_partition_of(c) for c in _score_values(VERSION)} == {name}
    # The CLIPScore rows (version 0, written by today's path) stay in the default partition.
    some = scored_pool["captions"]["shard1"][0]
    assert Score.objects.get(caption_id=some, reward_model_version=0)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM ONLY scoring_score_default WHERE reward_model_version = %s", [VERSION]
        )
        assert cursor.fetchone()[0] == 0
    # A forced rerun of a shard now upserts into the attached partition: replaced, never doubled.
    shard = scored_pool["shards"][0].pk
    ScoringRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING)
    ScoringChunk.objects.filter(run=run, index=shard).update(done=False)
    assert bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=shard) == "scored"
    scores = Score.objects.filter(reward_model_version=VERSION)
    assert not scores.values("caption_id").annotate(n=Count("id")).filter(n__gt=1).exists()
    _assert_close(_score_values(VERSION), scored_pool["expected"])
    # Deleting a caption cascades into the partition like anywhere else.
    Caption.objects.filter(pk=some).delete()
    assert not Score.objects.filter(caption_id=some).exists()


@requires_partitions
def test_a_version_with_rows_already_upserts_into_the_table(scored_pool, tiny_clip_name):
    scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, enqueue=False))
    run = bulk_rescore.bulk_rescore_sync(run=_start(tiny_clip_name))
    assert "load_table" not in run.params
    assert {_partition_of(c) for c in _score_values(VERSION)} == {"scoring_score_default"}


@requires_partitions
def test_a_worker_that_died_before_the_attach_is_finished_by_the_resume(
    scored_pool,
    tiny_clip_name,
    eager_celery,
    django_capture_on_commit_callbacks,
    monkeypatch,
    client,
    admin_user,
):
    run = _start(tiny_clip_name)
    pending = bulk_rescore.bulk_rescore_plan(run=run)
    real_finish = bulk_rescore.bulk_rescore_finish
    monkeypatch.setattr(bulk_rescore, "bulk_rescore_finish", lambda **kw: None)  # killed right after
    for index in pending:
        bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=index)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.chunks_done == run.chunks_total
    assert not Score.objects.filter(reward_model_version=VERSION).exists()
    monkeypatch.setattr(bulk_rescore, "bulk_rescore_finish", real_finish)
    # The run's page says so, and offers the admin the finish.
    client.force_login(admin_user)
    page = client.get(reverse("scoring:run_detail", args=[run.pk])).content.decode()
    assert "is not attached yet" in page and "Finish: index and attach its scores" in page
    with django_capture_on_commit_callbacks(execute=True):
        assert scoring_run_resume(run=run) == []  # what the stale-run sweep calls
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.params["load_finished"] == "attached"
    assert set(run.params["finish_steps"]) >= {"unique key", "reward index", "attach"}
    page = client.get(reverse("scoring:run_detail", args=[run.pk])).content.decode()
    assert f"in partition <code>scoring_score_r{run.pk}</code>" in page
    _assert_close(_score_values(VERSION), scored_pool["expected"])
    # A second finish (a redelivered task) changes nothing.
    assert bulk_rescore.bulk_rescore_finish(run_id=run.pk).status == RunStatus.SUCCEEDED
    assert Score.objects.filter(reward_model_version=VERSION).count() == len(scored_pool["expected"])


@requires_partitions
def test_scores_of_captions_deleted_during_the_load_are_dropped_at_the_attach(
    scored_pool, tiny_clip_name, monkeypatch
):
    run = _start(tiny_clip_name)
    pending = bulk_rescore.bulk_rescore_plan(run=run)
    real_finish = bulk_rescore.bulk_rescore_finish
    monkeypatch.setattr(bulk_rescore, "bulk_rescore_finish", lambda **kw: None)
    for index in pending:
        bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=index)
    gone = scored_pool["captions"]["shard2"][0]
    Caption.objects.filter(pk=gone).delete()  # its row in the load table is not cascaded
    run = real_finish(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED and run.params["load_finished"] == "attached"
    expected = {c: v for c, v in scored_pool["expected"].items() if c != gone}
    _assert_close(_score_values(VERSION), expected)


@requires_partitions
def test_a_chunk_forced_to_run_again_during_the_load_is_not_doubled(scored_pool, tiny_clip_name):
    run = _start(tiny_clip_name)
    pending = bulk_rescore.bulk_rescore_plan(run=run)
    shard = scored_pool["shards"][0].pk
    bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=shard)
    ScoringChunk.objects.filter(run=run, index=shard).update(done=False)  # reset by hand
    ScoringRun.objects.filter(pk=run.pk).update(chunks_done=0, done=0)
    for index in pending:
        bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=index)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.params["load_finished"] == "attached"
    scores = Score.objects.filter(reward_model_version=VERSION)
    assert not scores.values("caption_id").annotate(n=Count("id")).filter(n__gt=1).exists()
    _assert_close(_score_values(VERSION), scored_pool["expected"])


@requires_partitions
def test_a_cancelled_run_keeps_the_chunks_it_committed(
    scored_pool, tiny_clip_name, eager_celery, django_capture_on_commit_callbacks
):
    run = _start(tiny_clip_name)
    pending = bulk_rescore.bulk_rescore_plan(run=run)
    bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=pending[1])
    run.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        assert scoring_run_cancel(run=run)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.params["load_finished"] == "attached"
    shard_captions = set(Caption.objects.filter(image__shard_id=pending[1]).values_list("id", flat=True))
    got = set(_score_values(VERSION))
    assert (
        got
        and got <= shard_captions
        and Score.objects.filter(reward_model_version=VERSION).count() == run.done
    )
    # Chunks still in flight find the run cancelled and write nothing.
    assert bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=pending[2]) == "run cancelled"


@requires_partitions
def test_rows_written_meanwhile_are_merged_not_doubled(scored_pool, tiny_clip_name):
    run = _start(tiny_clip_name)
    pending = bulk_rescore.bulk_rescore_plan(run=run)
    # Another run writes the same version into the parent while the bulk run loads its table.
    scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, enqueue=False))
    for index in pending:
        bulk_rescore.bulk_rescore_chunk(run_id=run.pk, chunk_index=index)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.params["load_finished"] == "merged"
    assert score_partitions.table_state(run.params["load_table"]) == "missing"
    scores = Score.objects.filter(reward_model_version=VERSION)
    assert not scores.values("caption_id").annotate(n=Count("id")).filter(n__gt=1).exists()
    _assert_close(_score_values(VERSION), scored_pool["expected"])


@requires_partitions
def test_deleting_a_loaded_version_drops_its_partition(scored_pool, tiny_clip_name):
    run = bulk_rescore.bulk_rescore_sync(run=_start(tiny_clip_name))
    name = run.params["load_table"]
    key = (run.encoder, run.encoder_fingerprint, VERSION)
    removed = score_partitions.score_version_delete(key, tables=[name])
    assert removed == len(scored_pool["expected"])
    assert score_partitions.table_state(name) == "missing"
    assert not Score.objects.filter(reward_model_version=VERSION).exists()
    assert Score.objects.filter(reward_model_version=0).exists()

"""The shard pass (scoring.shard_pass) on a small img2dataset-style pool indexed in place: one decode per
image feeds the checks, phash, size, embeddings and CLIPScore; cleaning and scoring then decode nothing."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db.models import Count

from pool import images as pool_images
from pool import inspection
from pool.importing import pool_import
from pool.models import Caption, Image, ImageStatus, RunStatus, Shard
from scoring import pipeline
from scoring.models import Score, ShardPassRun, ShardPassShard
from scoring.shard_features import shard_features_ids, shard_features_read, shard_features_root
from scoring.shard_pass import ShardPassError, shard_pass_shard, shard_pass_start, shard_pass_sync
from tests.conftest import image_bytes
from tests.pool.conftest import i2d_row, truncated_jpeg, write_i2d_webdataset
from tests.scoring.conftest import pool_caption

pytestmark = pytest.mark.django_db

PER_SHARD = 6


@pytest.fixture(autouse=True)
def _no_loader_processes(monkeypatch):
    # Decodes happen in this process, where the tests count them.
    monkeypatch.setenv("LOUPE_SCORING_LOADER_WORKERS", "0")


def _i2d_pool(folder: Path, shards: int = 2, bad: dict[str, bytes] | None = None) -> list[Path]:
    """``shards`` img2dataset shards of PER_SHARD samples; ``bad`` replaces some keys' image bytes."""
    tars = []
    for s in range(shards):
        rows, images = [], {}
        for i in range(s * PER_SHARD, (s + 1) * PER_SHARD):
            key = f"{i:09d}"
            rows.append(i2d_row(key, f"{i:032x}", f"a photo number {i}"))
            images[key] = (bad or {}).get(key) or image_bytes(96, 80, seed=200 + i)
        tars.append(write_i2d_webdataset(folder, f"{s:05d}", rows, images))
    run = pool_import(source=str(folder))
    assert run.status == RunStatus.SUCCEEDED, run.error
    return tars


@pytest.fixture
def pool_dir(tmp_path) -> Path:
    folder = tmp_path / "source"
    _i2d_pool(folder)
    # A second caption on one image, and a text two images share: distinct texts are embedded once.
    first = Image.objects.order_by("pk").first()
    pool_caption(first, "a second caption of the first picture")
    pool_caption(Image.objects.order_by("pk")[1], "a photo number 0")
    return folder


def _decode_counter(monkeypatch) -> list[int]:
    calls = [0]
    real = pool_images.image_decode

    def counted(data, **kwargs):
        calls[0] += 1
        return real(data, **kwargs)

    monkeypatch.setattr(pool_images, "image_decode", counted)
    return calls


def _pass(encoder: str, **kwargs) -> ShardPassRun:
    run = shard_pass_start(encoder=encoder, enqueue=False, **kwargs)
    return shard_pass_sync(run=run)


def _one_score_per_pair(encoder: str) -> None:
    scores = Score.objects.filter(encoder=encoder, reward_model_version=0)
    assert set(scores.values_list("caption_id", flat=True)) == set(
        Caption.objects.values_list("id", flat=True)
    )
    assert not scores.values("caption_id").annotate(n=Count("id")).filter(n__gt=1).exists()


def test_each_image_is_decoded_once_and_every_pair_scored(pool_dir, tiny_clip_name, monkeypatch):
    decodes = _decode_counter(monkeypatch)
    run = _pass(tiny_clip_name)
    assert run.status == RunStatus.SUCCEEDED, run.error
    n_images, n_pairs = Image.objects.count(), Caption.objects.count()
    assert decodes[0] == n_images == 2 * PER_SHARD
    assert (run.shards_done, run.shards_total, run.done, run.total) == (2, 2, n_pairs, n_pairs)
    assert (run.images_done, run.unreadable_images, run.failed_pairs) == (n_images, 0, 0)
    _one_score_per_pair(tiny_clip_name)
    assert not Score.objects.filter(clipscore__isnull=True).exists()
    # The Image rows carry what pool.inspection would have written.
    for image in Image.objects.all():
        from pool.images import image_inspect
        from pool.locate import image_read

        info = image_inspect(image_read(image))
        assert image.inspected_at is not None and image.status == ImageStatus.OK
        assert (image.phash, image.width, image.height, image.format) == (
            info.phash,
            info.width,
            info.height,
            info.format,
        )


def test_the_by_shard_features_match_the_cache_and_the_scores(pool_dir, tiny_clip_name):
    from scoring.encoders import encoder_load
    from scoring.features import embedding_cache_for

    _pass(tiny_clip_name)
    encoder = encoder_load(tiny_clip_name)
    root = settings.EMBEDDING_CACHE_DIR
    assert shard_features_ids(root, encoder.name, encoder.fingerprint) == sorted(
        Shard.objects.values_list("pk", flat=True)
    )
    cache = embedding_cache_for(encoder)
    for shard in Shard.objects.all():
        feats = shard_features_read(
            shard_features_root(root, encoder.name, encoder.fingerprint) / str(shard.pk)
        )
        images = list(Image.objects.filter(shard=shard).order_by("pk"))
        assert list(feats.image_ids) == [i.pk for i in images]
        captions = list(Caption.objects.filter(image__shard=shard).order_by("pk"))
        assert list(feats.caption_ids) == [c.pk for c in captions]
        cached, found = cache.get_images([i.sha256 for i in images])
        assert found.all() and np.array_equal(np.asarray(feats.images), cached)
        img_rows, txt_rows = feats.pair_arrays()
        d = encoder.embed_dim
        cos = np.einsum("nd,nd->n", img_rows[:, :d].astype(np.float32), txt_rows[:, :d].astype(np.float32))
        by_caption = dict(Score.objects.filter(caption__in=captions).values_list("caption_id", "cosine"))
        assert np.allclose(cos, [by_caption[c.pk] for c in captions], atol=1e-5)


def test_cleaning_after_the_pass_decodes_nothing(pool_dir, tiny_clip_name, monkeypatch):
    from pool.cleaning_runs import pool_clean

    _pass(tiny_clip_name)
    calls = []
    monkeypatch.setattr(inspection, "_inspect", lambda values: calls.append(values))
    run = pool_clean()
    assert run.status == RunStatus.SUCCEEDED and calls == []
    assert run.summary["inspected"] == {}


def test_scoring_after_the_pass_decodes_nothing_and_gives_the_same_scores(
    pool_dir, tiny_clip_name, monkeypatch
):
    from scoring.inference import scoring_run_sync
    from scoring.services import scoring_run_start

    _pass(tiny_clip_name)
    before = dict(Score.objects.values_list("caption_id", "clipscore"))
    reads = []
    real = pipeline.ImageFiles.__getitem__
    monkeypatch.setattr(pipeline.ImageFiles, "__getitem__", lambda self, i: reads.append(i) or real(self, i))
    run = scoring_run_sync(
        run=scoring_run_start(encoder=tiny_clip_name, reward_model_version=0, enqueue=False)
    )
    assert run.status == RunStatus.SUCCEEDED and reads == []
    after = dict(Score.objects.values_list("caption_id", "clipscore"))
    assert after.keys() == before.keys()
    assert all(abs(after[k] - before[k]) < 1e-6 for k in before)
    _one_score_per_pair(tiny_clip_name)


def test_the_old_two_pass_path_decodes_each_image_twice(pool_dir, tiny_clip_name, monkeypatch):
    """The baseline the benchmark compares with: cleaning's inspection, then scoring's embedding."""
    from pool.inspection import images_inspect
    from scoring.inference import scoring_run_sync
    from scoring.services import scoring_run_start

    decodes = _decode_counter(monkeypatch)
    reads = []
    real = pipeline.ImageFiles.__getitem__
    monkeypatch.setattr(pipeline.ImageFiles, "__getitem__", lambda self, i: reads.append(i) or real(self, i))
    images_inspect()
    scoring_run_sync(run=scoring_run_start(encoder=tiny_clip_name, reward_model_version=0, enqueue=False))
    assert decodes[0] == len(reads) == Image.objects.count()


def test_a_rerun_replaces_results_and_never_double_counts(pool_dir, tiny_clip_name):
    first = _pass(tiny_clip_name)
    shard = Shard.objects.order_by("pk").first()
    # A redelivered task of a finished shard does nothing.
    assert shard_pass_shard(run_id=first.pk, shard_id=shard.pk) == "run succeeded"
    Score.objects.filter(caption__image__shard=shard).update(clipscore=-1.0)
    second = _pass(tiny_clip_name, shard_ids=[shard.pk])
    assert second.status == RunStatus.SUCCEEDED
    assert (second.shards_total, second.done) == (1, Caption.objects.filter(image__shard=shard).count())
    assert not Score.objects.filter(clipscore=-1.0).exists()
    _one_score_per_pair(tiny_clip_name)
    # Within a run a shard counts once even when its task arrives twice.
    row = ShardPassShard.objects.get(run=second, shard=shard)
    assert row.done and row.pairs == second.done


def test_a_shard_done_in_a_running_run_is_skipped(pool_dir, tiny_clip_name):
    from scoring.shard_pass import shard_pass_begin

    run = shard_pass_start(encoder=tiny_clip_name, enqueue=False)
    shard_pass_begin(run=run)
    shard = Shard.objects.order_by("pk").first()
    assert shard_pass_shard(run_id=run.pk, shard_id=shard.pk) == "passed"
    assert shard_pass_shard(run_id=run.pk, shard_id=shard.pk) == "already done"
    run.refresh_from_db()
    assert run.shards_done == 1 and run.done == Caption.objects.filter(image__shard=shard).count()


def test_an_unreadable_image_is_marked_and_its_pairs_get_an_error_score(tmp_path, tiny_clip_name):
    bad_key = f"{2:09d}"
    _i2d_pool(tmp_path / "source", shards=1, bad={bad_key: truncated_jpeg()})
    rejected = Caption.objects.get(key=f"{3:09d}").image
    Image.objects.filter(pk=rejected.pk).update(status=ImageStatus.REJECTED, status_reason="by a curator")
    run = _pass(tiny_clip_name)
    assert run.status == RunStatus.SUCCEEDED
    assert (run.unreadable_images, run.failed_pairs) == (1, 1)
    image = Caption.objects.get(key=bad_key).image
    assert image.status == ImageStatus.UNREADABLE and "corrupt" in image.status_reason
    assert image.inspected_at is not None and image.phash == ""
    score = Score.objects.get(caption__image=image)
    assert score.clipscore is None and "corrupt" in score.error
    rejected.refresh_from_db()
    assert rejected.status == ImageStatus.REJECTED and rejected.phash
    _one_score_per_pair(tiny_clip_name)


def test_an_image_whose_bytes_changed_since_indexing_is_unreadable(tmp_path, tiny_clip_name):
    tar = _i2d_pool(tmp_path / "source", shards=1)[0]
    image = Caption.objects.get(key=f"{1:09d}").image
    data = bytearray(tar.read_bytes())
    # Same length, other bytes: the tar is rewritten in place, the index still points there.
    data[image.offset + 200 : image.offset + 210] = bytes(10)
    tar.write_bytes(bytes(data))
    run = _pass(tiny_clip_name)
    assert run.status == RunStatus.SUCCEEDED and run.unreadable_images == 1
    image.refresh_from_db()
    assert image.status == ImageStatus.UNREADABLE and "sha256 differs" in image.status_reason
    assert Image.objects.filter(status=ImageStatus.OK, inspected_at__isnull=False).count() == PER_SHARD - 1


def test_a_shard_whose_file_is_gone_is_reported_not_marked_unreadable(tmp_path, tiny_clip_name):
    tars = _i2d_pool(tmp_path / "source", shards=2)
    os.remove(tars[0])
    run = _pass(tiny_clip_name)
    assert run.status == RunStatus.SUCCEEDED
    assert (run.shards_done, run.shards_failed) == (2, 1)
    row = ShardPassShard.objects.get(run=run, shard__uri=str(tars[0]))
    assert "cannot be read" in row.error
    assert not Image.objects.filter(status=ImageStatus.UNREADABLE).exists()
    assert run.done == run.total == PER_SHARD


def test_start_refuses_unknown_shards_and_judges(pool_dir, tiny_clip_name):
    with pytest.raises(ShardPassError, match="No pool shard with id 999"):
        shard_pass_start(encoder=tiny_clip_name, shard_ids=[999], enqueue=False)
    with pytest.raises(ShardPassError, match="multimodal judge"):
        shard_pass_start(encoder="vlm:/nowhere", enqueue=False)
    assert not ShardPassRun.objects.exists()


def test_weights_changed_after_start_fail_the_run(pool_dir, tmp_path):
    from tests.scoring.tiny_clip import tiny_clip_encoder_name

    name = tiny_clip_encoder_name(tmp_path / "clip")
    run = shard_pass_start(encoder=name, enqueue=False)
    weights = Path(name.rsplit(":", 1)[1])
    weights.write_bytes(weights.read_bytes() + b"\0")
    run = shard_pass_sync(run=run)
    assert run.status == RunStatus.FAILED and "changed after shard pass" in run.error
    assert not Score.objects.exists()


def test_the_command_runs_in_process_with_progress(pool_dir, tiny_clip_name):
    out, err = io.StringIO(), io.StringIO()
    call_command("shard_pass", "--encoder", tiny_clip_name, "--sync", stdout=out, stderr=err)
    n = Caption.objects.count()
    assert f"succeeded: 2/2 shards, {n}/{n} pairs" in out.getvalue()
    assert "Shard pass" in err.getvalue()
    with pytest.raises(CommandError, match="--shards takes shard ids"):
        call_command("shard_pass", "--shards", "a,b", "--sync", stdout=out, stderr=err)


def test_the_stale_sweep_resumes_a_run_whose_worker_went_silent(
    pool_dir, tiny_clip_name, eager_celery, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    from loop.stale import runs_stale_recover
    from scoring.shard_pass import shard_pass_begin

    run = shard_pass_start(encoder=tiny_clip_name, enqueue=False)
    shard_pass_begin(run=run)
    first = Shard.objects.order_by("pk").first()
    shard_pass_shard(run_id=run.pk, shard_id=first.pk)
    ShardPassRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        lines = runs_stale_recover(older_than=timedelta(minutes=1))
    assert any(line.startswith(f"shard pass run {run.pk}: resumed") for line in lines)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.stale_resumes == 1 and run.shards_done == 2
    _one_score_per_pair(tiny_clip_name)


def test_the_run_is_listed_on_the_console_jobs_page(pool_dir, tiny_clip_name, client, admin_user):
    run = _pass(tiny_clip_name)
    client.force_login(admin_user)
    page = client.get("/console/jobs/?kind=shard_pass")
    assert page.status_code == 200 and f"Shard pass {run.pk}" in page.content.decode()
    detail = client.get(f"/console/jobs/shard_pass/{run.pk}/")
    assert detail.status_code == 200


def test_features_by_shard_give_the_cached_rows_without_reading_an_image(
    pool_dir, tiny_clip_name, monkeypatch
):
    """What active-learning selection reads at scale: rows by caption id from the by-shard files."""
    from scoring.features import caption_features, caption_features_by_shard

    _pass(tiny_clip_name)
    ids = list(Caption.objects.order_by("pk").values_list("id", flat=True))
    image, text, cached_ids = caption_features(encoder=tiny_clip_name, caption_ids=ids)
    decodes = _decode_counter(monkeypatch)
    by_shard = caption_features_by_shard(encoder=tiny_clip_name, caption_ids=ids + [10**9])
    assert decodes[0] == 0 and set(by_shard) == set(cached_ids)
    for i, cid in enumerate(cached_ids):
        np.testing.assert_allclose(by_shard[cid][0], image[i], atol=1e-3)
        np.testing.assert_allclose(by_shard[cid][1], text[i], atol=1e-3)


def test_a_pool_rescore_is_bulk_once_the_pass_left_features(pool_dir, tiny_clip_name, monkeypatch):
    from scoring.inference import scoring_run_sync
    from scoring.services import pool_rescore_start

    before = pool_rescore_start(encoder=tiny_clip_name, reward_model_version=0, enqueue=False)
    assert not before.params.get("bulk")  # no features yet: an ordinary scoring run
    before.delete()
    _pass(tiny_clip_name)
    run = pool_rescore_start(encoder=tiny_clip_name, reward_model_version=0, enqueue=False)
    assert run.params.get("bulk") is True
    decodes = _decode_counter(monkeypatch)
    run = scoring_run_sync(run=run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert decodes[0] == 0
    _one_score_per_pair(tiny_clip_name)

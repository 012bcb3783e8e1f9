"""A filter run's downstream check: the held-out set, the training sets, the stored result, the command,
the page and the export manifest. Features are synthetic and served in place of the embedding cache:
each image is a noisy view of a latent vector, its good caption another view of the same latent, its bad
caption a view of an unrelated one, so a subset of good captions trains a model that retrieves."""

from __future__ import annotations

import hashlib
import json
import uuid
from io import StringIO

import numpy as np
import pytest
import torch
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse

import curate.downstream_views
import scoring.features
from annotate.models import Campaign, Judgment, Task
from curate.downstream import (
    DownstreamError,
    downstream_plan,
    filter_run_downstream_evaluate,
    filter_run_downstream_queue,
    judged_best_captions,
)
from curate.exports import export_create, export_execute
from curate.filtering import FilterRule, filter_run_create, filter_run_execute
from curate.models import FilterRun
from pool.models import Caption, Image, text_sha256
from scoring.models import Score

pytestmark = pytest.mark.django_db

ENCODER, VERSION = "test:encoder", 1
N_IMAGES, N_JUDGED = 120, 40
LATENT, IMAGE_DIM, TEXT_DIM = 8, 24, 16
FAST = {"steps": 80, "batch_size": 32, "proj_dim": 16}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class SyntheticPool:
    """Images with one good and one bad caption; reward and cosine favour the good one."""

    def __init__(self):
        rng = np.random.default_rng(0)
        to_image, to_text = rng.normal(size=(LATENT, IMAGE_DIM)), rng.normal(size=(LATENT, TEXT_DIM))
        latent = rng.normal(size=(N_IMAGES, LATENT))
        unrelated = rng.normal(size=(N_IMAGES, LATENT))
        images = Image.objects.bulk_create(
            [
                Image(sha256=hashlib.sha256(f"image {i}".encode()).hexdigest(), width=64, height=64, file="")
                for i in range(N_IMAGES)
            ]
        )
        self.images = list(Image.objects.order_by("id"))[-len(images) :]
        self.good, self.bad, self.features = [], [], {}
        for i, image in enumerate(self.images):
            image_feats = latent[i] @ to_image + 0.5 * rng.normal(size=IMAGE_DIM)
            for kind, source in (("good", latent[i]), ("bad", unrelated[i])):
                text = f"{kind} caption of image {i}"
                caption = Caption.objects.create(image=image, text=text, text_sha256=text_sha256(text))
                getattr(self, kind).append(caption.pk)
                text_feats = source @ to_text + 0.5 * rng.normal(size=TEXT_DIM)
                self.features[caption.pk] = (image_feats.astype(np.float32), text_feats.astype(np.float32))
                Score.objects.create(
                    caption=caption,
                    encoder=ENCODER,
                    reward_model_version=VERSION,
                    reward=1.0 + rng.random() if kind == "good" else rng.random() - 1.0,
                    cosine=0.3 if kind == "good" else 0.1,
                )

    def caption_features(self, *, encoder: str, caption_ids):
        ids = [int(c) for c in caption_ids if int(c) in self.features]
        if not ids:
            return np.zeros((0, IMAGE_DIM), np.float32), np.zeros((0, TEXT_DIM), np.float32), []
        return (
            np.stack([self.features[c][0] for c in ids]),
            np.stack([self.features[c][1] for c in ids]),
            ids,
        )

    def judge(self, image_index: int, rankings: list[list[list[int]]]) -> None:
        campaign = Campaign.objects.first() or Campaign.objects.create(name="judged")
        task = Task.objects.create(campaign=campaign, image=self.images[image_index])
        for n, ranking in enumerate(rankings):
            user, _ = User.objects.get_or_create(username=f"judge-{n}")
            Judgment.objects.create(
                task=task, user=user, ranking=ranking, ratings={}, client_key=uuid.uuid4()
            )


@pytest.fixture
def pool(monkeypatch):
    synthetic = SyntheticPool()
    monkeypatch.setattr(scoring.features, "caption_features", synthetic.caption_features)
    for i in range(N_JUDGED):
        synthetic.judge(i, [[[synthetic.good[i]], [synthetic.bad[i]]]])
    return synthetic


def _run(rule: FilterRule) -> FilterRun:
    return filter_run_execute(
        run=filter_run_create(encoder=ENCODER, reward_model_version=VERSION, rule=rule, confirm=True)
    )


@pytest.fixture
def good_run(pool):
    """Top 50% by reward: exactly the good captions."""
    return _run(FilterRule(top_percent=50))


def test_held_out_set_is_each_judged_tasks_best_caption(pool, good_run):
    plan = downstream_plan(run=good_run, min_held_out=N_JUDGED)
    assert plan.held_out.caption_ids.tolist() == sorted(pool.good[:N_JUDGED])
    assert (plan.held_out.judged, plan.held_out.proxy, plan.held_out.source) == (N_JUDGED, 0, "judgments")


def test_held_out_images_are_in_no_training_set(pool, good_run):
    plan = downstream_plan(run=good_run, min_held_out=N_JUDGED)
    held_out_captions = set(pool.good[:N_JUDGED] + pool.bad[:N_JUDGED])
    training = [plan.kept, plan.pool] + [plan.random_subset(size=len(plan.kept), seed=s) for s in range(3)]
    for ids in training:
        assert len(ids) and not held_out_captions & set(ids.tolist())
    assert set(plan.kept.tolist()) == set(pool.good[N_JUDGED:])
    assert plan.pool_total == 2 * (N_IMAGES - N_JUDGED)


def test_a_held_out_captions_text_on_another_image_is_in_no_training_set(pool):
    text = "good caption of image 0"  # held out: image 0 is judged
    reused = Caption.objects.create(image=pool.images[-1], text=text, text_sha256=text_sha256(text))
    pool.features[reused.pk] = pool.features[pool.good[-1]]
    Score.objects.create(
        caption=reused, encoder=ENCODER, reward_model_version=VERSION, reward=5.0, cosine=0.3
    )
    plan = downstream_plan(run=_run(FilterRule(top_percent=50)), min_held_out=N_JUDGED)
    assert reused.pk not in plan.kept.tolist() and reused.pk not in plan.pool.tolist()
    assert plan.same_text == 1 and pool.good[-1] in plan.kept.tolist()


def test_the_best_caption_is_the_lowest_mean_tier_over_judgments(pool):
    good, bad = pool.good[N_JUDGED], pool.bad[N_JUDGED]
    pool.judge(N_JUDGED, [[[good], [bad]], [[bad], [good]], [[good, bad]]])
    assert judged_best_captions()[pool.images[N_JUDGED].pk] == good


def test_too_few_judgments_are_topped_up_by_the_proxy_and_the_result_says_so(pool, good_run):
    plan = downstream_plan(run=good_run, min_held_out=N_JUDGED + 10)
    assert (plan.held_out.judged, plan.held_out.proxy, plan.held_out.source) == (
        N_JUDGED,
        10,
        "judgments+proxy",
    )
    proxy = set(plan.held_out.caption_ids.tolist()) - set(pool.good[:N_JUDGED])
    assert proxy <= set(pool.good)  # the proxy takes each image's highest-cosine caption
    assert any("proxy" in note for note in plan.notes)


def test_the_pool_is_capped_and_the_plan_says_so(pool, good_run):
    plan = downstream_plan(run=good_run, min_held_out=N_JUDGED, pool_cap=30)
    assert len(plan.kept) == 30 and plan.kept_total == N_IMAGES - N_JUDGED
    assert any("sample" in note for note in plan.notes)


def test_evaluation_stores_the_result_and_the_filtered_subset_beats_random(pool, good_run):
    result = filter_run_downstream_evaluate(run=good_run, seeds=2, config=FAST, min_held_out=N_JUDGED)
    good_run.refresh_from_db()
    stored = good_run.summary["downstream"]
    assert stored == json.loads(json.dumps(result)) and stored["status"] == "succeeded"
    assert good_run.summary["rule_text"]  # the run's own summary is kept
    subsets = stored["subsets"]
    assert subsets["kept"]["pairs"] == subsets["random"]["pairs"] == N_IMAGES - N_JUDGED
    assert subsets["pool"]["pairs"] == 2 * (N_IMAGES - N_JUDGED)
    assert len(subsets["kept"]["runs"]) == 2
    assert stored["held_out"] == {
        "pairs": N_JUDGED,
        "judged": N_JUDGED,
        "proxy": 0,
        "source": "judgments",
        "images_excluded_from_training": N_JUDGED,
        "same_text_pairs_excluded_from_training": 0,
    }
    assert stored["config"]["steps"] == FAST["steps"]
    # The random sample is half mismatched pairs: the model trained on it retrieves worse.
    for metric in ("i2t_r5", "t2i_r5"):
        assert subsets["kept"]["mean"][metric] > subsets["random"]["mean"][metric] + 0.1
        assert stored["kept_minus_random"][metric] > 0.1


def test_mismatched_pairs_train_worse_than_matched_pairs_of_the_same_size(pool):
    bad_run = _run(FilterRule(top_percent=None, reward_min=None, cosine_min=-1.0))
    # Keep only the bad captions: rewrite the kept file the way a bad rule would have.
    np.save(bad_run.kept_file, np.array(sorted(pool.bad), dtype=np.int64))
    good = filter_run_downstream_evaluate(
        run=_run(FilterRule(top_percent=50)), seeds=1, config=FAST, min_held_out=N_JUDGED
    )
    bad = filter_run_downstream_evaluate(run=bad_run, seeds=1, config=FAST, min_held_out=N_JUDGED)
    assert bad["subsets"]["kept"]["pairs"] == good["subsets"]["kept"]["pairs"]
    assert bad["subsets"]["kept"]["mean"]["i2t_r5"] < good["subsets"]["kept"]["mean"]["i2t_r5"] - 0.2


def test_a_failed_evaluation_is_stored_as_failed(pool, good_run, monkeypatch):
    def broken(**kwargs):
        raise OSError("cache unreadable")

    monkeypatch.setattr(scoring.features, "caption_features", broken)
    with pytest.raises(OSError):
        filter_run_downstream_evaluate(run=good_run, seeds=1, config=FAST, min_held_out=N_JUDGED)
    good_run.refresh_from_db()
    assert good_run.summary["downstream"]["status"] == "failed"
    assert "cache unreadable" in good_run.summary["downstream"]["error"]


def test_an_unfinished_run_is_refused(pool):
    run = filter_run_create(encoder=ENCODER, reward_model_version=VERSION, rule=FilterRule(top_percent=50))
    with pytest.raises(DownstreamError, match="queued"):
        filter_run_downstream_evaluate(run=run, seeds=1, config=FAST)


def test_the_command_prints_the_table_and_stores_it(pool, good_run, settings):
    settings.LOUPE_DOWNSTREAM_MIN_HELD_OUT = N_JUDGED
    out = StringIO()
    call_command("evaluate_filter_run", str(good_run.pk), "--seeds", "1", "--steps", "60", stdout=out)
    text = out.getvalue()
    assert "filter run's kept pairs" in text and "random pairs, same number" in text
    assert "whole usable pool" in text and "kept - random" in text
    assert f"Held out: {N_JUDGED} pairs ({N_JUDGED} judged best, 0 proxy)" in text
    good_run.refresh_from_db()
    assert good_run.summary["downstream"]["config"]["steps"] == 60


def test_the_command_names_a_missing_run(pool):
    with pytest.raises(Exception, match="No filter run 999"):
        call_command("evaluate_filter_run", "999")


def test_the_export_manifest_carries_the_downstream_result(pool, good_run, tmp_path):
    filter_run_downstream_evaluate(run=good_run, seeds=1, config=FAST, min_held_out=N_JUDGED)
    good_run.refresh_from_db()
    export = export_execute(export=export_create(kind="npy", filter_run=good_run, out=tmp_path / "npy"))
    manifest = json.loads((tmp_path / "npy" / "manifest.json").read_text())
    assert manifest["downstream"] == good_run.summary["downstream"] == export.manifest["downstream"]


@pytest.fixture
def queued_calls(monkeypatch):
    calls = []

    class Stub:
        @staticmethod
        def delay_on_commit(*args):
            calls.append(args)

    monkeypatch.setattr(curate.downstream_views, "filter_run_downstream_task", Stub)
    return calls


def test_an_admin_queues_the_check_once(client, admin_user, pool, good_run, queued_calls):
    client.force_login(admin_user)
    url = reverse("filters:downstream_start", args=[good_run.pk])
    assert client.post(url, {"seeds": "2"}).status_code == 302
    assert client.post(url, {"seeds": "2"}).status_code == 302
    assert queued_calls == [(good_run.pk, 2)]
    good_run.refresh_from_db()
    assert good_run.summary["downstream"]["status"] == "queued"


def test_a_curator_cannot_start_the_check(client, curator, pool, good_run, queued_calls):
    client.force_login(curator)
    assert client.post(reverse("filters:downstream_start", args=[good_run.pk])).status_code == 403
    assert queued_calls == []


def test_the_filters_page_shows_the_figures_and_the_button_to_admins(
    client, curator, admin_user, pool, good_run
):
    filter_run_downstream_evaluate(run=good_run, seeds=1, config=FAST, min_held_out=N_JUDGED)
    client.force_login(curator)
    page = client.get(reverse("filters:index")).content.decode()
    assert f'id="downstream-{good_run.pk}"' in page and "random pairs, same number" in page
    assert "Re-run downstream check" not in page
    client.force_login(admin_user)
    page = client.get(reverse("filters:index")).content.decode()
    assert reverse("filters:downstream_start", args=[good_run.pk]) in page


def test_a_stale_queued_check_can_be_queued_again(pool, good_run):
    good_run.summary = {"downstream": {"status": "running", "updated_at": "2020-01-01T00:00:00+00:00"}}
    good_run.save()
    assert filter_run_downstream_queue(run=good_run, seeds=3) is True


def test_kept_pairs_that_left_the_pool_since_the_run_still_count(pool, good_run):
    last = Caption.objects.get(pk=pool.good[-1])
    Image.objects.filter(pk=last.image_id).update(status="duplicate")
    plan = downstream_plan(run=good_run, min_held_out=N_JUDGED)
    assert last.pk in plan.kept.tolist() and last.pk not in plan.pool.tolist()
    assert len(plan.kept) == N_IMAGES - N_JUDGED

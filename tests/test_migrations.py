"""The layout move (flags, reviews, filter runs, exports -> curate; loop runs -> loop) keeps every row:
a database at the previous main's migrations, holding data, migrates forward and the new models read it."""

from __future__ import annotations

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [
    ("annotate", "0006_open_slots_index"),
    ("scoring", "0002_scoring_chunk"),
    ("training", "0001_initial"),
    ("curate", None),
    ("loop", None),
]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    # The state at those nodes (apps "unapplied" to None have no node of their own).
    return executor.loader.project_state([t for t in targets if t[1] is not None]).apps


def _latest():
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


@pytest.mark.django_db(transaction=True)
def test_rows_from_before_the_move_survive_it():
    old = _migrate(BEFORE)
    try:
        User = old.get_model("auth", "User")
        Image = old.get_model("pool", "Image")
        Caption = old.get_model("pool", "Caption")
        Campaign = old.get_model("annotate", "Campaign")
        user = User.objects.create(username="curator-before")
        image = Image.objects.create(sha256="a" * 64, file="x.png", width=8, height=8)
        caption = Caption.objects.create(image=image, text="a dog", text_sha256="b" * 64)
        campaign = Campaign.objects.create(name="before the move")
        old.get_model("annotate", "Flag").objects.create(
            caption=caption, reason="low_reward", details={"r": 1}
        )
        old.get_model("annotate", "Review").objects.create(caption=caption, decision="accept", reviewer=user)
        fr = old.get_model("scoring", "FilterRun").objects.create(
            encoder="e", rule={"top_percent": 30}, kept=7
        )
        old.get_model("scoring", "Export").objects.create(kind="npy", filter_run=fr, path="/tmp/x")
        old.get_model("training", "LoopRun").objects.create(campaign=campaign, step="gate")
        PeriodicTask = old.get_model("django_celery_beat", "PeriodicTask")
        Interval = old.get_model("django_celery_beat", "IntervalSchedule")
        every = Interval.objects.create(every=10, period="minutes")
        PeriodicTask.objects.create(
            name="loop tick", task="training.loop_tasks.loop_tick_task", interval=every
        )
        ContentType.objects.get_or_create(app_label="annotate", model="flag")
    finally:
        _migrate(_latest())

    from curate.models import Export, FilterRun, Flag, Review
    from django_celery_beat.models import PeriodicTask as CurrentPeriodicTask
    from loop.models import LoopRun

    flag = Flag.objects.get()
    assert (flag.caption.text, flag.reason, flag.details) == ("a dog", "low_reward", {"r": 1})
    assert Review.objects.get().reviewer.username == "curator-before"
    assert FilterRun.objects.get().kept == 7
    assert Export.objects.get().filter_run_id == FilterRun.objects.get().pk
    assert LoopRun.objects.get().campaign.name == "before the move"
    assert CurrentPeriodicTask.objects.get(name="loop tick").task == "loop.tasks.loop_tick_task"
    assert ContentType.objects.filter(app_label="curate", model="flag").exists()
    assert not ContentType.objects.filter(app_label="annotate", model="flag").exists()

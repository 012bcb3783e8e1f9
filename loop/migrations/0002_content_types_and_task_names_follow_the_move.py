"""After the move of flags, reviews, filter runs, exports (to curate) and loop runs (to loop):
content types follow their models, so permissions and admin history stay attached, and beat's
periodic tasks name the loop's tasks by their new module."""

from django.db import migrations

MOVED = [
    ("annotate", "flag", "curate"),
    ("annotate", "review", "curate"),
    ("scoring", "filterrun", "curate"),
    ("scoring", "export", "curate"),
    ("training", "looprun", "loop"),
]
TASKS = [
    ("training.loop_tasks.loop_tick_task", "loop.tasks.loop_tick_task"),
    ("training.loop_tasks.loop_step_task", "loop.tasks.loop_step_task"),
    ("annotate.review_tasks.flags_refresh_task", "curate.tasks.flags_refresh_task"),
    ("scoring.filter_tasks.filter_run_execute", "curate.tasks.filter_run_execute"),
    ("scoring.filter_tasks.export_execute", "curate.tasks.export_execute"),
]


def _move(apps, moves, tasks):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for old_app, model, new_app in moves:
        old = ContentType.objects.filter(app_label=old_app, model=model).first()
        if old is None:
            continue
        if ContentType.objects.filter(app_label=new_app, model=model).exists():
            # A migrate run stopped between the two apps' migrations already created the new one:
            # nothing points at the old row's permissions unless someone granted them by hand.
            continue
        old.app_label = new_app
        old.save(update_fields=["app_label"])
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for old_name, new_name in tasks:
        PeriodicTask.objects.filter(task=old_name).update(task=new_name)


def forwards(apps, schema_editor):
    _move(apps, MOVED, TASKS)


def backwards(apps, schema_editor):
    _move(apps, [(new, model, old) for old, model, new in MOVED], [(new, old) for old, new in TASKS])


class Migration(migrations.Migration):

    dependencies = [
        ("loop", "0001_initial"),
        ("training", "0002_looprun_moved_to_loop"),
        ("annotate", "0007_flag_review_moved_to_curate"),
        ("scoring", "0003_filterrun_export_moved_to_curate"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]

"""A real Celery worker process imports a WebDataset shard and cleans the pool; rows land in the DB."""

from __future__ import annotations

import pytest

from pool.models import Caption, CleaningRun, Image, ImportRun, RunStatus
from pool.tasks import cleaning_run_execute, import_run_execute
from tests.conftest import image_bytes, wait_for
from tests.pool.conftest import write_tar

pytestmark = [pytest.mark.system, pytest.mark.django_db(transaction=True)]


def finished(model, pk):
    def check():
        run = model.objects.get(pk=pk)
        return run if run.is_finished else None

    return check


def test_worker_imports_a_shard_then_cleans_the_pool(tmp_path, celery_worker_process, settings):
    media = tmp_path / "worker-media"
    settings.MEDIA_ROOT = media
    shard = write_tar(
        tmp_path / "shard-00000.tar",
        [
            ("a.jpg", image_bytes(96, 80, seed=21)),
            ("a.txt", b"a small copy"),
            ("b.jpg", image_bytes(384, 320, seed=21)),
            ("b.txt", b"the large original"),
            ("c.jpg", image_bytes(32, 32, seed=22)),
            ("c.txt", b"untitled"),
            ("d.jpg", b"not an image"),
            ("d.txt", b"broken"),
        ],
    )
    worker = celery_worker_process(queues="default", extra_env={"LOUPE_MEDIA_ROOT": str(media)})

    run = ImportRun.objects.create(source=str(shard), format="", params={})
    import_run_execute.delay(run.pk)
    run = wait_for(finished(ImportRun, run.pk), timeout=120, message=f"import run to finish\n{worker.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error or worker.log()
    assert run.summary["images_imported"] == 3
    assert run.summary["skipped"] == {"not_an_image": 1}
    assert set(Image.objects.values_list("source_key", flat=True)) == {"a", "b", "c"}
    assert Caption.objects.count() == 3
    # Indexed in place: every image points into the shard, nothing is copied.
    assert set(Image.objects.values_list("file", flat=True)) == {""}
    assert not media.exists() or not any(media.rglob("*.jpg"))

    cleaning = CleaningRun.objects.create(params={"min_side": 64, "hamming_radius": 6})
    cleaning_run_execute.delay(cleaning.pk)
    cleaning = wait_for(finished(CleaningRun, cleaning.pk), timeout=120, message="cleaning run to finish")
    assert cleaning.status == RunStatus.SUCCEEDED, cleaning.error
    statuses = dict(Image.objects.values_list("source_key", "status"))
    assert statuses == {"a": "near_duplicate", "b": "ok", "c": "low_res"}
    assert Caption.objects.get(image__source_key="c").status == "trivial"

    # Delivered again (e.g. after a worker restart): the finished run is left alone.
    import_run_execute.delay(run.pk)
    again = ImportRun.objects.create(source=str(shard), format="", params={})
    import_run_execute.delay(again.pk)
    again = wait_for(finished(ImportRun, again.pk), timeout=120, message="second import to finish")
    assert again.summary["already_present"] == 3 and again.summary["images_imported"] == 0
    assert Image.objects.count() == 3


def test_an_import_whose_worker_is_killed_is_resumed_by_the_stale_run_sweep(
    tmp_path, celery_worker_process, settings
):
    import time

    from loop.tasks import runs_stale_recover_task

    media = tmp_path / "worker-media"
    settings.MEDIA_ROOT = media
    members = []
    for i in range(400):
        members += [(f"{i:05d}.jpg", image_bytes(64, 48, seed=i)), (f"{i:05d}.txt", f"photo {i}".encode())]
    shard = write_tar(tmp_path / "shard-00000.tar", members)
    env = {"LOUPE_MEDIA_ROOT": str(media)}
    first = celery_worker_process(queues="default", extra_env=env)
    run = ImportRun.objects.create(source=str(shard), format="webdataset", params={"batch_size": 4})
    import_run_execute.delay(run.pk)
    wait_for(
        lambda: ImportRun.objects.get(pk=run.pk).done >= 20,
        timeout=120,
        interval=0.05,
        message=f"the first batches; worker log:\n{first.log()[-3000:]}",
    )
    first.kill()
    killed = ImportRun.objects.get(pk=run.pk)
    assert killed.status == RunStatus.RUNNING and killed.heartbeat_at is not None
    assert Image.objects.count() < 400

    # What beat does every minute, with the staleness shortened to seconds for the test.
    second = celery_worker_process(queues="default", extra_env=env)
    time.sleep(1.5)
    runs_stale_recover_task.delay(older_than_seconds=1)
    done = wait_for(
        finished(ImportRun, run.pk), timeout=180, message=f"import after the kill\n{second.log()}"
    )
    assert done.status == RunStatus.SUCCEEDED, done.error
    assert done.stale_resumes == 1 and "resumed" in done.log
    assert Image.objects.count() == 400 and Caption.objects.count() == 400

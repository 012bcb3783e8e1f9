"""Progress reports: a bar on a terminal, a line per 10% anywhere else (logs must not flood)."""

from __future__ import annotations

import io

from pool.progress import ProgressBar


def test_off_a_terminal_progress_is_a_line_per_ten_percent():
    stream = io.StringIO()
    bar = ProgressBar("Scoring", "pair", stream=stream)
    for done in range(0, 1001):
        bar(done, 1000)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "Scoring: 0% (0/1000 pair)"
    assert lines[-1] == "Scoring: 100% (1000/1000 pair)"
    assert len(lines) == 11 and "\r" not in stream.getvalue()


def test_a_job_that_stops_early_says_how_far_it_got():
    stream = io.StringIO()
    bar = ProgressBar("Import", "rec", stream=stream)
    bar(3, 0)  # no total known
    bar.close()
    assert stream.getvalue() == "Import: done (3 rec)\n"

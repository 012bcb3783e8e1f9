"""View helper shared by every app whose jobs are ``Run`` rows."""

from __future__ import annotations

from django.shortcuts import render


def run_progress_response(request, run):
    """The run's progress bar partial; while the run is unfinished it polls this same URL."""
    return render(request, "partials/progress.html", {"run": run, "poll_url": request.path})

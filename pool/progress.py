"""A terminal progress bar for management commands, fed by the ``progress(done, total)`` callbacks
that long-running services accept."""

from __future__ import annotations

from tqdm import tqdm


class ProgressBar:
    """Callable ``(done, total)``; the bar appears on the first report, once the total is known, so a
    job that fails before starting prints no empty bar. Call ``close()`` when the job ends."""

    def __init__(self, desc: str, unit: str, *, stream=None, disable: bool = False):
        self.desc, self.unit, self.stream, self.disable = desc, unit, stream, disable
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(
                desc=self.desc, unit=self.unit, total=total or None, disable=self.disable, file=self.stream
            )
        self.bar.total = total or None
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""A progress report for management commands, fed by the ``progress(done, total)`` callbacks that
long-running services accept.

On a terminal it is a tqdm bar. Anywhere else (a log file, ``make demo`` under honcho, CI) a bar's
carriage returns become one line per refresh and flood the log, so it writes a plain line at every
10% instead: ``Rasterising clip art: 40% (52/130 img)``.
"""

from __future__ import annotations

import sys


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """Callable ``(done, total)``; nothing appears until the first report, once the total is known, so a
    job that fails before starting prints no empty bar. Call ``close()`` when the job ends."""

    def __init__(self, desc: str, unit: str, *, stream=None, disable: bool = False, step_percent: int = 10):
        self.desc, self.unit, self.disable = desc, unit, disable
        self.stream = stream if stream is not None else sys.stderr
        self.step = max(1, int(step_percent))
        self.terminal = _is_terminal(self.stream)
        self.bar = None
        self._last_step = -1
        self._done = 0
        self._total = 0

    def __call__(self, done: int, total: int) -> None:
        if self.disable:
            return
        self._done, self._total = done, total
        if self.terminal:
            self._tqdm(done, total)
            return
        if not total:
            return  # no share to report yet; the closing line says how many were done
        reached = min(100, int(100 * done / total)) // self.step * self.step
        if reached > self._last_step:
            self._last_step = reached
            self._line(f"{reached}%")

    def _tqdm(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(desc=self.desc, unit=self.unit, total=total or None, file=self.stream)
        self.bar.total = total or None
        self.bar.n = done
        self.bar.refresh()

    def _line(self, share: str) -> None:
        counts = f"{self._done}/{self._total}" if self._total else str(self._done)
        self.stream.write(f"{self.desc}: {share} ({counts} {self.unit})\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.disable and not self.terminal and self._last_step < 100 and (self._done or self._total):
            self._line("done")

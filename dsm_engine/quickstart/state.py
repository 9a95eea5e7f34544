"""Resumable run state: one completion marker per stage, written atomically when it is done.

Layout under the run folder ``DIR``::

    DIR/quickstart.json          the settings of the run (budget, data dir); a rerun must match
    DIR/stages/<stage>.done.json  {"stage", "wall_s", "cpu_s", "finished", "info": {...}}

A marker exists only once its stage has finished (temp file + ``os.replace``), so a run killed
at any moment leaves either no marker or a complete one; rerunning skips marked stages and
lets the unmarked one resume from its own state (datatrove completion markers, the trainers'
``resume=auto`` checkpoints, the evaluator's appended samples).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class QuickstartError(RuntimeError):
    """The run folder cannot be used as asked, or a stage failed (message says which)."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunState:
    """Completion markers and settings of one quickstart run folder."""

    SETTINGS = "quickstart.json"

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.stages_dir = self.out / "stages"

    def marker(self, stage: str) -> Path:
        return self.stages_dir / f"{stage}.done.json"

    def done(self, stage: str) -> dict[str, Any] | None:
        """The marker of ``stage`` if it finished, else None."""
        path = self.marker(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def mark(self, stage: str, *, wall_s: float, cpu_s: float, info: dict[str, Any]) -> None:
        """Record that ``stage`` finished (atomically)."""
        record = {
            "stage": stage,
            "wall_s": round(wall_s, 3),
            "cpu_s": round(cpu_s, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "info": info,
        }
        atomic_write_text(self.marker(stage), json.dumps(record, indent=1, default=str) + "\n")

    def check_settings(self, settings: dict[str, Any]) -> bool:
        """Write ``settings`` on a fresh run; on a rerun, raise if they differ. Returns
        True when resuming an existing run."""
        path = self.out / self.SETTINGS
        if path.is_file():
            old = json.loads(path.read_text())
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            if changed:
                raise QuickstartError(
                    f"{self.out} holds a quickstart run with other settings "
                    f"({', '.join(changed)}); rerun with the same options to resume it, "
                    "or use another --out"
                )
            return True
        if self.out.exists() and any(p.name != "logs" for p in self.out.iterdir()):
            raise QuickstartError(
                f"{self.out} is not empty and holds no quickstart run; use another --out"
            )
        atomic_write_text(path, json.dumps(settings, indent=1, sort_keys=True) + "\n")
        return False

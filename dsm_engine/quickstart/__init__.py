"""``dsm quickstart``: the whole system end to end on the shipped data, with a run report.

See :mod:`dsm_engine.quickstart.run` for the command, :mod:`.stages` for what each stage does,
:mod:`.budget` for the sizes behind ``--minutes`` and :mod:`.report` for the report.
"""

from dsm_engine.quickstart.run import STAGES, main, run_quickstart

__all__ = ["STAGES", "main", "run_quickstart"]

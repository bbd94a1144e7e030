"""``python -m bench.density_clara start``: clara_voice's worker with bench-only overrides.

``python -m clara_voice`` exactly, except that the ``ClaraWorker`` it builds takes two
options clara_voice has no setting for, from the environment bench/density.py sets:

* ``BENCH_JOB_EXECUTOR``: livekit's job executor type (``process``, livekit's default on
  Linux, or ``thread``);
* ``BENCH_LOAD_THRESHOLD``: livekit's ``load_threshold`` beyond what
  ``CLARA_LOAD_THRESHOLD`` accepts (at most 1), e.g. ``inf``: the worker accepts every job
  whatever the machine's CPU load;
* ``BENCH_REPORT_LOAD=0``: the worker reports a load of 0 to the server, which otherwise
  sends no job to a worker whose load (the machine's CPU) is 1, or above its own
  ``agents.target_load`` (0.7 by default).

Nothing in ``src/`` changes; without the variables this is ``python -m clara_voice``.
"""

from __future__ import annotations

import os
import sys

from livekit.agents import JobExecutorType

from clara_voice import __main__ as clara_main
from clara_voice import worker as clara_worker
from clara_voice.config import Settings


class BenchClaraWorker(clara_worker.ClaraWorker):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if executor := os.environ.get("BENCH_JOB_EXECUTOR"):
            # livekit reads the option from this attribute when the worker runs; the
            # AgentServer constructor is the only public way to set it
            self._job_executor_type = JobExecutorType(executor)
        if threshold := os.environ.get("BENCH_LOAD_THRESHOLD"):
            self._load_threshold = float(threshold)

    def _load(self) -> float:
        if os.environ.get("BENCH_REPORT_LOAD") == "0":
            return 0.0
        return super()._load()


def main() -> int:
    # clara_voice.__main__.main imports ClaraWorker from clara_voice.worker when it runs
    clara_worker.ClaraWorker = BenchClaraWorker  # type: ignore[misc]
    return clara_main.main()


if __name__ == "__main__":
    from bench.density_clara import main as run

    sys.exit(run())

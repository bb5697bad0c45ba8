"""``thrifty serve --workers N``: N gateway processes accepting on one port.

uvicorn's supervisor binds the port once and starts N worker processes that accept on it (and
starts a new one when one dies); each worker builds the app from the same config
(:func:`worker_app`). What makes them one gateway:

* budgets and rate limits are held in the spend database, where every worker sees them
  (PostgreSQL as for several gateways; on SQLite the workers hold them in the database file,
  see :class:`~thrifty.spend.budgets.SqliteBudgets`), and every worker writes the one ledger;
* ``/metrics`` sums every worker's counters (:mod:`thrifty.gateway.metrics_share`);
* keys, budgets and policies changed through any worker's admin API reach the others within
  ``spend.poll_interval_s``, and each worker reloads a changed router within ``router_reload_s``.

What stays per worker: circuit breakers (a worker that saw a deployment fail stops calling it,
the others find out on their own), prefix affinity and its load counts, the semantic cache's
in-memory index (the cache store itself is shared), and the batch runner (batches are leased, so
each runs once).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: How ``thrifty serve`` tells its workers what to build (the workers are fresh interpreters).
SPEC_ENV = "THRIFTY_WORKER_SPEC"
#: Where the workers share their metrics (default: a fresh temporary directory per run).
METRICS_DIR_ENV = "THRIFTY_METRICS_DIR"


def worker_app() -> Any:
    """The app one worker serves (uvicorn's factory, called in each worker process)."""
    from thrifty.config import load_config
    from thrifty.gateway.assemble import build_app
    from thrifty.gateway.server import tune_gc_for_serving

    spec = json.loads(os.environ[SPEC_ENV])
    config = load_config(spec["config"])
    app = build_app(config, workers=spec["workers"], metrics_dir=Path(spec["metrics_dir"]))[0]
    tune_gc_for_serving()
    return app


def serve_workers(
    config_path: str | None, host: str, port: int, workers: int, *, log_level: str = "warning"
) -> None:
    """Serve with ``workers`` processes until interrupted (uvicorn, httptools + uvloop)."""
    import uvicorn

    from thrifty.gateway.server import UVICORN_OPTIONS

    given = os.environ.get(METRICS_DIR_ENV)
    metrics_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="thrifty-metrics-"))
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for old in metrics_dir.glob("*.json"):  # a new run: counters start at zero
        old.unlink()
    os.environ[SPEC_ENV] = json.dumps(
        {
            "config": str(Path(config_path).resolve()) if config_path else None,
            "workers": workers,
            "metrics_dir": str(metrics_dir),
        }
    )
    try:
        uvicorn.run(
            "thrifty.gateway.workers:worker_app",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level=log_level,
            server_header=False,
            date_header=False,
            **UVICORN_OPTIONS,
        )
    finally:
        if not given:
            shutil.rmtree(metrics_dir, ignore_errors=True)

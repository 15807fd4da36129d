"""Enqueue a whole workflow on the fleet and print its result.

The workflow is ``workers.greet`` from ``workers/app.py``: it runs on a worker of
the ``workflows`` queue and sends its one step (``workers.fetch_user``) to the
``steps`` queue, keyed ``user:<id>``, so a second run is a cache hit.

Run it on one machine (the package installed, e.g. ``pip install -e .``)::

    redis-server                                          # terminal 1
    celery -A workers.app worker -Q steps -l INFO         # terminal 2: step workers
    celery -A workers.app worker -Q workflows -l INFO     # terminal 3: workflow workers
    python examples/distributed.py                        # terminal 4: this producer

Workers and producer read the same ``WORKFLOW_CACHE_*`` variables (``WORKFLOW_CACHE_BROKER``,
``WORKFLOW_CACHE_NAMESPACE``, ...; see ``workflow_cache/distributed/settings.py``); the
defaults point at ``redis://localhost:6379/0``. With Docker, ``docker compose up``
starts Redis and the workers, and ``docker compose run --rm producer`` runs this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# workers/ is a folder deployed beside examples/, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.app import greet
from workflow_cache.distributed import result_of


def main() -> int:
    parser = argparse.ArgumentParser(description="Run workers.greet on the fleet.")
    parser.add_argument("user_id", nargs="?", default="1")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    args = parser.parse_args()

    result = result_of(greet.delay(args.user_id), timeout=args.timeout)
    if not result.ok:
        print(f"workers.greet failed: {result.error}", file=sys.stderr)
        return 1
    print(result.value)
    return 0


if __name__ == "__main__":
    sys.exit(main())

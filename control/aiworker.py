"""The appliance's AI gateway as worker processes, when its state is shared.

With ``ai.state.backend: local`` the agent serves the AI gateway in its own process
(one event loop beside the config API): budgets, rate windows and the exact cache live
in that process. With ``redis`` they are shared, so the agent runs one worker process
per core instead (:class:`ai.workers.Supervisor`: supervised, restarted with backoff,
SIGTERM passed on at stop), each ``python -m control.aiworker --store URL --worker I``:

- it reads the ``ai`` section from the config store, as the in-process gateway does,
  and applies a changed section while running (``source``); a change of the backend
  or of the listen address takes effect when the agent restarts the workers;
- it binds ``ai.listen_host:listen_port`` with ``SO_REUSEPORT``, so the kernel spreads
  connections over the workers;
- its files are per worker (:func:`ai.workers.for_worker`): one audit chain per
  worker, each anchored under its own name (``audit-w<I>``);
- Bedrock requests and S3 audit anchors are signed with the operational role of the
  document's ``aws`` section (:func:`control.aws.operational_credentials`, built from
  the instance identity on first use; never the instance role), like the in-process
  gateway of an agent started without ``--aws``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys

from aiohttp import web

log = logging.getLogger("spectra.control")


def command(store_url: str, imds_endpoint: str) -> tuple[list[str], list[str]]:
    """(the worker entry, its arguments) for :class:`ai.workers.Supervisor`."""
    entry = [sys.executable, "-m", "control.aiworker"]
    return entry, ["--store", store_url, "--imds-endpoint", imds_endpoint]


def main(argv: list[str] | None = None) -> None:
    from ai.logsetup import ENV_FORMAT, ENV_LEVEL, configure
    from ai.server import create_app
    from ai.workers import for_worker
    from control.aws import operational_credentials
    from control.aws.imds import Imds
    from control.store import open_store

    parser = argparse.ArgumentParser(prog="python -m control.aiworker", description=__doc__)
    parser.add_argument("--store", required=True, help="the config store URL")
    parser.add_argument("--imds-endpoint", default="http://169.254.169.254")
    parser.add_argument("--worker", type=int, required=True)
    args = parser.parse_args(argv)
    configure(os.environ.get(ENV_LEVEL, "info"), os.environ.get(ENV_FORMAT, "json"))
    store = open_store(args.store)
    doc = store.latest()[1]
    config = for_worker(doc.ai, args.worker)
    imds = functools.partial(Imds, args.imds_endpoint)
    log.info("AI gateway worker %d of the appliance (pid %d)", args.worker, os.getpid())
    web.run_app(
        create_app(
            config,
            source=lambda: for_worker(store.latest()[1].ai, args.worker),
            aws_credentials=operational_credentials(doc.aws, imds),
            anchor_credentials=operational_credentials(doc.aws, imds, service="s3"),
            serve_metrics=doc.metrics.enabled,
        ),
        host=config.listen_host,
        port=config.listen_port,
        reuse_port=True,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()

"""What the platform's machinery alone allows on this machine: the pipeline benchmark run on
``bench/floor_services.py`` (the same Nameko entrypoints, providers, outbox, dedup records, lingers,
config and fan-out as the real services, and no domain work: one row per event), then on the real
platform, in the same run.

    .venv/bin/python bench/floor.py [--appeals 2000] [--repeats 3] [--latency-seconds 12] [--floor-only]

The floor is an upper bound for any platform built of these parts: whatever the domain costs
(validation, encryption, classification, routing, clocks, audit, notices, KPIs) comes on top of it.
So if the floor itself misses a target, no work on the domain code reaches it here; and the real
platform's share of the floor (printed last) says how much of the cost is the domain's.

Prints PostgreSQL's commit latency on the idle machine first (as ``bench/pipeline.py`` does), then
for each: the maximum end-to-end rate, p50/p99 submit → order_dispatched at half that rate,
and CPU per appeal by process, as ``bench/pipeline.py`` does. The last line is one JSON object with
e2e_per_s, raw_broker_per_s, ratio, p50_ms, p99_ms (the floor's), platform_e2e_per_s, platform_p50_ms,
platform_p99_ms, platform_vs_floor (the real rate ÷ the floor's), the CPU per appeal of both and the
commit figures. The services' logs are removed at the end, as is the work folder.
"""
import json
import os
import shutil
import signal
import sys
import tempfile
from functools import partial
from pathlib import Path

import pipeline
from pipeline import (
    commit_figures, measure, postgres_platform, report, report_commit_latency, report_raw_broker, settle,
)
from wuji_common.local_platform import ROOT, Platform
from wuji_common.testing import own_vhost

FLOOR_SERVICES = ("intake", "triage", "notify", "metrics")


class FloorPlatform(Platform):
    """:class:`Platform` running ``floor_services`` with each real service's own config file and
    niceness, on databases made by ``create_all`` (no migrations, no reference data)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.env["PYTHONPATH"] = str(ROOT / "bench")

    def command(self, service):
        real = super().command(service)
        return [*real[:-1], f"floor_services:Floor{service.capitalize()}"]

    def prepare(self, databases=True, queues=True):
        from sqlalchemy import create_engine
        from floor_services import METADATA
        from wuji_common.db import normalize_url
        from wuji_common.migrations import ensure_database
        for service in FLOOR_SERVICES:
            url = self.db_url(service)
            ensure_database(url)
            engine = create_engine(normalize_url(url))
            METADATA[service].create_all(engine)
            engine.dispose()

    def start(self, *services, wait=True):
        super().start(*(services or FLOOR_SERVICES), wait=wait)


# until every queue of the floor's vhost is empty: its stand-ins send no notices
settle_queues = partial(settle, queues=True, deliveries=False)


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = pipeline.argument_parser()
    parser.description = __doc__
    parser.set_defaults(appeals=2000, raw_messages=10000, latency_seconds=12)
    parser.add_argument("--floor-only", action="store_true", help="the floor only, not the real platform")
    args = parser.parse_args()
    if args.profile:
        parser.error("--profile: use bench/pipeline.py")
    workdir = Path(tempfile.mkdtemp(prefix="wuji-bench-"))
    try:
        summary = run(args, workdir)
    except BaseException:
        print(f"the services' logs are kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(summary, ensure_ascii=False))


def run(args, workdir):
    """The phases, printed; the figures for the last line."""
    commits = report_commit_latency(args)
    with own_vhost(f"wuji-bench-{os.getpid()}") as amqp_uri:
        raw_rate = report_raw_broker(amqp_uri, args)
        print("== the floor: the machinery, no domain work", flush=True)
        with postgres_platform(amqp_uri, workdir / "floor", args.background_nice, FloorPlatform) as floor_platform:
            floor_platform.prepare()
            floor_platform.start()
            floor = measure(floor_platform, args, settle_with=settle_queues)
        report(floor, args, settled="the stand-ins had handled every event (they send nothing)")
    summary = {"e2e_per_s": round(floor["e2e"], 1), "raw_broker_per_s": round(raw_rate, 1),
               "ratio": round(floor["e2e"] / raw_rate, 4), "p50_ms": round(floor["p50"], 1),
               "p99_ms": round(floor["p99"], 1), "cpu_ms_per_appeal": floor["cpu_ms"],
               "paced_cpu_ms_per_appeal": floor["paced_cpu_ms"], **commit_figures(commits)}
    if args.floor_only:
        return summary
    with own_vhost(f"wuji-bench-{os.getpid()}") as amqp_uri:
        print("== the platform", flush=True)
        with postgres_platform(amqp_uri, workdir / "platform", args.background_nice) as platform:
            platform.prepare()
            platform.start()
            real = measure(platform, args)
        report(real, args)
    print(f"the platform reaches {real['e2e'] / floor['e2e']:.2f} of the floor's rate; CPU per appeal "
          f"{sum(real['cpu_ms'].values()):.1f} ms against {sum(floor['cpu_ms'].values()):.1f} ms "
          f"(paced: {sum(real['paced_cpu_ms'].values()):.1f} against {sum(floor['paced_cpu_ms'].values()):.1f})")
    summary.update({"platform_e2e_per_s": round(real["e2e"], 1), "platform_p50_ms": round(real["p50"], 1),
                    "platform_p99_ms": round(real["p99"], 1),
                    "platform_vs_floor": round(real["e2e"] / floor["e2e"], 3),
                    "platform_cpu_ms_per_appeal": real["cpu_ms"],
                    "platform_paced_cpu_ms_per_appeal": real["paced_cpu_ms"]})
    return summary

if __name__ == "__main__":
    main()

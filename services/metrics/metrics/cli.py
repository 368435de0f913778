"""``metrics db upgrade``, ``metrics rebuild`` (replay the event log into fresh facts),
``metrics export-assessment`` (the month's 考核 table as XLSX/CSV) and ``metrics simulate`` (a seeded
month of appeals and unit behaviour, recorded, and its assessment)."""
import json
from pathlib import Path

from metrics import assessment, handlers
from metrics.models import metadata
from wuji_common.cli import default_db_url, service_cli, unit_of_work_for
from wuji_common.migrations import upgrade

SIMULATE_BATCH = 500  # events recorded per transaction by ``metrics simulate``


def _extra(sub):
    rebuild = sub.add_parser("rebuild", help="drop the appeal and order facts and fold them again "
                                             "from the event log (safe while the service runs)")
    rebuild.add_argument("--db-url", default=None)
    rebuild.set_defaults(func=_rebuild)
    export = sub.add_parser("export-assessment", help="the month's assessment table (考核) as .xlsx or .csv")
    export.add_argument("--month", required=True, help="YYYY-MM")
    export.add_argument("--level", choices=assessment.LEVELS, default="unit")
    export.add_argument("--out", required=True, help="FILE.xlsx or FILE.csv")
    export.add_argument("--db-url", default=None)
    export.set_defaults(func=_export_assessment)
    simulate = sub.add_parser("simulate", help="a seeded month of appeals and unit behaviour, recorded "
                                               "into a metrics database, and its assessment table")
    simulate.add_argument("--month", required=True, help="YYYY-MM")
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--appeals", type=int, default=400)
    simulate.add_argument("--level", choices=assessment.LEVELS, default="unit")
    simulate.add_argument("--db-url", default=None, help="default: a fresh SQLite file under var/")
    simulate.add_argument("--out", default=None, help="also export the table (.xlsx or .csv)")
    simulate.set_defaults(func=_simulate)


def _export(rows, out, month, level):
    if str(out).lower().endswith(".csv"):
        assessment.write_csv(rows, out)
    else:
        assessment.write_xlsx(rows, out, title=f"{month} {'单位' if level == 'unit' else '镇街'}考核")


def _export_assessment(args):
    url = args.db_url or default_db_url("metrics")
    table = assessment.assessment(unit_of_work_for("metrics", metadata, url), args.month, args.level)
    _export(table["rows"], args.out, args.month, args.level)
    print(f"{len(table['rows'])} rows written to {args.out}")
    return 0


def _simulate(args):
    from metrics.simulate import simulate_month
    url = args.db_url or f"sqlite:///var/metrics-simulated-{args.month}-{args.seed}.db"
    upgrade(Path(__file__).parent / "migrations", url)
    events = simulate_month(args.month, args.seed, args.appeals)
    uow_factory = lambda: unit_of_work_for("metrics", metadata, url)  # noqa: E731
    uow = uow_factory()
    # in batches, as the service records what arrives together: a transaction per event kept
    # PostgreSQL at about 100 events/s (the facts are refolded from the log, so a batch's order
    # does not matter)
    for start in range(0, len(events), SIMULATE_BATCH):
        handlers.record_events(uow, "metrics.simulate", events[start:start + SIMULATE_BATCH])
    table = assessment.assessment(uow_factory(), args.month, args.level)
    if args.out:
        _export(table["rows"], args.out, args.month, args.level)
    print(f"{len(events)} events of {args.appeals} simulated appeals (seed {args.seed}) in {url}")
    print(f"rank  {'group':<24} score  响应率  按时办结率  满意率  结案率  准确派遣率")
    for row in table["rows"]:
        print(f"{row['rank'] or '-':>4}  {str(row['group']):<24} {row['score'] or '-':>6}  "
              f"{_pct(row['response_rate'])}  {_pct(row['on_time_resolution_rate'])}  "
              f"{_pct(row['satisfaction_rate'])}  {_pct(row['closure_rate'])}  {_pct(row['dispatch_accuracy_rate'])}")
    return 0


def _pct(rate):
    return "   -  " if rate is None else f"{rate * 100:5.1f}%"


def _rebuild(args):
    url = args.db_url or default_db_url("metrics")
    print(json.dumps(handlers.rebuild(unit_of_work_for("metrics", metadata, url))))
    return 0


main = service_cli("metrics", Path(__file__).parent / "migrations", metadata, extra=_extra)

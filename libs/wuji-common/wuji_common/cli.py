"""The administrative command every service installs under its own name (``intake``, ``triage``, ...):

    <service> db upgrade [--db-url URL] [--load-reference]
                                            apply the service's Alembic migrations (and then load
                                            the reference data, in the same run)
    <service> load-reference [--db-url URL] load the reference data that ships with the project

The URL defaults to the service's environment variable (e.g. INTAKE_DB_URL), else SQLite under var/.
Services add their own subcommands through ``extra``.
"""
import argparse
import os
import sys

from wuji_common.db import make_engine, session_factory, UnitOfWork
from wuji_common.migrations import upgrade


def default_db_url(service):
    return os.environ.get(f"{service.upper()}_DB_URL", f"sqlite:///var/{service}.db")


def unit_of_work_for(service, metadata, url):
    engine = make_engine(url)
    return UnitOfWork(session_factory(engine), metadata, service)


def service_cli(service, migrations_dir, metadata, load_reference=None, extra=None):
    """Build ``main(argv)`` for a service's command."""

    def main(argv=None):
        parser = argparse.ArgumentParser(prog=service, description=f"Wuji {service} administration")
        sub = parser.add_subparsers(dest="command", required=True)
        db = sub.add_parser("db", help="database schema")
        db_sub = db.add_subparsers(dest="db_command", required=True)
        up = db_sub.add_parser("upgrade", help="apply migrations up to head")
        up.add_argument("--db-url", default=None)
        up.add_argument("--revision", default="head")
        # one process for both steps: most of each is starting Python and importing the service
        up.add_argument("--load-reference", action="store_true",
                        help="then load the reference data, as load-reference does")
        # every service answers load-reference, so that set-up scripts need not know which have any
        ref = sub.add_parser("load-reference", help="load the reference data that ships with Wuji")
        ref.add_argument("--db-url", default=None)
        if extra:
            extra(sub)
        args = parser.parse_args(argv)
        if args.command == "db":
            url = args.db_url or default_db_url(service)
            upgrade(migrations_dir, url, args.revision)
            print(f"{service}: database at {_redact(url)} is at {args.revision}")
            if args.load_reference:
                load(url)
        elif args.command == "load-reference":
            load(args.db_url or default_db_url(service))
        else:
            return args.func(args)
        return 0

    def load(url):
        if load_reference is None:
            print(f"{service}: no reference data to load")
        else:
            count = load_reference(unit_of_work_for(service, metadata, url))
            print(f"{service}: loaded {count} reference rows")

    return lambda argv=None: sys.exit(main(argv))


def _redact(url):
    from sqlalchemy.engine import make_url
    return make_url(url).render_as_string(hide_password=True)

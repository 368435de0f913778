"""triage's providers: its database (unit of work + outbox relay), the router (taxonomy + the
appeal classifier when a model file is there; the taxonomy reloads when its file changes) and the
near-duplicate index of recent appeals (rebuilt from the database at start)."""
import logging
import os
import time
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

import yaml
from nameko.extensions import DependencyProvider
from prometheus_client import Counter
from sqlalchemy import select

from triage.domain import Router, Taxonomy, TaxonomyError, aware, utcnow
from triage.models import Appeal, metadata
from triage.similarity import AppealIndex
from wuji_common.db import make_engine
from wuji_common.dependencies import Database, MetricsExporter  # noqa: F401

log = logging.getLogger(__name__)

DEFAULT_TAXONOMY_PATH = Path(__file__).parent / "data" / "taxonomy.yml"
DEFAULT_POLICIES_PATH = Path(__file__).parent / "data" / "policies.yml"

# how appeals are routed: a rise of "fallback" or of returns means the taxonomy or model needs work
ORDERS_ROUTED = Counter("wuji_triage_orders_routed_total", "Work orders dispatched, by how they were routed",
                        ["level", "basis", "policy"])
# what the appeals showed: review (held for a dispatcher), repeat, cross_level, urgent
APPEALS_FLAGGED = Counter("wuji_triage_appeals_flagged_total", "Appeals held for review or flagged, by kind",
                          ["kind"])


def TriageDatabase():
    return Database(metadata)


def load_taxonomy(path=None):
    with open(path or DEFAULT_TAXONOMY_PATH, encoding="utf-8") as f:
        return Taxonomy.from_dict(yaml.safe_load(f))


def load_policies(path=None, taxonomy=None):
    """The time-limit policies (policies.yml), checked against the taxonomy's items and categories."""
    from triage.clocks import PolicyBook
    with open(path or DEFAULT_POLICIES_PATH, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return PolicyBook.from_dict(data, set(taxonomy.items) if taxonomy else None,
                                set(taxonomy.categories) if taxonomy else None)


@lru_cache(maxsize=4)
def load_classifier(path=None):
    """The trained appeal classifier, or None when there is no model file (or no classifier module):
    routing then runs on the taxonomy's keywords alone. Cached: containers in one process share it."""
    try:
        from triage.classifier import DEFAULT_MODEL_PATH, Classifier
    except ImportError:
        log.warning("triage.classifier is not available; routing by keywords only")
        return None
    path = Path(path or DEFAULT_MODEL_PATH)
    if not path.exists():
        log.warning("no classifier model at %s; routing by keywords only", path)
        return None
    classifier = Classifier.load(path)
    log.info("classifier %s loaded from %s", getattr(classifier, "version", "?"), path)
    return classifier


def build_router(taxonomy_path=None, classifier="auto", model_path=None, policies_path=None):
    """``classifier``: "auto" uses the model file if there is one; "off" never does (YAML reads an
    unquoted ``off`` from the environment as False, which means off too). ``policies_path``: the
    time-limit policies (default: the packaged policies.yml)."""
    taxonomy = load_taxonomy(taxonomy_path or None)
    off = classifier is False or str(classifier).lower() in ("off", "false", "no", "0")
    return Router(taxonomy, None if off else load_classifier(model_path or None),
                  load_policies(policies_path or None, taxonomy))


class RouterProvider(DependencyProvider):
    """The router, built once per container (the model is loaded at setup, not per appeal). The
    taxonomy is reloaded without a restart when its file changes (looked at, at most every
    ``TAXONOMY_CHECK_SECONDS``, default 5) or on ``reload()``; a file that fails the checks is
    refused and the version in force stays.

    Config: ``TAXONOMY_PATH`` (default: the packaged taxonomy.yml), ``CLASSIFIER`` (auto | off),
    ``MODEL_PATH`` (default: the classifier's packaged model)."""

    def setup(self):
        config = self.container.config
        self.path = Path(config.get("TAXONOMY_PATH") or DEFAULT_TAXONOMY_PATH)
        self.check_seconds = float(config.get("TAXONOMY_CHECK_SECONDS", 5))
        self.router = build_router(self.path, config.get("CLASSIFIER", "auto"), config.get("MODEL_PATH"),
                                   config.get("POLICIES_PATH") or None)
        self._stamp, self._checked = self._file_stamp(), time.monotonic()
        if self.router.classifier is not None:
            # the first classification loads the tokenizer's dictionary (about a second): do it
            # now, not inside the first appeal's handler where it would block the hub
            self.router.assess("预热", "启动时预热分类模型")
        log.info("triage routes with %s, taxonomy %s", self.router.version, self.router.taxonomy.version)

    def _file_stamp(self):
        stat = os.stat(self.path)
        return stat.st_mtime_ns, stat.st_size

    def reload(self):
        """Read the taxonomy file again; returns (previous version, version in force). Raises
        TaxonomyError (and keeps the taxonomy in force) if the file is not valid."""
        self._stamp, self._checked = self._file_stamp(), time.monotonic()
        previous = self.router.taxonomy.version
        self.router = self.router.with_taxonomy(load_taxonomy(self.path))
        log.info("taxonomy reloaded from %s: %s → %s", self.path, previous, self.router.taxonomy.version)
        return previous, self.router.taxonomy.version

    def get_dependency(self, worker_ctx):
        if time.monotonic() - self._checked >= self.check_seconds:
            self._checked = time.monotonic()
            try:
                if self._file_stamp() != self._stamp:
                    self.reload()
            except (OSError, TaxonomyError, yaml.YAMLError, KeyError, TypeError) as err:
                log.error("taxonomy at %s not reloaded, %s stays in force: %s", self.path,
                          self.router.taxonomy.version, err)
        return self.router


class TaxonomyReloader(DependencyProvider):
    """``reload()`` of the container's RouterProvider, for the ``reload_taxonomy`` RPC."""

    def get_dependency(self, worker_ctx):
        provider = next(d for d in self.container.dependencies if isinstance(d, RouterProvider))
        return provider.reload


class NearDuplicates(DependencyProvider):
    """The near-duplicate index (triage.similarity) of the appeals received recently, for hot spots.

    At start it is rebuilt from the database (appeals received in the last
    ``NEAR_DUPLICATE_RETENTION_HOURS``, default 168, at least the hot-spot window); before a worker
    uses it, it picks up what other instances stored since (looked at, at most every
    ``NEAR_DUPLICATE_CATCH_UP_SECONDS``, default 1). This instance's own appeals are added as soon
    as they commit; the service's timer drops what fell out of the retention."""

    SLACK = timedelta(seconds=10)  # transactions commit out of order: look back a little

    def setup(self):
        config = self.container.config
        self.retention = timedelta(hours=float(config.get("NEAR_DUPLICATE_RETENTION_HOURS", 168)))
        self.catch_up_seconds = float(config.get("NEAR_DUPLICATE_CATCH_UP_SECONDS", 1))
        self.engine = make_engine(config["DB_URL"], pool_size=2, max_overflow=2) \
            if not config["DB_URL"].startswith("sqlite") else make_engine(config["DB_URL"])
        self.index = AppealIndex(retention=self.retention)
        self.watermark = None
        self._caught_up = 0.0

    def start(self):
        self._load(received_since=utcnow() - self.retention)
        log.info("near-duplicate index rebuilt with %d recent appeals", len(self.index))

    def stop(self):
        self.engine.dispose()

    kill = stop

    def _load(self, received_since=None, stored_since=None):
        """Add the appeals received or stored since the given instant that the index does not hold
        yet. A catch-up looks back SLACK seconds, over appeals mostly held already: their keys are
        read first and only the new ones' texts fetched and hashed, not every one's each second."""
        columns = (Appeal.case_no, Appeal.title, Appeal.content, Appeal.town_code, Appeal.received_at,
                   Appeal.stored_at)
        query = select(Appeal.case_no, Appeal.stored_at)
        if received_since is not None:
            query = query.where(Appeal.received_at >= received_since)
        if stored_since is not None:
            query = query.where(Appeal.stored_at >= stored_since)
        with self.engine.connect() as conn:
            keys = conn.execute(query).all()
            new = [k.case_no for k in keys if k.case_no not in self.index]
            rows = []
            for start in range(0, len(new), 1000):
                rows += conn.execute(select(*columns).where(
                    Appeal.case_no.in_(new[start:start + 1000]))).all()
        for row in sorted(rows, key=lambda r: aware(r.stored_at)):
            self.index.remember(row.case_no, row.title, row.content, row.town_code, aware(row.received_at))
        if keys:
            latest = max(aware(k.stored_at) for k in keys)
            self.watermark = latest if self.watermark is None else max(self.watermark, latest)
        self._caught_up = time.monotonic()

    def catch_up(self):
        if time.monotonic() - self._caught_up < self.catch_up_seconds:
            return
        if self.watermark is None:
            self._load(received_since=utcnow() - self.retention)
        else:
            self._load(stored_since=self.watermark - self.SLACK)

    def get_dependency(self, worker_ctx):
        try:
            self.catch_up()
        except Exception:
            # the database is away: this instance's own appeals are still there; try again later
            log.warning("near-duplicate index could not catch up", exc_info=True)
        return self.index

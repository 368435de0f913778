"""triage's providers: its database (unit of work + outbox relay) and the router (taxonomy + the
appeal classifier when a model file is there)."""
import logging
from functools import lru_cache
from pathlib import Path

import yaml
from nameko.extensions import DependencyProvider
from prometheus_client import Counter

from triage.domain import Router, Taxonomy
from triage.models import metadata
from wuji_common.dependencies import Database, MetricsExporter  # noqa: F401

log = logging.getLogger(__name__)

DEFAULT_TAXONOMY_PATH = Path(__file__).parent / "data" / "taxonomy.yml"

# how appeals are routed: a rise of "fallback" or of returns means the taxonomy or model needs work
ORDERS_ROUTED = Counter("wuji_triage_orders_routed_total", "Work orders dispatched, by how they were routed",
                        ["level", "basis", "policy"])


def TriageDatabase():
    return Database(metadata)


def load_taxonomy(path=None):
    with open(path or DEFAULT_TAXONOMY_PATH, encoding="utf-8") as f:
        return Taxonomy.from_dict(yaml.safe_load(f))


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


def build_router(taxonomy_path=None, classifier="auto", model_path=None):
    """``classifier``: "auto" uses the model file if there is one; "off" never does (YAML reads an
    unquoted ``off`` from the environment as False, which means off too)."""
    taxonomy = load_taxonomy(taxonomy_path or None)
    off = classifier is False or str(classifier).lower() in ("off", "false", "no", "0")
    return Router(taxonomy, None if off else load_classifier(model_path or None))


class RouterProvider(DependencyProvider):
    """The router, built once per container (the model is loaded at setup, not per appeal).

    Config: ``TAXONOMY_PATH`` (default: the packaged taxonomy.yml), ``CLASSIFIER`` (auto | off),
    ``MODEL_PATH`` (default: the classifier's packaged model)."""

    def setup(self):
        config = self.container.config
        self.router = build_router(config.get("TAXONOMY_PATH"), config.get("CLASSIFIER", "auto"),
                                   config.get("MODEL_PATH"))
        if self.router.classifier is not None:
            # the first classification loads the tokenizer's dictionary (about a second): do it
            # now, not inside the first appeal's handler where it would block the hub
            self.router.assess("预热", "启动时预热分类模型")
        log.info("triage routes with %s, taxonomy %s", self.router.version, self.router.taxonomy.version)

    def get_dependency(self, worker_ctx):
        return self.router

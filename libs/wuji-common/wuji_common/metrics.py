"""Prometheus metrics common to every service (labels stay low-cardinality: never cases or people)."""
from prometheus_client import Counter, Gauge, Histogram

ENTRYPOINT_CALLS = Counter(
    "wuji_entrypoint_calls_total", "Entrypoint calls by outcome (ok, expected_error, error)",
    ["service", "entrypoint", "kind", "outcome"])
ENTRYPOINT_LATENCY = Histogram(
    "wuji_entrypoint_latency_seconds", "Entrypoint latency", ["service", "entrypoint", "kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
WORKERS_BUSY = Gauge("wuji_workers_busy", "Workers running now", ["service"])
WORKERS_MAX = Gauge("wuji_workers_max", "Workers the service may run at once (max_workers)", ["service"])
OUTBOX_BACKLOG = Gauge("wuji_outbox_backlog", "Outbox rows not yet published", ["service"])
OUTBOX_OLDEST_AGE = Gauge("wuji_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row",
                          ["service"])
OUTBOX_PUBLISHED = Counter("wuji_outbox_published_total", "Events published by the outbox relay",
                           ["service"])
EVENTS_DUPLICATE = Counter("wuji_events_duplicates_dropped_total",
                           "Redelivered events dropped by event id", ["service", "consumer"])
EVENTS_RETRIED = Counter("wuji_events_retried_total", "Failed event deliveries sent for a delayed retry",
                         ["service", "consumer"])
EVENTS_DEAD_LETTERED = Counter("wuji_events_dead_lettered_total",
                               "Events moved to a dead-letter queue after their last retry",
                               ["service", "consumer"])
GROUP_COMMIT_SIZE = Histogram("wuji_group_commit_size", "Calls written together in one transaction (group commit)",
                              ["service", "writer"], buckets=(1, 2, 4, 8, 16, 32, 64, 128))

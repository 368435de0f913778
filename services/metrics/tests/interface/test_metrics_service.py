"""The metrics service in a real nameko container on the real RabbitMQ and a real database: events
published as the other services publish them, KPIs over RPC, series scraped from /metrics."""
import time
import urllib.request

import pytest
from kombu import Connection
from nameko.standalone.rpc import ServiceRpcProxy

from metrics import domain, handlers
from metrics.models import AppealFact, OrderFact
from metrics.service import MetricsService
from wuji_common.errors import ValidationError
from wuji_common.testing_helpers import free_port, publish_event
from wuji_common.topology import declare

RETRY_DELAYS = [0.2, 0.5]


@pytest.fixture
def service(metrics_db, amqp_uri, container_factory):
    """Starts the service; yields (config, start) where start() runs a further container (a restart)."""
    db_url, _ = metrics_db
    config = {"AMQP_URI": amqp_uri, "DB_URL": db_url, "METRICS_PORT": free_port(),
              "EVENT_RETRY_DELAYS": RETRY_DELAYS, "REFRESH_SECONDS": 0.2, "KPI_TIMEZONE": "Asia/Shanghai"}
    queues = declare(amqp_uri, [MetricsService], retry_delays=RETRY_DELAYS)
    with Connection(amqp_uri) as conn:
        for queue in queues:  # the vhost lives for the whole session: leave no other test's events
            conn.default_channel.queue_purge(queue)

    def start():
        container = container_factory(MetricsService, config)
        container.start()
        return container

    yield config, start


def wait_until(probe, timeout=15.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def scrape(config):
    url = f"http://127.0.0.1:{config['METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode().splitlines()


def sample(lines, prefix):
    """The value of the one series line starting with ``prefix`` (name and labels), else None."""
    found = [line for line in lines if line.startswith(prefix + " ")]
    return float(found[0].rsplit(" ", 1)[1]) if found else None


def handler_calls(config, method):
    return sample(scrape(config), f'wuji_entrypoint_calls_total{{entrypoint="{method}",'
                                  f'kind="event",outcome="ok",service="metrics"}}') or 0


def duplicates_dropped(config, consumer):
    return sample(scrape(config), f'wuji_events_duplicates_dropped_total{{consumer="{consumer}",'
                                  f'service="metrics"}}') or 0


def test_published_events_become_kpis_and_series_that_survive_a_restart(service, amqp_uri, story):
    config, start = service
    container = start()
    events = story.week()
    for envelope in reversed(events):  # acceptances before dispatches, ratings before receipts...
        publish_event(amqp_uri, envelope)

    with ServiceRpcProxy("metrics", config, timeout=10) as rpc:
        assert wait_until(lambda: rpc.event_count() == len(events)), rpc.event_count()
        for group_by, expected in (("town", story.BY_TOWN), ("unit", story.BY_UNIT),
                                   ("category", story.BY_CATEGORY)):
            assert rpc.kpis(*story.WINDOW, group_by) == \
                domain.assemble(expected, handlers.group_names(group_by))
        total = rpc.kpis(*story.WINDOW, "town")[-1]
        assert (total["group"], total["response_rate"], total["satisfaction_rate"]) == ("total", 0.5, 1.0)

    t, g = story.TANSHAN, story.GUSHAO
    expected_series = {
        f'wuji_appeals_received_total{{channel="wechat",town="{t}"}}': 2,
        f'wuji_orders_dispatched_total{{category="urban-rural",town="{t}"}}': 2,
        f'wuji_orders_accepted_total{{category="labour-social-security",town="{g}"}}': 1,
        f'wuji_orders_resolved_total{{category="urban-rural",town="{t}"}}': 3,
        f'wuji_orders_reopened_total{{category="urban-rural",town="{t}"}}': 1,
        f'wuji_orders_returned_total{{category="labour-social-security",town="{g}"}}': 1,
        f'wuji_orders_closed_total{{category="urban-rural",town="{t}"}}': 2,
        'wuji_ratings_total{satisfaction="satisfied"}': 1,
        f'wuji_order_report_in_seconds_count{{town="{t}"}}': 2,
        f'wuji_order_report_in_seconds_bucket{{le="1800.0",town="{g}"}}': 1,
        f'wuji_order_resolve_seconds_sum{{town="{g}"}}': 31 * 3600,
        f'wuji_whistles_blown_total{{town="{g}"}}': 1,
    }

    def series_as_expected():
        lines = scrape(config)
        return all(sample(lines, name) == value for name, value in expected_series.items())

    assert wait_until(series_as_expected), [l for l in scrape(config) if l.startswith("wuji_orders")]

    # a restart: the numbers come back from the database, not from the dead process's memory
    container.stop()
    start()
    assert wait_until(series_as_expected)


def test_a_redelivered_event_is_dropped(service, amqp_uri, story):
    config, start = service
    start()
    events = story.week()
    for envelope in events:
        publish_event(amqp_uri, envelope)
    with ServiceRpcProxy("metrics", config, timeout=10) as rpc:
        assert wait_until(lambda: rpc.event_count() == len(events))
        before = rpc.kpis(*story.WINDOW, "unit")
        reopened = next(e for e in events if e["type"] == "order_reopened")
        calls = handler_calls(config, "on_order_reopened")
        dropped = duplicates_dropped(config, "metrics.on_order_reopened")
        publish_event(amqp_uri, reopened)  # the broker delivers it again
        assert wait_until(lambda: handler_calls(config, "on_order_reopened") == calls + 1)
        assert duplicates_dropped(config, "metrics.on_order_reopened") == dropped + 1
        assert rpc.event_count() == len(events)
        assert rpc.kpis(*story.WINDOW, "unit") == before


def test_bad_kpi_queries_are_refused_naming_the_field(service):
    config, start = service
    start()
    with ServiceRpcProxy("metrics", config, timeout=10) as rpc:
        with pytest.raises(ValidationError) as err:
            rpc.kpis("2025-03-09", "2025-03-03", "town")
        assert list(err.value.fields) == ["end"]
        with pytest.raises(ValidationError) as err:
            rpc.kpis("2025-03-03", "2025-03-09", "village")
        assert list(err.value.fields) == ["group_by"]


def test_rebuild_over_rpc_refolds_the_facts_from_the_log(service, amqp_uri, story, metrics_db):
    config, start = service
    start()
    events = story.week()
    for envelope in events:
        publish_event(amqp_uri, envelope)
    with ServiceRpcProxy("metrics", config, timeout=10) as rpc:
        assert wait_until(lambda: rpc.event_count() == len(events))
        before = rpc.kpis(*story.WINDOW, "town")
        _, uow = metrics_db
        with uow() as u:                        # facts lost, the log intact
            u.session.execute(OrderFact.__table__.delete())
            u.commit()
        assert rpc.kpis(*story.WINDOW, "town") != before
        assert rpc.rebuild() == {"events": len(events), "orders": 5, "appeals": 6}
        assert rpc.kpis(*story.WINDOW, "town") == before


def test_the_rebuild_command_refolds_the_facts(metrics_db, story):
    from metrics import cli
    db_url, uow = metrics_db
    for envelope in story.week():
        handlers.record_event(uow(), "metrics.test", envelope)
    with uow() as u:
        u.session.execute(AppealFact.__table__.delete())
        u.commit()
    with pytest.raises(SystemExit) as done:
        cli.main(["rebuild", "--db-url", db_url])
    assert done.value.code == 0
    assert handlers.kpis(uow(), *story.WINDOW, "town")[-1]["appeals"] == 5

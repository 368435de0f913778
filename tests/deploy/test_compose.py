"""The deployment files are consistent with each other and with the code, without a Docker engine.

- docker-compose.yml is valid against the Compose Specification's JSON schema (the copy that the
  check-jsonschema package vendors from compose-spec, Apache-2.0; no network at test time);
- every file it mounts, builds from or points into exists, and so does every module, class, console
  script and config file that the image's commands name;
- ports agree everywhere: services' config defaults, compose environment, health checks, Prometheus;
- secrets are only ever taken from the environment, and .env.example lists every variable;
- alert rules and dashboard queries use only metric names that the code defines (wuji_common.metrics
  and the prometheus_client metrics found in services/*), RabbitMQ's, or Prometheus' own;
- every YAML and JSON file under deploy/ parses, the shell scripts parse, the Dockerfile parses and
  everything it copies exists. With promtool installed, the Prometheus config and the alerts' unit
  tests (deploy/prometheus/alerts_test.yml) run too.
"""
import ast
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# service → metrics port: the <SVC>_METRICS_PORT defaults named in docs/developing.md
METRICS_PORTS = {"intake": 9101, "triage": 9102, "enforcement": 9103, "notify": 9104, "metrics": 9105}
WUJI_SERVICES = tuple(METRICS_PORTS)
SERVICE_CLASSES = {svc: f"{svc}.service:{svc.capitalize()}Service" for svc in WUJI_SERVICES}
INTAKE_HTTP_PORT = 8000
RABBITMQ_PROMETHEUS_PORT = 15692

# RabbitMQ's prometheus plugin, per-object endpoint (rabbitmq_prometheus, "queue_coarse_metrics" and
# "queue_metrics" families): the names the rules and dashboards may use.
RABBITMQ_METRICS = {
    "rabbitmq_queue_messages", "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_consumers", "rabbitmq_queue_consumer_utilisation",
}
# series that Prometheus itself writes for every target / alert
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"}

ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}")


# --- helpers ---------------------------------------------------------------------------------------

def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def compose_spec_schema():
    """The Compose Specification schema as vendored by check-jsonschema (its licence file:
    check_jsonschema/builtin_schemas/vendor/licenses/LICENSE.compose-spec)."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def host_path(service_def, container_path):
    """The repository path that a container sees at ``container_path`` through its bind mounts."""
    container_path = container_path.rstrip("/")
    best = None
    for volume in service_def.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith("./"):
            continue                                          # a named volume
        target = target.rstrip("/")
        if container_path == target or container_path.startswith(target + "/"):
            if best is None or len(target) > len(best[1]):
                best = (source, target)
    if best is None:
        return None
    source, target = best
    return ROOT / source[2:] / container_path[len(target):].lstrip("/")


def env_default(value):
    """'${INTAKE_METRICS_PORT:9101}' (nameko's syntax) → ('INTAKE_METRICS_PORT', '9101')."""
    match = re.fullmatch(r"\$\{([^}:]+):?([^}]*)\}", str(value))
    assert match, f"{value!r} is not an environment reference"
    return match.group(1), match.group(2)


def strings_in(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings_in(key)
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)


def healthcheck_port(service_def):
    test = service_def["healthcheck"]["test"]
    match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", " ".join(test))
    assert match, f"health check does not fetch /metrics: {test!r}"
    return int(match.group(1))


# PromQL: the metric names of an expression. Without a PromQL parser in Python, the expression is
# reduced step by step to its selectors: strings, label matchers, ranges and grouping clauses go,
# then every identifier that is not a function call or a keyword is a metric name.
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                   "group_left", "group_right", "inf", "nan", "atan2"}


def promql_metric_names(expr):
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*+)(?!\s*\()", text):
        if match.group(1).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(1))
    return names


@pytest.mark.parametrize("expr, names", [
    ('sum by (service) (rate(wuji_entrypoint_calls_total{outcome="error"}[5m])) / '
     'sum by (service) (rate(wuji_entrypoint_calls_total[5m])) > 0.05', {"wuji_entrypoint_calls_total"}),
    ('histogram_quantile(0.95, sum by (le) (rate(a_seconds_bucket{x=~"$v"}[$__rate_interval])))',
     {"a_seconds_bucket"}),
    ("count(up == 0) or vector(0)", {"up"}),
    ("x offset 5m and on (queue) y unless ignoring (a, b) z", {"x", "y", "z"}),
    ('topk(10, sum without (instance) (foo{q="a{b}"})) > 1e3', {"foo"}),
])
def test_promql_metric_names_finds_the_selectors(expr, names):
    assert promql_metric_names(expr) == names


def exposed_names(family, kind):
    """Sample names a prometheus_client family of this type shows on /metrics (text format)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
        "stateset": ("",),
        "unknown": ("",),
    }[kind]
    return {family + suffix for suffix in suffixes}


_COLLECT = """
import importlib, json, sys
from prometheus_client import REGISTRY
for module in sys.argv[1:]:
    importlib.import_module(module)
print(json.dumps(sorted({(m.name, m.type) for m in REGISTRY.collect()})))
"""


def metric_modules():
    """wuji_common.metrics and every service module that uses prometheus_client."""
    modules = ["wuji_common.metrics"]
    for path in sorted(ROOT.glob("services/*/*/**/*.py")):
        package_root = path.parents[len(path.relative_to(ROOT).parts) - 3]   # services/<svc>
        relative = path.relative_to(package_root)
        if relative.parts[0] in ("tests", "build") or "migrations" in relative.parts:
            continue
        if "prometheus_client" in path.read_text(encoding="utf-8"):
            modules.append(".".join(relative.with_suffix("").parts))
    return modules


@pytest.fixture(scope="module")
def defined_metrics():
    """Every sample name the code exposes: the modules are imported in a process of their own and
    read back from prometheus_client's registry (metric families built by collectors included)."""
    modules = metric_modules()
    result = subprocess.run([sys.executable, "-c", _COLLECT, *modules], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    names = set()
    for family, kind in json.loads(result.stdout.strip().splitlines()[-1]):
        names |= exposed_names(family, kind)
    return names


def known_metric_names(defined):
    return defined | RABBITMQ_METRICS | PROMETHEUS_SERIES


# --- the compose file --------------------------------------------------------------------------------

def test_compose_file_is_valid_against_the_compose_specification(compose):
    schema = compose_spec_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_check_rejects_a_broken_compose_file(compose):
    broken = json.loads(json.dumps(compose))
    broken["services"]["intake"]["depends_on"]["rabbitmq"]["condition"] = "service_ready"
    assert list(jsonschema.Draft202012Validator(compose_spec_schema()).iter_errors(broken))


def test_every_file_the_compose_file_mounts_or_builds_from_exists(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = ROOT / build["context"]
            assert context.is_dir(), name
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"


def test_the_five_services_run_the_same_image_with_their_own_service_name(compose):
    services = compose["services"]
    images = {services[svc]["image"] for svc in WUJI_SERVICES} | {services["declare-queues"]["image"]}
    assert len(images) == 1
    for svc in WUJI_SERVICES:
        service = services[svc]
        assert service["environment"]["SERVICE"] == svc
        assert service["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
        assert "entrypoint" not in service and "command" not in service   # the image's entrypoint


def test_every_service_named_has_its_config_module_class_and_command():
    """What deploy/entrypoint.sh runs for SERVICE=<svc>: `<svc> db upgrade`, `<svc> load-reference`
    and `nameko run --config services/<svc>/config.yml <svc>.service`."""
    for svc, dotted in SERVICE_CLASSES.items():
        service_dir = ROOT / "services" / svc
        assert (service_dir / "config.yml").is_file()
        module, _, cls = dotted.partition(":")
        source = service_dir / Path(*module.split(".")).with_suffix(".py")
        classes = {node.name for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
                   if isinstance(node, ast.ClassDef)}
        assert cls in classes, f"{source} defines no {cls}"
        scripts = tomllib.loads((service_dir / "pyproject.toml").read_text())["project"]["scripts"]
        assert scripts.get(svc) == f"{svc}.cli:main", f"{svc} has no `{svc}` command"


def test_the_queue_declaration_job_declares_all_five_services_as_admin(compose):
    job = compose["services"]["declare-queues"]
    assert "wuji-broker declare" in " ".join(job["entrypoint"])
    assert job["command"] == list(SERVICE_CLASSES.values())
    scripts = tomllib.loads((ROOT / "libs/wuji-common/pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["wuji-broker"] == "wuji_common.topology:main"
    assert job["environment"]["AMQP_URI"].startswith("amqp://${WUJI_AMQP_ADMIN_USER")
    assert job["environment"]["AMQP_URI"].endswith("@rabbitmq:5672/wuji")
    assert job["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}
    assert job["restart"] == "no"


def test_services_start_after_the_broker_the_database_and_the_queues(compose):
    services = compose["services"]
    for svc in WUJI_SERVICES:
        assert services[svc]["depends_on"] == {
            "rabbitmq": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
            "declare-queues": {"condition": "service_completed_successfully"},
        }
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no health check"


def test_services_stop_gracefully(compose):
    for svc in WUJI_SERVICES:
        service = compose["services"][svc]
        assert service["init"] is True
        seconds = int(re.fullmatch(r"(\d+)s", service["stop_grace_period"]).group(1))
        assert seconds >= 30
        assert service["restart"] == "unless-stopped"


def test_ports_agree_with_the_services_configuration(compose):
    services = compose["services"]
    targets = {}
    for job in load_yaml(DEPLOY / "prometheus/prometheus.yml")["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets[host] = (job["job_name"], int(port))
    for svc, port in METRICS_PORTS.items():
        config = load_yaml(ROOT / "services" / svc / "config.yml")
        variable, default = env_default(config["METRICS_PORT"])
        assert (variable, int(default)) == (f"{svc.upper()}_METRICS_PORT", port)
        service = services[svc]
        assert int(service["environment"][variable]) == port
        assert service["environment"]["METRICS_ADDRESS"] == "0.0.0.0"
        assert str(port) in service["expose"]
        assert healthcheck_port(service) == port
        assert targets[svc] == ("wuji-services", port)
    assert targets["rabbitmq"] == ("rabbitmq", RABBITMQ_PROMETHEUS_PORT)
    assert str(RABBITMQ_PROMETHEUS_PORT) in services["rabbitmq"]["expose"]

    intake_config = load_yaml(ROOT / "services/intake/config.yml")
    variable, default = env_default(intake_config["WEB_SERVER_ADDRESS"])
    assert variable == "API_ADDRESS" and default.endswith(f":{INTAKE_HTTP_PORT}")
    assert services["intake"]["environment"]["API_ADDRESS"] == f"0.0.0.0:{INTAKE_HTTP_PORT}"
    published = [p.rsplit(":", 1)[1] for p in services["intake"]["ports"]]
    assert published == [str(INTAKE_HTTP_PORT)]


def test_every_setting_given_to_a_service_is_one_its_config_reads(compose):
    """A misspelt variable would be ignored silently and the service would run on its default."""
    for svc in WUJI_SERVICES:
        config_text = (ROOT / "services" / svc / "config.yml").read_text(encoding="utf-8")
        read = {m.group(1) for m in re.finditer(r"\$\{([^}:]+)", config_text)}
        given = set(compose["services"][svc]["environment"])
        # SERVICE is for deploy/entrypoint.sh; METRICS_ADDRESS is passed on by it if config.yml does not
        assert given - read - {"SERVICE", "METRICS_ADDRESS"} == set(), svc
        assert {"AMQP_URI", f"{svc.upper()}_DB_URL", f"{svc.upper()}_METRICS_PORT"} <= given


def test_each_service_connects_as_its_own_broker_and_database_user(compose):
    """The user names that deploy/rabbitmq/init-users.sh and deploy/postgres/init-databases.sh create."""
    for svc in WUJI_SERVICES:
        env = compose["services"][svc]["environment"]
        assert re.fullmatch(rf"amqp://{svc}:\$\{{{svc.upper()}_AMQP_PASSWORD:\?[^}}]+\}}@rabbitmq:5672/wuji",
                            env["AMQP_URI"]), env["AMQP_URI"]
        assert re.fullmatch(rf"postgresql://wuji_{svc}:\$\{{{svc.upper()}_DB_PASSWORD:\?[^}}]+\}}"
                            rf"@postgres:5432/wuji_{svc}", env[f"{svc.upper()}_DB_URL"])
        assert f"{svc.upper()}_AMQP_PASSWORD" in compose["services"]["rabbitmq"]["environment"]
        assert f"{svc.upper()}_DB_PASSWORD" in compose["services"]["postgres"]["environment"]


def test_secrets_come_only_from_the_environment(compose):
    secret_name = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")
    for name, service in compose["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            value = str(value)
            if secret_name.search(variable):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]+|:-)\}", value), \
                    f"{name}.{variable} must be ${{VAR:?...}} (or optional and empty by default)"
            for credentials in re.finditer(r"://(\$\{[^}]*\}|[^/:@$]+):(\$\{[^}]*\}|[^@]*)@", value):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", credentials.group(2)), \
                    f"{name}.{variable} has a password that is not a required variable"


def test_env_example_lists_every_variable_and_nothing_else(compose):
    used = set()
    required = set()
    for text in strings_in(compose):
        for match in ENV_REFERENCE.finditer(text.replace("$$", "")):
            used.add(match.group("name"))
            if match.group("op") in ("?", ":?"):
                required.add(match.group("name"))
    listed = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            variable, _, value = line.partition("=")
            listed[variable] = value
    assert set(listed) == used
    for variable in required:
        if re.search(r"PASSWORD|SECRET|KEY|TOKEN", variable):
            assert listed[variable].startswith("replace-me"), f"{variable} must be a visible placeholder"


def test_rabbitmq_keeps_its_data_and_loads_wuji_definitions(compose):
    rabbitmq = compose["services"]["rabbitmq"]
    assert rabbitmq["image"].startswith("rabbitmq:3.13-management")
    assert rabbitmq["hostname"]
    data = [v for v in rabbitmq["volumes"] if v.split(":")[1] == "/var/lib/rabbitmq"]
    assert data and data[0].split(":")[0] in compose["volumes"]

    plugins = host_path(rabbitmq, "/etc/rabbitmq/enabled_plugins").read_text()
    assert re.fullmatch(r"\[([a-z_]+,)*[a-z_]+\]\.\s*", plugins)
    assert {"rabbitmq_management", "rabbitmq_prometheus"} <= set(re.findall(r"[a-z_]+", plugins))

    conf = host_path(rabbitmq, "/etc/rabbitmq/conf.d/20-wuji.conf").read_text()
    settings = dict(line.split(" = ", 1) for line in conf.splitlines() if line and not line.startswith("#"))
    definitions = json.loads(host_path(rabbitmq, settings["load_definitions"]).read_text())
    assert [v["name"] for v in definitions["vhosts"]] == ["wuji"]
    assert definitions["users"] == []            # users come from init-users.sh, never from the repo
    assert settings["prometheus.tcp.port"] == str(RABBITMQ_PROMETHEUS_PORT)

    entrypoint = rabbitmq["entrypoint"]
    assert host_path(rabbitmq, entrypoint[-1]).is_file()
    start = host_path(rabbitmq, entrypoint[-1]).read_text()
    assert "init-users.sh" in start and (DEPLOY / "rabbitmq/init-users.sh").is_file()
    assert "/tmp/wuji-users-ready" in start and "/tmp/wuji-users-ready" in " ".join(rabbitmq["healthcheck"]["test"])


def test_postgres_creates_a_database_per_service_on_first_start(compose):
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    init = [v for v in postgres["volumes"] if ":/docker-entrypoint-initdb.d/" in v]
    assert len(init) == 1
    assert host_path(postgres, init[0].split(":")[1]).is_file()
    data = [v for v in postgres["volumes"] if v.split(":")[1] == "/var/lib/postgresql/data"]
    assert data and data[0].split(":")[0] in compose["volumes"]


def test_grafana_is_provisioned_from_the_mounted_files(compose):
    grafana = compose["services"]["grafana"]
    datasources = load_yaml(host_path(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml"))
    [datasource] = datasources["datasources"]
    assert datasource["uid"] == "wuji-prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    providers = load_yaml(host_path(grafana, "/etc/grafana/provisioning/dashboards/dashboards.yml"))
    for provider in providers["providers"]:
        directory = host_path(grafana, provider["options"]["path"])
        assert directory is not None and directory.is_dir() and list(directory.glob("*.json"))
    assert host_path(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).is_file()


def test_prometheus_loads_the_alert_rules(compose):
    prometheus = compose["services"]["prometheus"]
    config = load_yaml(host_path(prometheus, "/etc/prometheus/prometheus.yml"))
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    rule_files = [host_path(prometheus, path) for path in config["rule_files"]]
    assert rule_files == [DEPLOY / "prometheus/alerts.yml"]


# --- alerts and dashboards -------------------------------------------------------------------------

def alert_rules():
    return [rule for group in load_yaml(DEPLOY / "prometheus/alerts.yml")["groups"]
            for rule in group["rules"]]


def test_the_alerts_cover_what_operators_must_hear_about():
    by_metric = {}
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"]
        for name in promql_metric_names(rule["expr"]):
            by_metric.setdefault(name, []).append(rule)
    assert any("> 0" in r["expr"] for r in by_metric["wuji_events_dead_lettered_total"])
    assert any("== 0" in r["expr"] for r in by_metric["rabbitmq_queue_consumers"])
    assert by_metric["rabbitmq_queue_messages_ready"]
    assert any("> 60" in r["expr"] for r in by_metric["wuji_outbox_oldest_age_seconds"])
    assert any('outcome="error"' in r["expr"] for r in by_metric["wuji_entrypoint_calls_total"])
    assert any("wuji_orders_overdue" in r["expr"] and "delta" in r["expr"] for r in by_metric["wuji_orders_overdue"])
    assert any(">= 1" in r["expr"] for r in by_metric["wuji_workers_max"])


def test_alert_rules_use_only_metrics_that_exist(defined_metrics):
    known = known_metric_names(defined_metrics)
    for rule in alert_rules():
        unknown = promql_metric_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']} uses undefined metrics {unknown}"


def test_the_code_defines_the_shared_metrics(defined_metrics):
    """The collection itself works: it finds wuji_common's metrics and the services' own."""
    assert {"wuji_entrypoint_calls_total", "wuji_entrypoint_latency_seconds_bucket",
            "wuji_outbox_oldest_age_seconds", "wuji_events_dead_lettered_total"} <= defined_metrics
    assert {name for name in defined_metrics if name.startswith("wuji_")} - {
        "wuji_entrypoint_calls_total", "wuji_entrypoint_calls_created"}, "no service metric found"


DASHBOARD_UIDS = {"wuji-command", "wuji-department", "wuji-ops"}


def dashboards():
    """uid → dashboard, for every file Grafana is provisioned with."""
    boards = {}
    for path in sorted((DEPLOY / "grafana/dashboards").glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        assert path.stem == board["uid"], f"{path.name}: name the file after its uid"
        boards[board["uid"]] = board
    return boards


def dashboard_queries(board):
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in board["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
        assert match, query
        yield variable["name"], match.group(1)


def test_the_dashboards_have_stable_identities_and_use_the_provisioned_datasource():
    boards = dashboards()
    assert set(boards) == DASHBOARD_UIDS
    for uid, board in boards.items():
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), uid
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (uid, panel["title"])
            if panel["type"] in ("row", "text"):
                assert not panel.get("targets"), (uid, panel["title"])
                continue
            assert panel["datasource"]["uid"] == "wuji-prometheus", (uid, panel["title"])
            assert panel["targets"], (uid, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "wuji-prometheus", (uid, panel["title"])
        for variable in board["templating"]["list"]:
            assert variable["datasource"]["uid"] == "wuji-prometheus"


@pytest.mark.parametrize("uid", sorted(DASHBOARD_UIDS))
def test_dashboard_queries_use_only_metrics_that_exist(defined_metrics, uid):
    known = known_metric_names(defined_metrics)
    for title, expr in dashboard_queries(dashboards()[uid]):
        names = promql_metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert not names - known, f"{title} uses undefined metrics {names - known}"


def used_metrics(board):
    return set().union(*(promql_metric_names(expr) for _, expr in dashboard_queries(board)))


def test_the_ops_dashboard_shows_every_shared_metric():
    shared = {"wuji_entrypoint_calls_total", "wuji_entrypoint_latency_seconds_bucket", "wuji_workers_busy",
              "wuji_workers_max", "wuji_outbox_backlog", "wuji_outbox_oldest_age_seconds",
              "wuji_outbox_published_total", "wuji_events_duplicates_dropped_total",
              "wuji_events_retried_total", "wuji_events_dead_lettered_total"}
    board = dashboards()["wuji-ops"]
    assert shared <= used_metrics(board)
    assert {"rabbitmq_queue_messages", "rabbitmq_queue_messages_ready", "rabbitmq_queue_consumers"} \
        <= used_metrics(board)
    exprs = " ".join(expr for _, expr in dashboard_queries(board))
    assert "by (service, kind)" in exprs            # calls and latency per entrypoint kind


def test_the_command_centre_shows_intake_backlog_overdue_rates_and_hot_spots():
    board = dashboards()["wuji-command"]
    exprs = [expr for _, expr in dashboard_queries(board)]
    joined = " ".join(exprs)
    assert [v["name"] for v in board["templating"]["list"]] == ["town"]
    assert board["time"]["from"] == "now/d"                      # today, in China time
    assert board["timezone"] == "Asia/Shanghai"
    assert 'period="today"' in joined and 'measure="appeals"' in joined          # today's intake
    assert "wuji_appeals_received_total" in joined                               # ... by channel
    assert any("wuji_orders{" in e and "by (town)" in e for e in exprs)          # backlog per town
    assert any("wuji_orders{" in e and "by (status)" in e for e in exprs)        # ... per stage
    assert "wuji_orders_overdue" in joined
    for numerator, denominator in (("accepted_on_time", "due_for_acceptance"),   # 三率 (and rework)
                                   ("resolved_on_time", "resolved"), ("satisfied", "rated")):
        assert any(f'measure="{numerator}"' in e and f'measure="{denominator}"' in e and " / " in e
                   for e in exprs), numerator
    assert any("热点" in panel["title"] for panel in board["panels"])
    assert {"wuji_hotspots_detected_total", "wuji_appeals_repeated_total"} <= used_metrics(board)
    assert 'measure="cross_level"' in joined                                     # 越级访
    assert "wuji_whistles_blown_total" in joined and "wuji_forces_report_in_overdue_total" in joined
    # the metrics service's instances report the same numbers: never summed across instances
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert "max without (instance)" in target["expr"], target["expr"]


def test_the_department_view_shows_one_units_orders_deadlines_and_ratings():
    board = dashboards()["wuji-department"]
    [unit] = board["templating"]["list"]
    assert unit["name"] == "unit" and unit["query"]["query"] == "label_values(wuji_unit_orders, unit)"
    assert unit["multi"] is False and unit["includeAll"] is False
    exprs = [expr for title, expr in dashboard_queries(board) if title != "unit"]
    for expr in exprs:
        assert 'unit=~"$unit"' in expr, expr
    used = used_metrics(board)
    assert {"wuji_unit_orders", "wuji_unit_orders_overdue", "wuji_unit_kpi_count"} <= used
    joined = " ".join(exprs)
    assert 'stage="accept"' in joined and 'stage="resolve"' in joined             # deadlines
    assert 'measure="satisfied"' in joined and 'measure="rated"' in joined        # ratings


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_config_and_the_alerts_pass_their_unit_tests(tmp_path):
    # the config names the rule file by its path in the container
    config = (DEPLOY / "prometheus/prometheus.yml").read_text().replace(
        "/etc/prometheus/alerts.yml", str(DEPLOY / "prometheus/alerts.yml"))
    (tmp_path / "prometheus.yml").write_text(config)
    checks = [[PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")],
              [PROMTOOL, "test", "rules", str(DEPLOY / "prometheus/alerts_test.yml")]]
    for command in checks:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


# --- the image and the files -------------------------------------------------------------------------

def test_the_dockerfile_parses_and_copies_only_what_exists():
    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    instructions = [(i["instruction"], i["value"]) for i in parser.structure]
    assert parser.baseimage == "python:3.11-slim"
    copies = [value.split() for instruction, value in instructions if instruction == "COPY"]
    assert copies
    for args in copies:
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
    runs = " ".join(value for instruction, value in instructions if instruction == "RUN")
    assert '"setuptools<81"' in runs
    assert "./libs/wuji-common" in runs and "./services/*" in runs
    [entrypoint] = [json.loads(value) for instruction, value in instructions if instruction == "ENTRYPOINT"]
    assert entrypoint[-1] == "/app/deploy/entrypoint.sh"
    assert any(args[-2:] == ["deploy/entrypoint.sh", "deploy/entrypoint.sh"] for args in copies)
    user = [value for instruction, value in instructions if instruction == "USER"]
    assert user and user[-1] != "root"


def dockerignore_regex(pattern):
    """A .dockerignore pattern (anchored at the context root; ``**`` any number of directories,
    ``*`` and ``?`` within one path element) as a regular expression."""
    out = []
    for element in pattern.strip("/").split("/"):
        if element == "**":
            out.append("(?:[^/]+/)*")
            continue
        out.append(re.sub(r"\\\*|\\\?", lambda m: "[^/]*" if m.group() == "\\*" else "[^/]",
                          re.escape(element)) + "/")
    return re.compile("".join(out).removesuffix("/") + "$")


def dockerignored(path, patterns):
    """Whether the build context leaves ``path`` out: a pattern excludes a path or a directory above it."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return any(dockerignore_regex(pattern).match(prefix) for pattern in patterns for prefix in prefixes)


@pytest.mark.parametrize("pattern, path, ignored", [
    ("**/.venv", ".venv/bin/python", True), ("**/.venv", "a/b/.venv", True),
    ("tests", "tests/deploy/x.py", True), ("tests", "services/intake/tests", False),
    ("services/*/tests", "services/intake/tests/unit/t.py", True), ("**/*.db", "var/intake.db", True),
    ("**/*.db", "services/x.dbx", False), ("docs", "libs/docs", False),
])
def test_dockerignore_patterns_are_read_like_docker_does(pattern, path, ignored):
    assert dockerignored(path, [pattern]) is ignored


def test_the_build_context_keeps_what_the_image_needs_and_leaves_secrets_out():
    patterns = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "re-inclusion is not modelled here"
    needed = ["libs/wuji-common/pyproject.toml", "libs/wuji-common/wuji_common/metrics.py",
              "libs/wuji-common/wuji_common/reference/divisions.csv", "deploy/entrypoint.sh"]
    for svc in WUJI_SERVICES:
        needed += [f"services/{svc}/pyproject.toml", f"services/{svc}/config.yml",
                   f"services/{svc}/{svc}/service.py", f"services/{svc}/{svc}/migrations/env.py"]
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not dockerignored(path, patterns), f"{path} is left out of the image"
    for path in (".env", ".venv/bin/python", ".git/config", "var/intake.db", "services/intake/tests/conftest.py"):
        assert dockerignored(path, patterns), f"{path} would be sent to the image build"


def test_every_service_package_is_installed_by_the_image():
    packages = sorted(p.parent.name for p in ROOT.glob("services/*/pyproject.toml"))
    assert packages == sorted(WUJI_SERVICES)


def test_the_entrypoint_execs_nameko_with_the_service_config():
    script = (DEPLOY / "entrypoint.sh").read_text()
    assert 'exec nameko run --config "$config" "$SERVICE.service"' in script
    assert '"$SERVICE" db upgrade --load-reference' in script


def deploy_files(*suffixes):
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in suffixes and p.is_file())


@pytest.mark.parametrize("path", deploy_files(".yml", ".yaml"), ids=lambda p: str(p.relative_to(ROOT)))
def test_deploy_yaml_parses(path):
    with open(path, encoding="utf-8") as f:
        documents = [doc for doc in yaml.safe_load_all(f) if doc is not None]   # k8s files hold several
    assert documents


@pytest.mark.parametrize("path", deploy_files(".json"), ids=lambda p: str(p.relative_to(ROOT)))
def test_deploy_json_parses(path):
    assert json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", deploy_files(".sh"), ids=lambda p: str(p.relative_to(ROOT)))
def test_deploy_shell_scripts_parse(path):
    shell = "sh" if path.read_text().startswith("#!/bin/sh") else "bash"
    result = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr

"""notify and metrics work behind the citizen's path (receipts, notices, KPIs): where they share a
box with intake and triage they yield the CPU to them — `make run` starts them niced, the compose
file gives them fewer CPU shares."""
import importlib.util
from pathlib import Path

from wuji_common.local_platform import BACKGROUND, SERVICES, Platform

RUN_LOCAL = Path(__file__).resolve().parents[2] / "deploy" / "run_local.py"


def run_local():
    spec = importlib.util.spec_from_file_location("run_local", RUN_LOCAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_run_starts_notify_and_metrics_niced_and_the_citizens_path_not(tmp_path):
    BACKGROUND_NICE = run_local().BACKGROUND_NICE
    platform = Platform("amqp://guest:guest@127.0.0.1:5672/x", Platform.sqlite_urls(tmp_path), tmp_path / "log",
                        background_nice=BACKGROUND_NICE)
    assert BACKGROUND_NICE > 0 and set(BACKGROUND) == {"notify", "metrics"}
    for service in SERVICES:
        command = platform.command(service)
        assert command[-1] == f"{service}.service"
        assert (command[:3] == ["nice", "-n", str(BACKGROUND_NICE)]) == (service in BACKGROUND)
    # the test suite's platforms (no background_nice) run every service alike
    plain = Platform("amqp://guest:guest@127.0.0.1:5672/x", Platform.sqlite_urls(tmp_path), tmp_path / "log")
    assert all(plain.command(service)[0].endswith("nameko") for service in SERVICES)


def test_compose_gives_notify_and_metrics_fewer_cpu_shares_than_the_citizens_path(compose):
    default = 1024  # Docker's
    shares = {name: compose["services"][name].get("cpu_shares", default) for name in SERVICES}
    assert all(shares[name] < default for name in BACKGROUND)
    assert all(shares[name] == default for name in SERVICES if name not in BACKGROUND)

"""The wuji command against the running platform (five services as processes on the real broker):
a clerk's session from submission to resolution, the review queue, the whistle, KPIs, a CSV import
with its progress and a re-run that registers nothing twice, and the errors and exit codes."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from wuji_cli.main import cli
from wuji_cli.rpc import INVALID, NOT_FOUND, REFUSED, UNREACHABLE, UNSUPPORTED, CliError


def wuji(platform, *args, json_output=True):
    options = ["--amqp-uri", platform.amqp_uri, "--timeout", "20"] + (["--json"] if json_output else [])
    result = CliRunner().invoke(cli, options + [str(a) for a in args], catch_exceptions=False)
    return result


def data(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def eventually(probe, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("condition not reached")


def test_help_everywhere_from_the_installed_command():
    command = shutil.which("wuji", path=str(Path(sys.executable).parent)) or "wuji"
    for args in ([], ["order"], ["order", "accept"], ["appeal", "import"], ["review", "route"], ["kpis"]):
        done = subprocess.run([command, *args, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "Usage: wuji" in done.stdout, done.stderr
    assert "退出码" in subprocess.run([command, "--help"], capture_output=True, text=True).stdout
    assert subprocess.run([command, "order", "accept"], capture_output=True, text=True).returncode == 2


def test_a_clerks_session_from_submission_to_resolution(platform):
    receipt = data(wuji(platform, "appeal", "submit", "--title", "村口路灯不亮", "--content",
                        "阴平镇金寺村村口路灯坏了一个多月，晚上出行不安全。", "--town", "370404101",
                        "--village", "370404101201", "--name", "李四", "--phone", "13912345678"))
    case_no = receipt["case_no"]
    order = eventually(lambda: (data(wuji(platform, "case", "show", case_no))["orders"] or [None])[0])
    unit = order["unit_code"]
    assert case_no in [o["case_no"] for o in data(wuji(platform, "orders", "list", "--unit", unit))]

    accepted = data(wuji(platform, "order", "accept", order["order_no"], "--unit", unit))
    assert accepted["status"] == "accepted"
    data(wuji(platform, "order", "progress", order["order_no"], "--unit", unit, "--note", "已联系供电所"))
    resolved = wuji(platform, "order", "resolve", order["order_no"], "--unit", unit, "--resolution",
                    "已更换灯泡", json_output=False)
    assert resolved.exit_code == 0 and f"已办结：{order['order_no']} → resolved" in resolved.stdout

    # the human view: masked personal data, the timeline and the order, in China time
    shown = eventually(lambda: (lambda r: r if "承办单位已办结" in r.stdout else None)(
        wuji(platform, "case", "show", case_no, json_output=False)))
    assert "李* 139****5678" in shown.stdout and "13912345678" not in shown.stdout
    assert order["order_no"] in shown.stdout and "阴平镇 (370404101)" in shown.stdout
    detail = wuji(platform, "order", "show", order["order_no"], json_output=False)
    assert "已联系供电所" in detail.stdout and "已更换灯泡" in detail.stdout

    # typed errors → clear messages and exit codes
    again = wuji(platform, "order", "accept", order["order_no"], "--unit", unit, json_output=False)
    assert again.exit_code == REFUSED and again.stderr.startswith("错误：triage.accept_order")
    other = wuji(platform, "order", "accept", order["order_no"], "--unit", "dept-police")
    assert other.exit_code == REFUSED and json.loads(other.stderr)["exit_code"] == REFUSED
    assert wuji(platform, "order", "show", "GD19990101000001").exit_code == NOT_FOUND
    invalid = wuji(platform, "appeal", "submit", "--title", "t", "--content", "c", "--town", "370404999",
                   "--anonymous", json_output=False)
    assert invalid.exit_code == INVALID and "location.town_code" in invalid.stderr


def test_review_queue_whistle_kpis_assessment_and_a_call_the_platform_lacks(platform):
    assert isinstance(data(wuji(platform, "review", "list")), list)
    receipt = data(wuji(platform, "appeal", "submit", "--title", "路边占道经营", "--content",
                        "古邵镇主街流动摊贩占道经营，车辆无法通行。", "--town", "370404100", "--anonymous",
                        "--channel", "walk_in"))
    order = eventually(lambda: (data(wuji(platform, "case", "show", receipt["case_no"]))["orders"] or [None])[0])
    operation = data(wuji(platform, "whistle", order["order_no"], "--town", "370404100",
                          "--violation-type", "road_occupation", "--urgency", "urgent"))
    assert operation["order_no"] == order["order_no"] and operation["forces"]
    rows = eventually(lambda: [r for r in data(wuji(platform, "kpis")) if r["appeals"]])
    assert rows[-1]["group"] == "total" and rows[-1]["appeals"] >= 1
    table = wuji(platform, "kpis", json_output=False)
    assert "响应率" in table.stdout and "total" in table.stdout
    month = data(wuji(platform, "assessment", "--level", "town"))
    assert month["level"] == "town" and {"key": "response_rate", "name": "响应率", "higher_is_better": True} \
        in month["indicators"]
    assert "综合得分" in wuji(platform, "assessment", json_output=False).stdout
    assert wuji(platform, "assessment", "--month", "2026-13").exit_code == INVALID
    # a call the platform does not have (an older triage, say): a clear "not available", exit 7
    from wuji_cli.rpc import Platform
    with Platform(platform.amqp_uri, 10) as rpc, pytest.raises(CliError) as err:
        rpc.call("triage", "no_such_call")
    assert err.value.code == UNSUPPORTED and "triage.no_such_call 在当前平台版本中不可用" in err.value.message


def test_csv_import_shows_progress_and_a_rerun_registers_nothing_twice(platform, tmp_path):
    csv_file = tmp_path / "appeals.csv"
    csv_file.write_text(
        "external_id,title,content,town_code,village,name,phone,anonymous\n"
        "hotline-1,井盖缺失,坛山街道文化路井盖缺失,370404001,,王五,13700001111,\n"
        "hotline-2,噪音扰民,夜间施工噪音扰民,370404002,,,,1\n"
        "hotline-3,无效镇街,内容,999999999,,,,1\n", encoding="utf-8")
    first = wuji(platform, "appeal", "import", csv_file)
    assert first.exit_code == INVALID
    summary = json.loads(first.stdout)
    assert [f["line"] for f in summary["failed"]] == [4] and len(summary["imported"]) == 2
    assert "导入诉求" in first.stderr  # the progress bar's label
    second = json.loads(wuji(platform, "appeal", "import", csv_file).stdout)
    assert second["imported"] == summary["imported"]  # the same cases: nothing registered twice


def test_an_unreachable_broker_is_exit_6():
    result = CliRunner().invoke(cli, ["--amqp-uri", "amqp://guest:guest@127.0.0.1:1/", "--timeout", "2",
                                      "case", "show", "YC1"])
    assert result.exit_code == UNREACHABLE and "无法连接消息服务器 amqp://127.0.0.1:1/" in result.stderr

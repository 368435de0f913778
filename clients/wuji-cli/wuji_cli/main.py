"""``wuji``: the platform from a terminal or a script, over RPC.

Every command is one or a few RPC calls on the platform's services (intake, triage, enforcement,
notify, metrics), each bounded by ``--timeout``. Output is a table for people, or JSON with ``--json``;
mutating calls carry an idempotency key (generated, or ``--idempotency-key`` so that a script can
retry safely)."""
import csv
import hashlib
import json
import os
import sys
import uuid
from datetime import datetime

import click

from wuji_cli import __version__, output
from wuji_cli.rpc import FAILED, INVALID, OK, USAGE, CliError, Platform

DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
EXIT_CODES = f"""\b
退出码 (exit codes):
  {OK}  完成 (done)
  {FAILED}  失败 (failed)
  {USAGE}  用法错误 (usage)
  3  未找到 (not found)
  {INVALID}  输入有误 (invalid input; nothing was written)
  5  当前不允许 (not allowed now: not your order, wrong state)
  6  服务不可达或超时 (unreachable or timed out)
  7  平台版本不支持 (not available in this platform version)
  8  未认证：无令牌、令牌过期、被吊销或伪造 (no valid token)"""


class Session:
    """What the group's options set, and the platform connection, opened on first use."""

    def __init__(self, amqp_uri, timeout, json_output, token=None):
        self.amqp_uri = amqp_uri
        self.timeout = timeout
        self.json = json_output
        self.token = token
        self._platform = None

    def call(self, service, method, *args, **kwargs):
        if self._platform is None:
            self._platform = Platform(self.amqp_uri, self.timeout, self.token).__enter__()
        return self._platform.call(service, method, *args, **kwargs)

    def close(self):
        if self._platform is not None:
            self._platform.__exit__(None, None, None)

    def show(self, data, human):
        output.as_json(data) if self.json else human(data)


class Group(click.Group):
    """Turns a CliError anywhere below into its message and exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CliError as exc:
            session = ctx.obj if isinstance(ctx.obj, Session) else None
            if session is not None and session.json:
                click.echo(json.dumps({"error": exc.message, "exit_code": exc.code, "fields": exc.details},
                                      ensure_ascii=False), err=True)
            else:
                click.echo(f"错误：{exc.message}", err=True)
                for field, messages in _flatten(exc.details or {}):
                    click.echo(f"  {field}: {messages}", err=True)
            ctx.exit(exc.code)


def _read_token(value):
    """A token given as such, or the path of a file holding one (e.g. make run's var/auth/*.token)."""
    if value and os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read().strip()
    return value or None


def _flatten(details, prefix=""):
    for key, value in details.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", "；".join(map(str, value)) if isinstance(value, list) else str(value)


pass_session = click.make_pass_decorator(Session)


def new_key():
    return uuid.uuid4().hex


def idempotency_option(func):
    return click.option("--idempotency-key", default=new_key, show_default="随机生成",
                        help="重试时传同一个键，平台只执行一次 (a retry with the same key runs once)")(func)


@click.group(cls=Group, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--amqp-uri", envvar=["WUJI_AMQP_URI", "AMQP_URI"], default=DEFAULT_AMQP_URI,
              show_default=True, help="消息服务器地址（环境变量 WUJI_AMQP_URI 或 AMQP_URI）")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=10.0, show_default=True,
              help="每次调用的超时秒数")
@click.option("--json", "json_output", is_flag=True, help="输出 JSON（供脚本使用）")
@click.option("--token", envvar="WUJI_TOKEN", metavar="TOKEN|FILE",
              help="访问令牌，或存放令牌的文件（环境变量 WUJI_TOKEN）；由 wuji token issue 签发")
@click.version_option(__version__, prog_name="wuji")
@click.pass_context
def cli(ctx, amqp_uri, timeout, json_output, token):
    """五集平台命令行工具：受理、工单、吹哨报到、考核。

    Wuji from a terminal or a script, over RPC: submit and import appeals, follow a case, work a
    unit's orders, route from the review queue, blow the whistle, read KPIs and the assessment."""
    ctx.obj = Session(amqp_uri, timeout, json_output, _read_token(token))
    ctx.call_on_close(ctx.obj.close)


# --- appeals (intake) ---------------------------------------------------------------------------

@cli.group()
def appeal():
    """诉求：登记与批量导入 (submit and import appeals)."""


def _appeal_payload(title, content, town, village, address, channel, name, phone, id_number, email,
                    anonymous, attachments=()):
    citizen = None if anonymous else {"name": name, "phone": phone, "id_number": id_number or None,
                                      "email": email or None}
    return {"channel": channel, "title": title, "content": content, "anonymous": bool(anonymous),
            "citizen": citizen, "attachments": list(attachments),
            "location": {"town_code": town, "village": village or None, "address": address or None}}


CHANNELS = click.Choice(["hotline", "walk_in", "web", "wechat", "grid_patrol", "video"])


@appeal.command("submit")
@click.option("--title", required=True, help="标题（不超过100字）")
@click.option("--content", required=True, help="诉求内容")
@click.option("--town", required=True, help="镇街代码，如 370404101（阴平镇）")
@click.option("--village", help="村居代码")
@click.option("--address", help="详细地址（不公开）")
@click.option("--channel", type=CHANNELS, default="hotline", show_default=True, help="受理渠道")
@click.option("--name", help="诉求人姓名（实名诉求必填）")
@click.option("--phone", help="联系电话（实名诉求必填）")
@click.option("--id-number", help="身份证号")
@click.option("--email", help="电子邮箱")
@click.option("--anonymous", is_flag=True, help="匿名诉求")
@click.option("--attachment", "attachments", multiple=True, help="附件链接，可重复")
@idempotency_option
@pass_session
def appeal_submit(session, idempotency_key, attachments, **fields):
    """登记一件诉求 (intake.submit_appeal)，打印案件编号和查询码。"""
    if not fields["anonymous"] and not (fields["name"] and fields["phone"]):
        raise click.UsageError("实名诉求须给出 --name 和 --phone，或使用 --anonymous")
    result = session.call("intake", "submit_appeal", _appeal_payload(**fields, attachments=attachments),
                          idempotency_key=idempotency_key)
    session.show(result, lambda r: output.fields([("案件编号", r["case_no"]), ("状态", r["status"]),
                                                  ("查询码", r["tracking_token"])]))


IMPORT_COLUMNS = ("title", "content", "town_code")


@appeal.command("import")
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--channel", type=CHANNELS, default="hotline", show_default=True,
              help="没有 channel 列时使用的受理渠道")
@pass_session
def appeal_import(session, csv_file, channel):
    """从 CSV 批量导入诉求（带进度条）。

    \b
    列 (columns): title, content, town_code 必填；village, address, channel, name, phone,
    id_number, email, anonymous (1/true/是), external_id 可选。
    每行的幂等键取 external_id，否则取该行内容的摘要：同一文件重复导入不会重复登记。
    (Re-running an import registers nothing twice.)"""
    rows = list(csv.DictReader(csv_file))
    missing = [c for c in IMPORT_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise click.UsageError(f"CSV 缺少列：{', '.join(missing)}")
    imported, failed = [], []
    with click.progressbar(list(enumerate(rows, start=2)), label="导入诉求", file=sys.stderr,
                           show_pos=True) as bar:
        for line, row in bar:
            anonymous = (row.get("anonymous") or "").strip().lower() in ("1", "true", "yes", "是")
            payload = _appeal_payload(row["title"], row["content"], row["town_code"], row.get("village"),
                                      row.get("address"), row.get("channel") or channel, row.get("name"),
                                      row.get("phone"), row.get("id_number"), row.get("email"), anonymous)
            key = row.get("external_id") or hashlib.sha256(
                json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:40]
            try:
                result = session.call("intake", "submit_appeal", payload, idempotency_key=f"import:{key}")
                imported.append({"line": line, "case_no": result["case_no"]})
            except CliError as exc:
                if exc.code not in (INVALID,):
                    raise  # the platform is away: stop, a re-run continues where this stopped
                failed.append({"line": line, "error": exc.message, "fields": exc.details})
    summary = {"imported": imported, "failed": failed}

    def human(s):
        click.echo(f"导入 {len(s['imported'])} 件，失败 {len(s['failed'])} 件")
        if s["failed"]:
            output.table([{**f, "fields": "; ".join(f"{k}: {v}" for k, v in _flatten(f["fields"] or {}))}
                          for f in s["failed"]], [("line", "行"), ("error", "原因"), ("fields", "字段")])
    session.show(summary, human)
    if failed:
        sys.exit(INVALID)


# --- a case -----------------------------------------------------------------------------------

@cli.group()
def case():
    """案件：查看 (a case and its timeline)."""


@case.command("show")
@click.argument("case_no")
@pass_session
def case_show(session, case_no):
    """案件详情、办理时间线和工单 (intake.get_appeal + triage.find_orders)；个人信息已脱敏。"""
    appeal_ = session.call("intake", "get_appeal", case_no)
    orders = session.call("triage", "find_orders", case_no=case_no)
    data = {**appeal_, "orders": orders}

    def human(d):
        citizen = d.get("citizen") or {}
        output.fields([("案件编号", d["case_no"]), ("标题", d["title"]), ("状态", d["status"]),
                       ("渠道", d["channel"]), ("镇街", _town(d["town_code"])),
                       ("受理时间", output.china_time(d["received_at"])),
                       ("诉求人", "匿名" if d["anonymous"] else f"{citizen.get('name')} {citizen.get('phone')}"),
                       ("满意度", d.get("satisfaction"))])
        click.echo("\n办理时间线")
        output.table(d["timeline"], [(lambda t: output.china_time(t["at"]), "时间"), ("status", "状态"),
                                     ("text", "事项")])
        click.echo("\n工单")
        _orders_table(d["orders"])
    session.show(data, human)


def _town(code):
    from wuji_common.reference import towns
    return f"{towns().get(code, '')} ({code})" if code else None


def _orders_table(orders):
    output.table(orders, [("order_no", "工单编号"), ("status", "状态"), ("unit_name", "承办单位"),
                          ("item_name", "事项"), (lambda o: output.china_time(o.get("accept_due_at")), "签收时限"),
                          (lambda o: output.china_time(o.get("resolve_due_at")), "办结时限")])


# --- orders (triage) ----------------------------------------------------------------------------

ORDER_STATUSES = click.Choice(["pending_review", "dispatched", "accepted", "returned", "resolved",
                               "reopened", "closed", "suspended"])


@cli.group()
def orders():
    """单位的工单列表 (a unit's orders)."""


@orders.command("list")
@click.option("--unit", required=True, help="单位代码，如 town-370404101")
@click.option("--status", type=ORDER_STATUSES, help="只看某一状态")
@click.option("--limit", type=click.IntRange(1, 10000), default=200, show_default=True)
@pass_session
def orders_list(session, unit, status, limit):
    """列出一个单位的工单，最早的在前 (triage.find_orders)。"""
    rows = session.call("triage", "find_orders", unit_code=unit, status=status, limit=limit)
    session.show(rows, _orders_table)


@cli.group()
def order():
    """工单办理：签收（报到）、进展、办结、退单 (work an order)."""


@order.command("show")
@click.argument("order_no")
@pass_session
def order_show(session, order_no):
    """工单详情与办理进展 (triage.get_order)。"""
    data = session.call("triage", "get_order", order_no)
    session.show(data, _order_detail)


def _order_detail(o):
    output.fields([("工单编号", o["order_no"]), ("案件编号", o["case_no"]), ("状态", o["status"]),
                   ("承办单位", f"{o['unit_name']} ({o['unit_code']})"), ("事项", o.get("item_name")),
                   ("标题", o.get("title")), ("签收时限", output.china_time(o.get("accept_due_at"))),
                   ("办结时限", output.china_time(o.get("resolve_due_at"))),
                   ("办结情况", o.get("resolution"))])
    if o.get("progress"):
        click.echo("\n办理进展")
        output.table(o["progress"], [(lambda p: output.china_time(p["at"]), "时间"), ("note", "进展")])


def _order_action(method, verb, *text_options):
    """A command acting on one of the unit's orders: ORDER_NO --unit U [--<text>] [--idempotency-key]."""
    def run(session, order_no, unit, idempotency_key, **texts):
        result = session.call("triage", method, order_no, unit, *texts.values(), idempotency_key=idempotency_key)

        def human(o):
            click.echo(f"{verb}：{o['order_no']} → {o['status']}")
            if o.get("successor_order_no"):
                click.echo(f"已重新派单：{o['successor_order_no']}")
        session.show(result, human)
    for option, help_text in reversed(text_options):
        run = click.option(f"--{option}", required=True, help=help_text)(run)
    run = idempotency_option(run)
    run = click.option("--unit", required=True, help="本单位代码")(run)
    run = click.argument("order_no")(run)
    return pass_session(run)


order.command("accept", help="签收工单（部门报到）(triage.accept_order)。")(_order_action("accept_order", "已签收"))
order.command("progress", help="记录办理进展 (triage.add_progress)。")(
    _order_action("add_progress", "已记录进展", ("note", "进展说明")))
order.command("resolve", help="办结工单，之后邀请诉求人评价 (triage.resolve_order)。")(
    _order_action("resolve_order", "已办结", ("resolution", "办理结果")))
order.command("return", help="退单：不属于本单位职责，平台重新派单 (triage.return_order)。")(
    _order_action("return_order", "已退单", ("reason", "退单理由")))


# --- the review queue (triage) ------------------------------------------------------------------

@cli.group()
def review():
    """人工分拨：待研判队列 (the review queue)."""


@review.command("list")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@pass_session
def review_list(session, limit):
    """待人工研判的工单，最急的在前 (triage.pending_review)。"""
    rows = session.call("triage", "pending_review", limit=limit)
    session.show(rows, lambda r: output.table(r, [
        ("order_no", "工单编号"), ("case_no", "案件编号"), ("title", "标题"), ("town_code", "镇街"),
        ("review_reason", "原因"), ("suggested_category", "建议大类"), ("confidence", "置信度")]))


@review.command("route")
@click.argument("order_no")
@click.option("--unit", required=True, help="派往的单位代码")
@click.option("--category", required=True, help="大类代码，如 urban-rural")
@click.option("--item", required=True, help="事项代码，如 road-damage")
@idempotency_option
@pass_session
def review_route(session, order_no, unit, category, item, idempotency_key):
    """人工派单或改派 (triage.route_manually)。"""
    result = session.call("triage", "route_manually", order_no, unit, category, item,
                          idempotency_key=idempotency_key)
    session.show(result, lambda o: click.echo(f"已派单：{o['order_no']} → {o.get('unit_name') or unit}"
                                               f"（{o['status']}）"))


# --- joint enforcement ----------------------------------------------------------------------------

@cli.command()
@click.argument("order_no")
@click.option("--town", required=True, help="吹哨的镇街代码")
@click.option("--violation-type", required=True, help="违法类型，如 illegal_construction、road_occupation")
@click.option("--urgency", type=click.Choice(["emergency", "urgent", "normal"]), default="normal",
              show_default=True)
@idempotency_option
@pass_session
def whistle(session, order_no, town, violation_type, urgency, idempotency_key):
    """吹哨：为工单发起联合执法，召集有管辖权的执法力量报到 (enforcement.blow_whistle)。"""
    result = session.call("enforcement", "blow_whistle", order_no, violation_type, town, urgency,
                          idempotency_key=idempotency_key)

    def human(op):
        output.fields([("行动编号", op["operation_id"]), ("工单编号", op.get("order_no")),
                       ("违法类型", op.get("violation_name") or op.get("violation_type")),
                       ("状态", op.get("status_text") or op.get("status")),
                       ("报到时限", output.china_time(op.get("report_in_due_at")))])
        click.echo("\n召集力量")
        output.table(op.get("forces") or [], [("force_code", "力量"), ("force_name", "名称"),
                                              ("assigned_team_name", "派出队伍"), ("status_text", "状态")])
    session.show(result, human)


# --- KPIs and assessment (metrics) ------------------------------------------------------------------

def _today():
    """Today in China: KPIs count calendar days of China time (a UTC date lags by 8 hours)."""
    return datetime.now(output.CHINA_TIME).date()


def _month_start():
    return _today().replace(day=1).isoformat()


@cli.command()
@click.option("--start", default=_month_start, show_default="本月1日", help="起始日（含）YYYY-MM-DD")
@click.option("--end", default=lambda: _today().isoformat(), show_default="今天", help="截止日（含）")
@click.option("--group-by", type=click.Choice(["town", "unit", "category"]), default="town", show_default=True)
@pass_session
def kpis(session, start, end, group_by):
    """考核指标：响应率、按时办结率、满意率、返工率 (metrics.kpis)。"""
    rows = session.call("metrics", "kpis", start, end, group_by)
    session.show(rows, lambda r: output.table(r, [
        ("group", "分组"), ("name", "名称"), ("appeals", "诉求"), ("orders", "工单"),
        (lambda x: output.percent(x.get("response_rate")), "响应率"),
        (lambda x: output.percent(x.get("on_time_resolution_rate")), "按时办结率"),
        (lambda x: output.percent(x.get("satisfaction_rate")), "满意率"),
        (lambda x: output.percent(x.get("rework_rate")), "返工率")]))


@cli.command()
@click.option("--month", default=lambda: _today().strftime("%Y-%m"), show_default="本月", help="YYYY-MM")
@click.option("--level", type=click.Choice(["unit", "town"]), default="unit", show_default=True)
@pass_session
def assessment(session, month, level):
    """月度考核表：各指标、综合得分与排名 (metrics.assessment)。"""
    table_ = session.call("metrics", "assessment", month, level)

    def human(t):
        click.echo(f"{t['month']} 考核（{'单位' if t['level'] == 'unit' else '镇街'}，权重 {t['weights_version']}）")
        output.table(t["rows"], [("rank", "排名"), ("name", "名称"), ("score", "综合得分"), ("orders", "工单")] + [
            ((lambda key: lambda r: output.percent(r.get(key)))(i["key"]), i["name"]) for i in t["indicators"]])
    session.show(table_, human)


def _generic_table(rows):
    if isinstance(rows, dict):
        rows = rows.get("rows") or [rows]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    output.table(rows, [(c, c) for c in columns])


@cli.command("force-assessment")
@click.option("--town", help="只看一个镇街")
@click.option("--since", help="起始时间（ISO 8601）")
@click.option("--until", help="截止时间（ISO 8601）")
@pass_session
def force_assessment(session, town, since, until):
    """执法力量报到考核：召集、按时、迟到、催报、上报督办 (enforcement.assessment)。"""
    rows = session.call("enforcement", "assessment", town, since, until)
    session.show(rows, _generic_table)


# --- notify: replay failed deliveries ------------------------------------------------------------

@cli.group()
def deliveries():
    """通知投递 (notify)."""


@deliveries.command("replay")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@pass_session
def deliveries_replay(session, limit):
    """重发投递失败的通知（带进度条）(notify.failed + notify.replay)。"""
    failed = session.call("notify", "failed", limit)
    replayed = []
    with click.progressbar(failed, label="重发通知", file=sys.stderr, show_pos=True) as bar:
        for delivery in bar:
            replayed.append(session.call("notify", "replay", delivery["delivery_id"],
                                         idempotency_key=new_key()))
    session.show({"replayed": len(replayed), "deliveries": replayed},
                 lambda r: click.echo(f"已重发 {r['replayed']} 条通知"))


# --- access tokens (the issuer's side: needs the signing key) ------------------------------------

@cli.group()
def token():
    """访问令牌：签发、吊销、轮换签名密钥 (issue, revoke and rotate access tokens).

    \b
    The signing key is the issuer's alone: --keys DIR (signing.jwk, public.jwks), else $WUJI_AUTH_DIR,
    else var/auth. Services get public.jwks as WUJI_AUTH_PUBLIC_KEYS."""


def keys_option(func):
    return click.option("--keys", "keys_dir", envvar="WUJI_AUTH_DIR", default="var/auth", show_default=True,
                        type=click.Path(file_okay=False), help="签名密钥目录")(func)


@token.command("keygen")
@keys_option
def token_keygen(keys_dir):
    """生成新的签名密钥（轮换）：旧公钥仍保留，旧令牌到期前继续有效 (rotate the signing key)."""
    from wuji_common import auth
    kid = auth.KeyDirectory(keys_dir).rotate()
    click.echo(f"新签名密钥 {kid}；请把 {keys_dir}/public.jwks 下发给各服务 (WUJI_AUTH_PUBLIC_KEYS)")


@token.command("retire-key")
@click.argument("kid")
@keys_option
def token_retire_key(kid, keys_dir):
    """停止接受某个旧密钥签发的令牌 (drop a public key once its tokens have expired)."""
    from wuji_common import auth
    try:
        auth.KeyDirectory(keys_dir).retire(kid)
    except ValueError as exc:
        raise CliError(str(exc), INVALID) from None
    click.echo(f"已停用密钥 {kid}；请重新下发 {keys_dir}/public.jwks")


ROLE_CHOICE = click.Choice(["grid_worker", "unit_clerk", "unit_head", "force", "dispatcher", "supervisor",
                            "district_leader", "integrator", "ops", "service", "admin"])


@token.command("issue")
@click.option("--role", type=ROLE_CHOICE, required=True)
@click.option("--subject", required=True, help="持有人，如 staff:zhangsan 或 service:intake")
@click.option("--unit", help="单位代码（网格员、经办人、负责人必填）")
@click.option("--town", "towns", multiple=True, help="限定镇街，可重复")
@click.option("--force", "force_code", help="执法力量代码（force 必填）")
@click.option("--ttl", default="8h", show_default=True, help="有效期，如 15m、8h、30d")
@keys_option
@pass_session
def token_issue(session, role, subject, unit, towns, force_code, ttl, keys_dir):
    """签发令牌，打印令牌及其编号 (jti) 和到期时间。"""
    from wuji_common import auth
    keys = auth.KeyDirectory(keys_dir)
    if not keys.exists():
        raise CliError(f"{keys_dir} 中没有签名密钥：先运行 wuji token keygen", USAGE)
    try:
        issued, claims = auth.issue_token(keys.signing_key(), subject, role, unit_code=unit,
                                          town_codes=towns, force_code=force_code,
                                          ttl_seconds=auth.parse_duration(ttl))
    except ValueError as exc:
        raise CliError(str(exc), INVALID) from None
    result = {"token": issued, "jti": claims["jti"],
              "expires_at": datetime.fromtimestamp(claims["exp"]).astimezone().isoformat()}

    def human(r):   # the token alone on stdout, so that TOKEN=$(wuji token issue ...) works
        click.echo(r["token"])
        click.echo(f"编号 {r['jti']}，到期 {r['expires_at']}", err=True)
    session.show(result, human)


@token.command("revoke")
@click.argument("token_or_jti")
@click.option("--expires-at", type=click.DateTime(), help="只给编号时：令牌到期时间（默认 30 天后）")
@pass_session
def token_revoke(session, token_or_jti, expires_at):
    """吊销令牌：各服务收到 auth.token_revoked 后立即拒绝它 (revoke a token, or a jti)."""
    import time
    from wuji_common import auth
    if token_or_jti.count(".") == 2:
        import jwt
        claims = jwt.decode(token_or_jti, options={"verify_signature": False})
        jti, exp = claims["jti"], claims["exp"]
    else:
        jti = token_or_jti
        exp = expires_at.timestamp() if expires_at else time.time() + 30 * 86400
    try:
        auth.publish_revocation(session.amqp_uri, jti, exp)
    except Exception as exc:  # noqa: BLE001  (unreachable broker, or no service queue declared)
        raise CliError(f"吊销未能发布：{exc}", FAILED) from None
    session.show({"revoked": jti}, lambda r: click.echo(f"已吊销 {r['revoked']}"))


def main():
    """Console script: ``wuji``. Exit code 2 for usage errors is click's own."""
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    cli(prog_name="wuji")


if __name__ == "__main__":
    main()



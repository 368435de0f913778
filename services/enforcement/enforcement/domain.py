"""Plain rules of joint enforcement (吹哨报到): who is competent for a violation, when the called forces
must report in, and how an operation moves on. No I/O, no framework: handlers apply these rules
inside a unit of work, and unit tests call them directly.

An operation's life:

    called ──(every called force reported in)──▶ assembled ──complete_operation──▶ completed

Each called force, on its own: ``called`` → ``reported_in``, or ``called`` → ``overdue`` (marked once
by the deadline watcher) → ``reported_in`` (late). A late force still reports in; meanwhile it is
reminded (催报) and then escalated to the district (上报督办), each once, and its lateness counts in
its assessment (考核).

A violation type with a legal procedure (e.g. illegal construction) adds steps that must follow one
another, none early:

    rectification notice (限期整改/拆除通知书) ──waiting period──▶ follow-up inspection (复查)
        ├─ rectified ──────────────────────────────────────────────▶ outcome with evidence
        └─ not rectified ──▶ joint enforcement (联合执法, every force reported in) ──▶ outcome
"""
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

from wuji_common import privacy

URGENCIES = ("emergency", "urgent", "normal")

CALLED, ASSEMBLED, COMPLETED = "called", "assembled", "completed"
OPERATION_STATUSES = (CALLED, ASSEMBLED, COMPLETED)
OPEN_STATUSES = (CALLED, ASSEMBLED)

FORCE_CALLED, FORCE_OVERDUE, FORCE_REPORTED_IN = "called", "overdue", "reported_in"
FORCE_STATUSES = (FORCE_CALLED, FORCE_OVERDUE, FORCE_REPORTED_IN)

LEAD, ASSIST = "lead", "assist"

# an operation this urgent makes the town's plan be revised at once
REPLAN_URGENCIES = ("emergency", "urgent")

# legal procedure steps, in order
NOTICE_ISSUED, INSPECTED, ENFORCED, CONCLUDED = "notice_issued", "inspected", "enforced", "concluded"
PROCEDURE_STEPS = (NOTICE_ISSUED, INSPECTED, ENFORCED, CONCLUDED)
PROCEDURE_STEP_TEXT = {
    None: "待下达限期整改通知", NOTICE_ISSUED: "已下达通知，整改期内", INSPECTED: "已复查",
    ENFORCED: "已联合执法", CONCLUDED: "已办结",
}

ABSENCE_KINDS = ("leave", "sick", "training", "other_duty")  # 请假, 病假, 培训, 另有勤务

# China keeps one time zone and no daylight saving: the days of a plan are its local dates
LOCAL = timezone(timedelta(hours=8))

DEFAULT_OPERATION_DUE_HOURS = {"emergency": 24, "urgent": 72, "normal": 168}
DEFAULT_FOLLOW_UP = {"remind_after_minutes": {"emergency": 5, "urgent": 15, "normal": 60},
                     "escalate_after_minutes": {"emergency": 30, "urgent": 120, "normal": 480}}

STATUS_TEXT = {
    CALLED: "已吹哨，等待报到",
    ASSEMBLED: "各执法力量已报到",
    COMPLETED: "联合执法已完成",
}

FORCE_STATUS_TEXT = {
    FORCE_CALLED: "待报到",
    FORCE_OVERDUE: "报到超时",
    FORCE_REPORTED_IN: "已报到",
}


class ReferenceDataError(ValueError):
    """The shipped (or a district's own) reference files contradict each other."""


# --- reference data: forces, their teams, and legal competence -----------------------------------

@dataclass(frozen=True)
class Force:
    """An enforcement force (执法力量), e.g. public_security 公安; ``unit_code`` is its district
    department in wuji_common's units, where there is one."""
    code: str
    name: str
    unit_code: str | None
    sort_order: int


@dataclass(frozen=True)
class Team:
    """A team of a force that serves one town (e.g. 峄城分局古邵派出所)."""
    code: str
    name: str
    force_code: str
    town_code: str
    source: str


@dataclass(frozen=True)
class ViolationType:
    """A violation type and the forces legally competent for it: ``lead`` (主办) first, then those
    who assist (协办); ``report_in_minutes`` gives the report-in deadline for each urgency."""
    code: str
    name: str
    lead: str
    assist: tuple
    legal_basis: str | None
    report_in_minutes: dict = field(default_factory=dict)
    # {"notice": "限期拆除通知书", "waiting_days": 10} for a case with a legal procedure, else None
    procedure: dict | None = None
    operation_due_hours: dict = field(default_factory=lambda: dict(DEFAULT_OPERATION_DUE_HOURS))
    follow_up: dict = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_FOLLOW_UP.items()})

    @property
    def forces(self):
        return (self.lead, *self.assist)

    def role_of(self, force_code):
        return LEAD if force_code == self.lead else ASSIST


def parse_forces(rows, town_codes):
    """forces.csv rows → (forces, teams), checking that every team serves a known town and that a
    force is described the same way on every row."""
    forces, teams = {}, []
    for row in rows:
        code = row["force_code"].strip()
        force = Force(code=code, name=row["force_name"].strip(),
                      unit_code=row.get("unit_code", "").strip() or None,
                      sort_order=forces[code].sort_order if code in forces else len(forces) + 1)
        if code in forces and forces[code] != force:
            raise ReferenceDataError(f"force {code} is named differently on different rows")
        forces[code] = force
        town_code = row["town_code"].strip()
        if town_code not in town_codes:
            raise ReferenceDataError(f"team {row['team_code']} serves unknown town {town_code}")
        teams.append(Team(code=row["team_code"].strip(), name=row["team_name"].strip(), force_code=code,
                          town_code=town_code, source=row.get("source", "").strip() or "demo"))
    codes = [t.code for t in teams]
    if len(codes) != len(set(codes)):
        raise ReferenceDataError("team codes must be unique")
    return list(forces.values()), teams


def parse_competence(doc, force_codes):
    """competence.yml → violation types, checking forces and deadlines."""
    defaults = _complete(doc.get("report_in_minutes") or {}, "report_in_minutes")
    due_hours = _complete(doc.get("operation_due_hours") or DEFAULT_OPERATION_DUE_HOURS,
                          "operation_due_hours")
    follow = doc.get("report_in_follow_up") or DEFAULT_FOLLOW_UP
    follow_up = {k: _complete(follow.get(k) or {}, f"report_in_follow_up.{k}")
                 for k in ("remind_after_minutes", "escalate_after_minutes")}
    for urgency in URGENCIES:
        if follow_up["escalate_after_minutes"][urgency] <= follow_up["remind_after_minutes"][urgency]:
            raise ReferenceDataError(f"report_in_follow_up: {urgency} must escalate after reminding")
    result = []
    for code, entry in (doc.get("violation_types") or {}).items():
        assist = tuple(entry.get("assist") or ())
        forces = (entry["lead"], *assist)
        unknown = [f for f in forces if f not in force_codes]
        if unknown:
            raise ReferenceDataError(f"{code}: unknown forces {', '.join(unknown)}")
        if len(set(forces)) != len(forces):
            raise ReferenceDataError(f"{code}: a force is listed twice")
        minutes = {**defaults, **_minutes(entry.get("report_in_minutes") or {}, code)}
        result.append(ViolationType(
            code=code, name=entry["name"], lead=entry["lead"], assist=assist,
            legal_basis=entry.get("legal_basis"), report_in_minutes=minutes,
            procedure=_procedure(entry.get("procedure"), code), operation_due_hours=due_hours,
            follow_up=follow_up))
    return result


def _procedure(entry, where):
    if entry is None:
        return None
    days = entry.get("waiting_days")
    if not isinstance(days, int) or days <= 0 or not entry.get("notice"):
        raise ReferenceDataError(f"{where}: a procedure needs a notice and positive waiting_days")
    return {"notice": entry["notice"], "waiting_days": days}


def _complete(mapping, where):
    mapping = _minutes(mapping, where)
    missing = [u for u in URGENCIES if u not in mapping]
    if missing:
        raise ReferenceDataError(f"{where} lacks {', '.join(missing)}")
    return mapping


def _minutes(mapping, where):
    for urgency, minutes in mapping.items():
        if urgency not in URGENCIES:
            raise ReferenceDataError(f"{where}: unknown urgency {urgency}")
        if not isinstance(minutes, int) or minutes <= 0:
            raise ReferenceDataError(f"{where}: {urgency} must be a positive number of minutes")
    return dict(mapping)


# --- operations -----------------------------------------------------------------------------------

def operation_id_for(whistle_at: datetime, sequence: int):
    """Human-readable and unique: CZ (处置) + date + sequence, e.g. CZ20261125000012."""
    return f"CZ{whistle_at:%Y%m%d}{sequence:06d}"


def report_in_due_at(whistle_at: datetime, urgency: str, report_in_minutes: dict):
    return whistle_at + timedelta(minutes=report_in_minutes[urgency])


def within_deadline(reported_at: datetime, due_at: datetime):
    return reported_at <= due_at


def not_reported_in(force_statuses: dict):
    """Codes of the called forces that have not reported in yet (late or not)."""
    return sorted(code for code, status in force_statuses.items() if status != FORCE_REPORTED_IN)


def status_after_report_in(force_statuses: dict):
    """The operation is assembled (集结完毕) once every called force has reported in."""
    return ASSEMBLED if not not_reported_in(force_statuses) else CALLED


# the outcome travels to triage and on to the citizen: enforcement staff sometimes write a party's
# phone or ID number into it, which must not leave in an event
def redact_outcome(text):
    return privacy.redact_text(text)


# --- report-in follow-up and assessment -----------------------------------------------------------

def follow_up_times(due_at: datetime, urgency: str, follow_up: dict):
    """(remind_at, escalate_at) of a called force: minutes after its report-in deadline."""
    return (due_at + timedelta(minutes=follow_up["remind_after_minutes"][urgency]),
            due_at + timedelta(minutes=follow_up["escalate_after_minutes"][urgency]))


def minutes_late(due_at: datetime, reported_at: datetime | None, now: datetime):
    """How late a force was (or still is, if it has not reported in): whole minutes, 0 if in time."""
    return max(0, int(((reported_at or now) - due_at).total_seconds() // 60))


# --- legal procedure ------------------------------------------------------------------------------
# Each check returns why the step may not be taken now (Chinese, shown to the caller), or None.

def notice_refusal(procedure, step, status, lead_reported_in):
    if procedure is None:
        return "该违法类型无限期整改程序"
    if status == COMPLETED:
        return "联合执法行动已完成"
    if step is not None:
        return f"已下达{procedure['notice']}，不能重复下达"
    if not lead_reported_in:
        return "主办执法力量尚未报到，不能下达通知"
    return None


def period_ends_at(issued_at: datetime, waiting_days: int):
    return issued_at + timedelta(days=waiting_days)


def inspection_refusal(step, now: datetime, ends_at: datetime | None):
    if step is None:
        return "尚未下达限期整改通知，不能复查"
    if step != NOTICE_ISSUED:
        return "已复查，不能重复复查"
    if now < ends_at:
        return f"整改期限至 {ends_at.astimezone(LOCAL):%Y-%m-%d %H:%M} 届满，期满前不能复查"
    return None


def enforcement_refusal(step, rectified, not_reported):
    if step is None:
        return "尚未下达限期整改通知，不能联合执法"
    if step == NOTICE_ISSUED:
        return "整改期满复查前不能联合执法"
    if step != INSPECTED:
        return "已联合执法，不能重复执行"
    if rectified:
        return "复查已整改到位，无需联合执法"
    if not_reported:
        return f"尚有执法力量未报到：{'、'.join(not_reported)}"
    return None


def completion_refusal(procedure, step, rectified, evidence):
    """A case with a legal procedure concludes after joint enforcement, or after an inspection that
    found it rectified, and only with evidence."""
    if procedure is None:
        return None
    if step == INSPECTED and rectified:
        pass
    elif step != ENFORCED:
        return f"法定程序未完成（{PROCEDURE_STEP_TEXT[step]}），不能办结"
    if not evidence:
        return "办结须附证据"
    return None


# --- scheduling: local days and due times ---------------------------------------------------------

def local_day(moment: datetime) -> date:
    return moment.astimezone(LOCAL).date()


def hours_since(day: date, moment: datetime) -> float:
    """Hours from local midnight of ``day`` to ``moment``."""
    start = datetime.combine(day, time(0), tzinfo=LOCAL)
    return (moment - start).total_seconds() / 3600


def clock_hours(text: str) -> float:
    """"17:30" → 17.5 ("24:00" is the end of the day)."""
    hours, minutes = text.split(":")
    return int(hours) + int(minutes) / 60


def operation_due_at(start: datetime, urgency: str, due_hours: dict):
    """When a joint operation should be carried out: hours after the whistle, or after the end of
    its statutory waiting period."""
    return start + timedelta(hours=due_hours[urgency])


# --- rosters --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TeamRoster:
    """A team's working pattern: its duty days, hours, the cap on operations it takes on one day,
    the officers one operation needs, and the towns it may act in (its jurisdiction)."""
    team_code: str
    duty_days: str
    work_start: str
    work_end: str
    max_concurrent_operations: int
    officers_per_operation: int
    jurisdiction: tuple


@dataclass(frozen=True)
class Officer:
    code: str
    team_code: str
    post: str
    duty_days: str
    source: str


def parse_rosters(doc, forces, teams, town_codes):
    """rosters.yml → (district teams, team rosters, officers). Demo officers are generated: a team
    has ``officers`` of them; in a seven-day force each rests one weekday in turn."""
    source = doc.get("source") or "demo"
    by_force = doc.get("forces") or {}
    force_codes = {f.code for f in forces}
    unknown = set(by_force) - force_codes
    if unknown:
        raise ReferenceDataError(f"rosters: unknown forces {', '.join(sorted(unknown))}")
    district = []
    for entry in doc.get("district_teams") or ():
        if entry["force_code"] not in force_codes or str(entry["town_code"]) not in town_codes:
            raise ReferenceDataError(f"district team {entry['team_code']}: unknown force or town")
        district.append(Team(code=entry["team_code"], name=entry["team_name"],
                             force_code=entry["force_code"], town_code=str(entry["town_code"]),
                             source=source))
    all_teams = [*teams, *district]
    if len({t.code for t in all_teams}) != len(all_teams):
        raise ReferenceDataError("team codes must be unique")
    whole = {e["team_code"] for e in doc.get("district_teams") or () if e.get("jurisdiction") == "all"}
    rosters, officers = [], []
    for team in all_teams:
        spec = by_force.get(team.force_code)
        if spec is None:
            raise ReferenceDataError(f"rosters: no roster for force {team.force_code}")
        duty_days = str(spec["duty_days"])
        start, end = spec["hours"].split("-")
        if not duty_days or any(c not in "1234567" for c in duty_days):
            raise ReferenceDataError(f"rosters: {team.force_code} duty_days must be ISO weekdays")
        if not 0 <= clock_hours(start) < clock_hours(end) <= 24:
            raise ReferenceDataError(f"rosters: {team.force_code} hours must be HH:MM-HH:MM")
        cap, per_op, count = (spec["max_concurrent_operations"], spec["officers_per_operation"],
                              spec["officers"])
        if min(cap, per_op, count) <= 0:
            raise ReferenceDataError(f"rosters: {team.force_code} numbers must be positive")
        jurisdiction = tuple(sorted(town_codes)) if team.code in whole else (team.town_code,)
        rosters.append(TeamRoster(team.code, duty_days, start, end, cap, per_op, jurisdiction))
        for n in range(1, count + 1):
            # a seven-day team's officers rest one weekday each, in turn (their duty roster)
            roster = duty_days.replace(str((n - 1) % 7 + 1), "") if len(duty_days) == 7 else duty_days
            officers.append(Officer(code=f"{team.code}-{n:02d}", team_code=team.code, post="执法队员",
                                    duty_days=roster, source=source))
    return district, rosters, officers

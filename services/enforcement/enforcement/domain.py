"""Plain rules of joint enforcement (吹哨报到): who is competent for a violation, when the called forces
must report in, and how an operation moves on. No I/O, no framework: handlers apply these rules
inside a unit of work, and unit tests call them directly.

An operation's life:

    called ──(every called force reported in)──▶ assembled ──complete_operation──▶ completed

Each called force, on its own: ``called`` → ``reported_in``, or ``called`` → ``overdue`` (marked once
by the deadline watcher) → ``reported_in`` (late). A late force still reports in; the lateness stays
on record for the assessment (考核) that a later issue adds.
"""
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from wuji_common import privacy

URGENCIES = ("emergency", "urgent", "normal")

CALLED, ASSEMBLED, COMPLETED = "called", "assembled", "completed"
OPERATION_STATUSES = (CALLED, ASSEMBLED, COMPLETED)
OPEN_STATUSES = (CALLED, ASSEMBLED)

FORCE_CALLED, FORCE_OVERDUE, FORCE_REPORTED_IN = "called", "overdue", "reported_in"
FORCE_STATUSES = (FORCE_CALLED, FORCE_OVERDUE, FORCE_REPORTED_IN)

LEAD, ASSIST = "lead", "assist"

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
    defaults = _minutes(doc.get("report_in_minutes") or {}, "report_in_minutes")
    missing = [u for u in URGENCIES if u not in defaults]
    if missing:
        raise ReferenceDataError(f"report_in_minutes lacks {', '.join(missing)}")
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
        result.append(ViolationType(code=code, name=entry["name"], lead=entry["lead"], assist=assist,
                                    legal_basis=entry.get("legal_basis"), report_in_minutes=minutes))
    return result


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

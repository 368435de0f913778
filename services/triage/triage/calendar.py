"""The working-day calendar (工作日历): which days are working days in China, and how a time limit in
working days or working hours becomes a deadline. No framework imports, no I/O but reading the
calendar data when asked to.

Sources, in this order of precedence:
1. ``triage/data/calendar.yml`` (or ``TRIAGE_CALENDAR_PATH``): what the district keeps — the public
   holidays (法定节假日) and make-up workdays (调休上班) of each year as the State Council announces
   them, and local changes. A date listed there wins over everything else.
2. the ``chinese-calendar`` package (the years it knows: it raises for later ones);
3. Monday to Friday, for a year neither knows (a warning is logged: the district must add the year).

Counting (the rule the deadlines follow):
- N working days from a time on a working day: the same clock time on the N-th working day after
  that day (dispatched Wednesday 10:00 with 2 working days → Friday 10:00; over a weekend, a public
  holiday or a 调休 Saturday the count skips or uses the day as the calendar says).
- N working days from a time on a rest day: counted from the start of the next working day, so the
  deadline is the end (24:00) of the N-th working day.
- N working hours: only hours inside working days count (a working day counts all its 24 hours; a
  deadline never falls inside a rest day).
- Calendar hours and days: plain elapsed time (urgent matters, utilities, petitions' statutory days).
Times are aware datetimes; days are China's calendar days (CHINA_TIME), whatever zone the time is in.
"""
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path

from wuji_common.events import CHINA_TIME

log = logging.getLogger(__name__)

DEFAULT_CALENDAR_PATH = Path(__file__).parent / "data" / "calendar.yml"
MAX_SCAN_DAYS = 3 * 366  # a limit longer than this is a configuration error, not a deadline


class CalendarError(ValueError):
    """The calendar data is inconsistent (a date both a holiday and a workday, a bad date)."""


@dataclass(frozen=True)
class WorkingCalendar:
    """Which days are working days. ``holidays``/``workdays`` override the weekday rule; ``known_years``
    are the years some source published (a day of another year is judged by the weekday alone)."""
    holidays: frozenset = frozenset()
    workdays: frozenset = frozenset()
    known_years: frozenset = frozenset()
    names: dict = field(default_factory=dict, compare=False)  # date → holiday or 调休 name
    version: str = "weekdays"

    def is_workday(self, day):
        if day in self.workdays:
            return True
        if day in self.holidays:
            return False
        return day.weekday() < 5

    def knows(self, day):
        return day.year in self.known_years

    def next_workday(self, day):
        """The first working day on or after ``day``."""
        for _ in range(MAX_SCAN_DAYS):
            if self.is_workday(day):
                return day
            day += timedelta(days=1)
        raise CalendarError(f"no working day within {MAX_SCAN_DAYS} days of {day}")

    def add_working_days(self, start, days):
        """The deadline ``days`` working days after ``start`` (see the module's counting rule)."""
        if days < 0:
            raise ValueError("a time limit is not negative")
        whole = int(days)
        local = start.astimezone(CHINA_TIME)
        day = local.date()
        if self.is_workday(day):
            clock = local.timetz()
        else:
            day, clock = self.next_workday(day), time(0, tzinfo=CHINA_TIME)
        remaining = whole
        while remaining:
            day += timedelta(days=1)
            if self.is_workday(day):
                remaining -= 1
        deadline = datetime.combine(day, clock)
        if days != whole:  # a fraction of a working day is that many working hours more
            deadline = self.add_working_hours(deadline, (days - whole) * 24)
        return deadline.astimezone(start.tzinfo)

    def add_working_hours(self, start, hours):
        """The deadline after ``hours`` hours that fall inside working days."""
        if hours < 0:
            raise ValueError("a time limit is not negative")
        local = start.astimezone(CHINA_TIME)
        remaining = timedelta(hours=hours)
        cursor = local
        for _ in range(MAX_SCAN_DAYS):
            day = cursor.date()
            end_of_day = datetime.combine(day + timedelta(days=1), time(0, tzinfo=CHINA_TIME))
            if self.is_workday(day):
                available = end_of_day - cursor
                if remaining <= available:
                    return (cursor + remaining).astimezone(start.tzinfo)
                remaining -= available
            cursor = end_of_day
        raise CalendarError(f"{hours} working hours do not fit in {MAX_SCAN_DAYS} days")

    def working_days_between(self, start_day, end_day):
        """Working days in ``start_day``..``end_day`` inclusive (for reports)."""
        count, day = 0, start_day
        while day <= end_day:
            count += self.is_workday(day)
            day += timedelta(days=1)
        return count


def _dates(raw, where):
    """A YAML list of dates (or a map date → name) as {date: name}."""
    out = {}
    items = raw.items() if isinstance(raw, dict) else ((d, "") for d in (raw or ()))
    for value, name in items:
        try:
            day = value if isinstance(value, date) else date.fromisoformat(str(value))
        except ValueError:
            raise CalendarError(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from None
        out[day] = str(name or "")
    return out


def from_sources(data=None, package=True):
    """The calendar from the district's data (parsed calendar.yml) over the package's years."""
    holidays, workdays, names, years = {}, {}, {}, set()
    if package:
        try:
            from chinese_calendar import constants
        except ImportError:  # pragma: no cover - listed in pyproject; kept working without it
            log.warning("chinese-calendar is not installed: only calendar.yml and weekdays count")
        else:
            holidays.update({d: str(n) for d, n in constants.holidays.items()})
            workdays.update({d: str(n) for d, n in constants.workdays.items()})
            years.update(d.year for d in constants.holidays)
    data = data or {}
    version = str(data.get("version") or "package")
    for year, raw in (data.get("years") or {}).items():
        where = f"calendar year {year}"
        own_holidays = _dates(raw.get("holidays"), where)
        own_workdays = _dates(raw.get("workdays"), where)
        clash = set(own_holidays) & set(own_workdays)
        if clash:
            raise CalendarError(f"{where}: both holiday and workday: {sorted(map(str, clash))}")
        for day in [*own_holidays, *own_workdays]:
            if day.year != int(year):
                raise CalendarError(f"{where}: {day} is not in {year}")
        if raw.get("replace"):  # the district's list is the whole year: drop what the package says
            for table in (holidays, workdays):
                for day in [d for d in table if d.year == int(year)]:
                    del table[day]
        for day, name in own_holidays.items():
            workdays.pop(day, None)
            holidays[day] = name or holidays.get(day, "")
        for day, name in own_workdays.items():
            holidays.pop(day, None)
            workdays[day] = name or workdays.get(day, "")
        years.add(int(year))
    names.update(holidays)
    names.update(workdays)
    return WorkingCalendar(frozenset(holidays), frozenset(workdays), frozenset(years), names,
                           f"{version}+chinese-calendar" if package else version)


def load_calendar(path=None, package=True):
    import yaml
    with open(path or DEFAULT_CALENDAR_PATH, encoding="utf-8") as f:
        return from_sources(yaml.safe_load(f), package=package)


@lru_cache(maxsize=4)
def working_calendar(path=None):
    """The calendar in force (cached per path): the packaged calendar.yml over chinese-calendar."""
    calendar = load_calendar(path)
    log.info("working calendar %s: years %s", calendar.version, sorted(calendar.known_years))
    return calendar

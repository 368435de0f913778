"""The working-day calendar (weekends, public holidays, 调休 workdays) and the time-limit policies."""
from datetime import date, datetime, timedelta, timezone

import pytest
import yaml

from triage import domain
from triage.calendar import CalendarError, from_sources, load_calendar
from triage.clocks import Limit, PolicyBook, PolicyError
from triage.dependencies import DEFAULT_POLICIES_PATH, load_policies
from wuji_common.events import CHINA_TIME


def cst(*args):
    return datetime(*args, tzinfo=CHINA_TIME)


@pytest.fixture(scope="module")
def calendar():
    return load_calendar()


def test_the_shipped_calendar_knows_2026s_national_day_and_its_make_up_weekends(calendar):
    assert not calendar.is_workday(date(2026, 10, 1)) and not calendar.is_workday(date(2026, 10, 7))
    assert calendar.is_workday(date(2026, 10, 10))  # Saturday, 国庆节调休
    assert calendar.is_workday(date(2026, 9, 20))   # Sunday, 国庆节调休
    assert not calendar.is_workday(date(2026, 11, 28)) and calendar.is_workday(date(2026, 11, 27))
    assert {2025, 2026} <= calendar.known_years


def test_a_holiday_spanning_the_deadline_pushes_it_past_the_holiday(calendar):
    start = cst(2026, 9, 30, 10, 0)  # Wednesday before the National Day week
    assert calendar.add_working_days(start, 1) == cst(2026, 10, 8, 10, 0)
    # 7 working days: Oct 8, 9, 10 (Saturday, 调休), 12, 13, 14, 15
    assert calendar.add_working_days(start, 7) == cst(2026, 10, 15, 10, 0)
    assert domain.due_at(start, Limit(7, "working_days"), calendar) == cst(2026, 10, 15, 10, 0)


def test_a_make_up_weekend_counts_as_a_working_day(calendar):
    friday = cst(2026, 9, 18, 10, 0)
    assert calendar.add_working_days(friday, 1) == cst(2026, 9, 20, 10, 0)  # Sunday 调休
    saturday_workday = cst(2026, 10, 10, 9, 0)
    assert calendar.add_working_days(saturday_workday, 1) == cst(2026, 10, 12, 9, 0)


def test_counting_from_a_rest_day_starts_with_the_next_working_day(calendar):
    saturday = cst(2026, 11, 28, 10, 0)
    assert calendar.add_working_days(saturday, 1) == cst(2026, 12, 1, 0, 0)  # end of Monday
    holiday = cst(2026, 10, 3, 15, 0)
    assert calendar.add_working_days(holiday, 1) == cst(2026, 10, 9, 0, 0)  # end of Oct 8


def test_working_hours_skip_rest_days_and_calendar_hours_do_not(calendar):
    friday_evening = cst(2026, 11, 27, 20, 0)
    assert calendar.add_working_hours(friday_evening, 6) == cst(2026, 11, 30, 2, 0)
    assert domain.due_at(friday_evening, Limit(6, "hours"), calendar) == cst(2026, 11, 28, 2, 0)
    assert domain.due_at(friday_evening, 6) == cst(2026, 11, 28, 2, 0)  # an item's own hours
    utc = friday_evening.astimezone(timezone.utc)
    assert calendar.add_working_hours(utc, 6).tzinfo == timezone.utc  # the zone it was given


def test_the_districts_file_adds_years_and_wins_over_the_package():
    calendar = from_sources({"version": "t", "years": {
        2027: {"holidays": {"2027-01-01": "元旦"}, "workdays": {"2027-01-09": "调休"}},
        2026: {"workdays": {"2026-10-05": "本区调整"}}}})
    assert not calendar.is_workday(date(2027, 1, 1)) and calendar.is_workday(date(2027, 1, 9))
    assert calendar.is_workday(date(2026, 10, 5))  # the package says holiday; the district decides
    assert 2027 in calendar.known_years
    weekdays_only = from_sources({}, package=False)
    assert not weekdays_only.is_workday(date(2026, 10, 10)) and weekdays_only.is_workday(date(2026, 10, 1))


@pytest.mark.parametrize("years", [
    {2027: {"holidays": ["2027-01-01"], "workdays": ["2027-01-01"]}},
    {2027: {"holidays": ["2028-01-01"]}},
    {2027: {"holidays": ["not a date"]}},
])
def test_an_inconsistent_calendar_is_refused(years):
    with pytest.raises(CalendarError):
        from_sources({"years": years}, package=False)


# --- policies ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def book(taxonomy):
    return load_policies(taxonomy=taxonomy)


@pytest.mark.parametrize("item, category, urgency, policy, resolve", [
    ("street-lights", "municipal", "normal", "utilities", "24 hours"),
    ("garbage", "sanitation", "normal", "general", "7 working_days"),
    ("land-dispute", "disputes", "normal", "complex", "15 working_days"),
    ("key-persons", "stability", "normal", "petition", "60 days"),
    ("land-dispute", "disputes", "urgent", "urgent", "2 hours"),
    ("garbage", "sanitation", "emergency", "urgent", "2 hours"),
])
def test_rules_pick_a_policy_per_item_and_urgency(book, item, category, urgency, policy, resolve):
    picked = book.pick(item, category, urgency)
    assert (picked.code, str(picked.resolve), picked.version) == (policy, resolve, book.version)


def test_petitions_follow_the_regulation_15_days_to_accept_60_to_handle_30_more(book):
    petition = book.policies["petition"]
    assert (str(petition.report_in), str(petition.resolve), str(petition.extension_max)) == (
        "15 days", "60 days", "30 days")


def test_policies_are_checked_when_loaded(taxonomy):
    with open(DEFAULT_POLICIES_PATH, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    PolicyBook.from_dict(raw, set(taxonomy.items), set(taxonomy.categories))
    for broken in (
        {**raw, "rules": raw["rules"][:-1]},                                   # no catch-all
        {**raw, "rules": [{"items": ["no-such-item"], "policy": "general"}, {"policy": "general"}]},
        {**raw, "rules": [{"policy": "nope"}]},
        {**raw, "policies": {**raw["policies"], "general": {**raw["policies"]["general"],
                                                            "resolve": "7 fortnights"}}},
        {**raw, "version": ""},
    ):
        with pytest.raises(PolicyError):
            PolicyBook.from_dict(broken, set(taxonomy.items), set(taxonomy.categories))


def test_a_working_day_deadline_from_the_router(taxonomy, book, calendar):
    router = domain.Router(taxonomy, policies=book)
    assessment = router.assess("垃圾堆放没人清理", "阴平镇金寺村村口垃圾成堆，一直没人清理。")
    routing = router.route(assessment, "370404101", "370404101201", lambda codes: {
        c: domain.UnitRef(c, c, "grid_worker" if c.startswith("grid") else "town_office") for c in codes})
    assert routing.clock_policy.code == "general"
    wednesday = cst(2026, 11, 25, 16, 0)
    due = domain.deadlines(routing.limit, wednesday, routing.clock_policy, calendar)
    assert due["resolve"] == cst(2026, 12, 4, 16, 0)          # 7 working days, a weekend between
    assert due["report_in"] == cst(2026, 11, 25, 18, 0)
    assert due["first_contact"] == cst(2026, 11, 26, 16, 0)
    assert due["resolve"] - wednesday == timedelta(days=9)

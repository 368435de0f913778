"""A seeded simulation of a month of appeals and of how units handle them, as the event history the
platform would record (``metrics simulate``). The same seed gives the same history, hence the same
assessment table.

Each unit gets a behaviour drawn once from the seed — how quickly it reports in, how often it
resolves in time, returns orders that were its own, leaves citizens unsatisfied — and every appeal
of the month plays out against it: appeal_received → order_dispatched (to the village's grid worker,
the town office or a district department) → order_accepted (or not, within the month) → possibly
order_returned and a new dispatch → order_resolved → appeal_rated → order_closed or order_reopened
and another round; some appeals are repeats (repeat_detected) or cross-level petitions
(cross_level_petition_detected). Deadlines are those of triage's general policy in calendar time
(2 hours to report in, 7 days to resolve), kept simple so that the simulation needs no triage.
Events carry no personal data, like the real ones.
"""
import random
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone

from wuji_common import reference
from wuji_common.events import CHINA_TIME, make_event

ACCEPT_HOURS = 2
RESOLVE_DAYS = 7
CATEGORIES = ("municipal", "sanitation", "urban-rural", "traffic", "livelihood", "labour", "disputes")


@dataclass(frozen=True)
class Behaviour:
    """How a unit works: probabilities per order."""
    accepts_on_time: float
    resolves_on_time: float
    wrongly_returns: float
    unsatisfies: float


def _stamp(envelope, when):
    envelope["occurred_at"] = when.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return envelope


class Simulation:

    def __init__(self, month, seed=1, appeals=400):
        year, mon = (int(p) for p in month.split("-"))
        self.start = datetime.combine(datetime(year, mon, 1).date(), time(0), CHINA_TIME)
        end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=CHINA_TIME)
        self.seconds = (end - self.start).total_seconds()
        self.rng = random.Random(seed)
        self.count = appeals
        units = reference.units()
        self.grid = {u["village_code"]: u for u in units if u["type"] == "grid_worker"}
        self.towns = {u["town_code"]: u for u in units if u["type"] == "town_office"}
        self.departments = [u for u in units if u["type"] == "district_department"]
        self.behaviour = {u["code"]: self._draw_behaviour() for u in units}
        self.events = []
        self.sequence = 0

    def _draw_behaviour(self):
        r = self.rng
        return Behaviour(accepts_on_time=r.uniform(0.6, 0.99), resolves_on_time=r.uniform(0.55, 0.98),
                         wrongly_returns=r.uniform(0.0, 0.15), unsatisfies=r.uniform(0.02, 0.3))

    def run(self):
        villages = list(self.grid)
        history = {}
        for n in range(self.count):
            received = self.start + timedelta(seconds=self.rng.uniform(0, self.seconds * 0.9))
            village = self.rng.choice(villages)
            town = self.grid[village]["town_code"]
            case_no = f"YC{received:%Y%m%d}{n + 1:06d}"
            category = self.rng.choice(CATEGORIES)
            channel = self.rng.choice(("wechat", "web", "hotline", "grid_patrol"))
            self._emit("appeal_received", case_no, {
                "channel": channel, "title": "模拟诉求", "content": "模拟诉求内容", "town_code": town,
                "village_code": village, "anonymous": True, "received_at": received.isoformat()}, received)
            level = self.rng.choices(("grid", "town", "district"), (5, 3, 2))[0]
            unit = self.grid[village] if level == "grid" else self.towns[town] if level == "town" \
                else self.rng.choice(self.departments)
            at = received + timedelta(minutes=self.rng.uniform(1, 20))
            if channel == "hotline" and level in ("grid", "town") and self.rng.random() < 0.15:
                self._emit("cross_level_petition_detected", case_no, {
                    "order_no": None, "unit_code": unit["code"], "town_code": town, "category": category,
                    "item": category, "level": level, "reception_level": "district", "channel": channel}, at)
            earlier = history.get((town, category))
            if earlier and self.rng.random() < 0.2:
                self._emit("repeat_detected", case_no, {
                    "earlier_case_no": earlier[0], "earlier_order_no": None, "unit_code": earlier[1],
                    "order_no": None, "town_code": town, "category": category, "item": category,
                    "repeat_count": 2, "similarity": 0.8}, at)
            final_unit = self._handle(case_no, unit, level, town, category, at)
            history[(town, category)] = (case_no, final_unit)
        self.events.sort(key=lambda e: e["occurred_at"])
        return self.events

    def _handle(self, case_no, unit, level, town, category, at):
        """One order's life; a wrongly returned order goes to the town office (or the command
        centre) and plays out there. Returns the unit that handled it in the end."""
        for attempt in range(3):
            behaviour = self.behaviour[unit["code"]]
            self.sequence += 1
            order_no = f"GD{at.astimezone(CHINA_TIME):%Y%m%d}{self.sequence:06d}"
            base = {"order_no": order_no, "unit_code": unit["code"], "town_code": town, "category": category}
            accept_due, resolve_due = at + timedelta(hours=ACCEPT_HOURS), at + timedelta(days=RESOLVE_DAYS)
            self._emit("order_dispatched", case_no, {
                **base, "status": "dispatched", "unit_name": unit["name"], "level": level,
                "accept_due_at": accept_due.isoformat(), "resolve_due_at": resolve_due.isoformat(),
                "policy": "general", "router_version": "simulation", "title": "模拟诉求"}, at)
            on_time = self.rng.random() < behaviour.accepts_on_time
            accepted = at + timedelta(hours=self.rng.uniform(0.1, 1.9) if on_time else self.rng.uniform(2.1, 30))
            if attempt < 2 and self.rng.random() < behaviour.wrongly_returns:
                returned = accepted
                self._emit("order_returned", case_no, {**base, "status": "returned", "reason": "非本单位职责"},
                           returned)
                unit, level = (self.towns[town], "town") if level == "grid" else \
                    (next(u for u in reference.units() if u["type"] == "command_centre"), "district")
                at = returned + timedelta(minutes=5)
                continue
            self._emit("order_accepted", case_no, {**base, "status": "accepted",
                                                   "accepted_at": accepted.isoformat(),
                                                   "within_deadline": accepted <= accept_due}, accepted)
            rounds = 0
            while True:
                in_time = self.rng.random() < behaviour.resolves_on_time
                resolved = accepted + timedelta(days=self.rng.uniform(0.2, RESOLVE_DAYS - 0.1) if in_time
                                                else self.rng.uniform(RESOLVE_DAYS + 0.1, 15))
                self._emit("order_resolved", case_no, {**base, "status": "resolved", "resolution": "已办理",
                                                       "resolved_at": resolved.isoformat(),
                                                       "within_deadline": resolved <= resolve_due}, resolved)
                rated = resolved + timedelta(hours=self.rng.uniform(1, 72))
                unsatisfied = rounds < 1 and self.rng.random() < behaviour.unsatisfies
                satisfaction = "unsatisfied" if unsatisfied else self.rng.choice(("satisfied", "basically_satisfied"))
                self._emit("appeal_rated", case_no, {"satisfaction": satisfaction, "rated_at": rated.isoformat()},
                           rated, source="intake")
                if unsatisfied:
                    rounds += 1
                    resolve_due = rated + timedelta(days=RESOLVE_DAYS)
                    self._emit("order_reopened", case_no, {**base, "status": "reopened", "reopen_count": rounds,
                                                           "resolve_due_at": resolve_due.isoformat()}, rated)
                    accepted = rated
                    continue
                self._emit("order_closed", case_no, {**base, "status": "closed", "satisfaction": satisfaction,
                                                     "closed_at": rated.isoformat()}, rated)
                return unit["code"]
        return unit["code"]

    def _emit(self, kind, case_no, data, when, source=None):
        self.events.append(_stamp(make_event(kind, case_no, data, source=source), when))


def simulate_month(month, seed=1, appeals=400):
    """The event history of a simulated month (sorted by time): deterministic for a seed, apart
    from the event ids."""
    return Simulation(month, seed, appeals).run()

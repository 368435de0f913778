"""Scheduling joint operations onto days and teams (联合执法排班): plain functions, no I/O, no
framework. The service builds a :class:`Problem` from its database, hands it to a worker process
(``enforcement.solver_process``) that calls :func:`solve`, and stores the :class:`Plan` it returns.

The problem, for one town over ``horizon_days`` days (day 0 = the first day of the horizon):

- every job (an open operation) needs one team of each of its forces on the same day (every required
  force present), on a day no earlier than its release day (the statutory waiting period of a
  rectification notice, or today);
- a team serves at most ``capacity[day]`` operations a day: zero when it is off duty, else
  min(its cap on concurrent operations, officers on duty that day // officers per operation), so
  leave and duty rosters shrink it; the teams offered are those of the job's force with jurisdiction
  over the town (the caller filters them), so competence and jurisdiction hold by construction;
- a job finishes at ``finish_hour`` on its day; it is on time if that is no later than ``due_hour``
  (both in hours from the horizon's first midnight), else late by the difference.

Objective, lexicographic through weights: most jobs on time first; then least lateness (weighted by
urgency; a job left out counts as late until one day past the horizon); then fewest assignments moved
against the previous plan. Since every team of a force serving the town is interchangeable for that
town's jobs, the solver decides days against each force's summed capacity, and teams are filled in
afterwards, keeping each job with its previous team where there is room, local teams before
district ones. Capacity that other towns' plans hold on a shared (district) team is taken off by the
caller.
"""
import math
import time
from dataclasses import asdict, dataclass, field

URGENCY_WEIGHT = {"emergency": 4, "urgent": 2, "normal": 1}
# one moved assignment weighs as much as this many hours of (urgency-weighted) lateness
MOVE_PENALTY_HOURS = 48


@dataclass
class Job:
    operation_id: str
    forces: list
    release_day: int
    due_hour: float
    finish_hour: float = 17.5
    urgency: str = "normal"


@dataclass
class TeamCapacity:
    code: str
    force_code: str
    capacity: list          # operations it can serve on each day of the horizon
    local: bool = True      # based in the town (preferred) or a district team serving it too


@dataclass
class Assignment:
    operation_id: str
    force_code: str
    team: str
    day: int


@dataclass
class Problem:
    horizon_days: int
    jobs: list
    teams: list
    previous: list = field(default_factory=list)  # assignments of the plan being revised

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(horizon_days=d["horizon_days"], jobs=[Job(**j) for j in d["jobs"]],
                   teams=[TeamCapacity(**t) for t in d["teams"]],
                   previous=[Assignment(**a) for a in d.get("previous", [])])


@dataclass
class Plan:
    solver: str               # cp-sat | greedy
    status: str               # optimal | feasible | fallback
    assignments: list
    unscheduled: list         # operation ids with no day in the horizon
    on_time: int
    late: int
    lateness_hours: float
    moved: int                # assignments of the previous plan changed (day or team) or dropped
    utilisation: float        # assignments / team-day capacity over the horizon
    solve_seconds: float
    bound_on_time: int | None = None  # the solver's proven upper bound on jobs on time

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**{**d, "assignments": [Assignment(**a) for a in d["assignments"]]})


# --- availability: duty rosters, leave and caps → operations a team can serve each day -----------

def on_duty(duty_days, day):
    """``duty_days`` lists ISO weekdays ("12345" = Monday to Friday)."""
    return str(day.isoweekday()) in duty_days


def daily_capacity(dates, duty_days, max_concurrent, officers_per_operation, officers):
    """Operations a team can serve on each date: none when the team is off duty, else as many as
    its officers on duty (by their own roster, not on leave) can staff, up to the team's cap.
    ``officers``: [(duty_days, [(first_day, last_day) of each absence])]."""
    result = []
    for day in dates:
        if not on_duty(duty_days, day):
            result.append(0)
            continue
        present = sum(1 for roster, absences in officers
                      if on_duty(roster, day) and not any(a <= day <= b for a, b in absences))
        result.append(min(max_concurrent, present // max(1, officers_per_operation)))
    return result


# --- the arithmetic both solvers share -------------------------------------------------------------

def force_capacity(problem):
    """{force: [summed capacity of its teams per day]}."""
    total = {}
    for team in problem.teams:
        per_day = total.setdefault(team.force_code, [0] * problem.horizon_days)
        for d in range(problem.horizon_days):
            per_day[d] += max(0, team.capacity[d] if d < len(team.capacity) else 0)
    return total


def feasible_days(job, capacity, horizon_days):
    """Days from the job's release on which every one of its forces has a team on duty."""
    return [d for d in range(max(0, job.release_day), horizon_days)
            if all(capacity.get(f, [0] * horizon_days)[d] > 0 for f in job.forces)]


def lateness(job, day):
    """Hours past due if the job is done on ``day`` (the day after the horizon if ``day`` is None)."""
    return max(0.0, day * 24 + job.finish_hour - job.due_hour)


def previous_days(problem):
    """{operation_id: the day the previous plan gave it} (all its forces share one day)."""
    return {a.operation_id: a.day for a in problem.previous}


def overloaded_previous(problem):
    """(operation, force) of previous assignments on a team and day that now has less room than the
    previous plan put there (an officer dropped out)."""
    capacity = {t.code: t.capacity for t in problem.teams}
    count = {}
    for a in problem.previous:
        count[a.team, a.day] = count.get((a.team, a.day), 0) + 1
    full = {key for key, n in count.items()
            if n > (capacity.get(key[0], [])[key[1]] if key[1] < len(capacity.get(key[0], [])) else 0)}
    return {(a.operation_id, a.force_code) for a in problem.previous if (a.team, a.day) in full}


def evaluate(problem, days, assignments, solver, status, started, bound_on_time=None):
    """The plan with its measures, from each job's day (None: not scheduled) and team assignments."""
    jobs_by_id = {j.operation_id: j for j in problem.jobs}
    on_time = late = 0
    hours = 0.0
    for job in problem.jobs:
        day = days.get(job.operation_id)
        if day is None:
            overdue = lateness(job, problem.horizon_days)
            if overdue > 0:  # due within the horizon and not done in it: late at least this much
                late += 1
                hours += overdue
            continue
        overdue = lateness(job, day)
        if overdue > 0:
            late += 1
            hours += overdue
        else:
            on_time += 1
    before = {(a.operation_id, a.force_code): (a.day, a.team) for a in problem.previous
              if a.operation_id in jobs_by_id}
    now = {(a.operation_id, a.force_code): (a.day, a.team) for a in assignments}
    moved = sum(1 for key, where in before.items() if now.get(key) != where)
    slots = sum(sum(max(0, c) for c in t.capacity[:problem.horizon_days]) for t in problem.teams)
    return Plan(
        solver=solver, status=status,
        assignments=sorted(assignments, key=lambda a: (a.day, a.operation_id, a.force_code)),
        unscheduled=sorted(j.operation_id for j in problem.jobs if days.get(j.operation_id) is None),
        on_time=on_time, late=late, lateness_hours=round(hours, 1), moved=moved,
        utilisation=round(len(assignments) / slots, 4) if slots else 0.0,
        solve_seconds=round(time.perf_counter() - started, 3), bound_on_time=bound_on_time)


def assign_teams(problem, days):
    """Teams for each job's forces on its day: a job keeps its previous team where that team has
    room, then the rest go to local teams before district ones, the emptiest first."""
    remaining = {t.code: list(t.capacity[:problem.horizon_days]) + [0] * max(0, problem.horizon_days - len(t.capacity))
                 for t in problem.teams}
    teams_of = {}
    for t in problem.teams:
        teams_of.setdefault(t.force_code, []).append(t)
    previous_team = {(a.operation_id, a.force_code): a.team for a in problem.previous}
    jobs = sorted((j for j in problem.jobs if days.get(j.operation_id) is not None),
                  key=lambda j: j.operation_id)
    previous_day = previous_days(problem)
    chosen = {}
    # first the jobs that kept their day (they keep their teams: no move at all), then those that
    # moved day (the same team on another day is still the team its officers know)
    for kept_day in (True, False):
        for job in jobs:
            day = days[job.operation_id]
            if (previous_day.get(job.operation_id) == day) != kept_day:
                continue
            for force in job.forces:
                team = previous_team.get((job.operation_id, force))
                if team in remaining and remaining[team][day] > 0 and \
                        any(t.code == team and t.force_code == force for t in teams_of.get(force, [])):
                    remaining[team][day] -= 1
                    chosen[(job.operation_id, force)] = team
    for job in jobs:
        day = days[job.operation_id]
        for force in job.forces:
            if (job.operation_id, force) in chosen:
                continue
            candidates = [t for t in teams_of.get(force, []) if remaining[t.code][day] > 0]
            if not candidates:
                raise ValueError(f"no team of {force} left on day {day} for {job.operation_id}")
            team = min(candidates, key=lambda t: (not t.local, -remaining[t.code][day], t.code))
            remaining[team.code][day] -= 1
            chosen[(job.operation_id, force)] = team.code
    return [Assignment(operation_id=op, force_code=force, team=team, day=days[op])
            for (op, force), team in chosen.items()]


# --- greedy: earliest deadline first ---------------------------------------------------------------

def greedy_days(problem):
    """Jobs by due time (then release), each on its previous day if that still fits, else on the
    earliest day on which every force has room; None if no day fits."""
    left = force_capacity(problem)
    before = previous_days(problem)
    days = {}
    for job in sorted(problem.jobs, key=lambda j: (j.due_hour, j.release_day, j.operation_id)):
        options = feasible_days(job, left, problem.horizon_days)
        if not options:
            days[job.operation_id] = None
            continue
        day = before.get(job.operation_id)
        if day not in options:
            day = options[0]
        for f in job.forces:
            left[f][day] -= 1
        days[job.operation_id] = day
    return days


def solve_greedy(problem, status="feasible"):
    started = time.perf_counter()
    days = greedy_days(problem)
    return evaluate(problem, days, assign_teams(problem, days), "greedy", status, started)


# --- CP-SAT ----------------------------------------------------------------------------------------

def solve_cp_sat(problem, time_limit=10.0, workers=2, seed=0):
    """The plan CP-SAT finds within ``time_limit`` seconds, or the greedy plan (status "fallback")
    if it finds none. Two phases on one model: (1) most jobs on time, whose proven bound is the
    bound reported; (2) with that many on time held, least weighted lateness plus move penalties.
    Phase 1 gets up to 60 % of the time (less if it proves optimality), phase 2 the rest; each is
    hinted with the best plan known so far (the greedy one first, which keeps previous days)."""
    from ortools.sat.python import cp_model

    started = time.perf_counter()
    horizon = problem.horizon_days
    capacity = force_capacity(problem)
    before = previous_days(problem)
    model = cp_model.CpModel()

    x = {}  # (job index, day) → scheduled that day
    for j, job in enumerate(problem.jobs):
        for d in feasible_days(job, capacity, horizon):
            x[j, d] = model.NewBoolVar(f"x{j}_{d}")
    days_of = {}
    for (j, d) in x:
        days_of.setdefault(j, []).append(d)
    for j, ds in days_of.items():
        model.AddAtMostOne(x[j, d] for d in ds)

    load = {}
    for (j, d), var in x.items():
        for f in problem.jobs[j].forces:
            load.setdefault((f, d), []).append(var)
    for (f, d), vars_ in load.items():
        if len(vars_) > capacity[f][d]:
            model.Add(sum(vars_) <= capacity[f][d])

    over = overloaded_previous(problem)
    on_time = []
    penalty = []  # (coefficient, var): weighted lateness relative to leaving the job out, and moves
    for j, job in enumerate(problem.jobs):
        w = URGENCY_WEIGHT.get(job.urgency, 1)
        left_out = math.ceil(lateness(job, horizon))
        for d in days_of.get(j, []):
            hours = math.ceil(lateness(job, d))
            if hours == 0:
                on_time.append(x[j, d])
            if hours != left_out:
                penalty.append((w * (hours - left_out), x[j, d]))
        previous = before.get(job.operation_id)
        if previous is not None and (j, previous) in x:
            # staying saves the move; a little less for a job on a team that has lost room that day
            # (one of its jobs must change anyway), so that is the one that moves
            squeezed = sum(1 for f in job.forces if (job.operation_id, f) in over)
            penalty.append((-(MOVE_PENALTY_HOURS * len(job.forces) - squeezed), x[j, previous]))

    def hint(days):
        model.ClearHints()
        for (j, d), var in x.items():
            model.AddHint(var, days.get(problem.jobs[j].operation_id) == d)

    def run(seconds):
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(1e-6, seconds)
        solver.parameters.num_workers = int(workers)
        solver.parameters.random_seed = int(seed)
        return solver, solver.Solve(model)

    def days_from(solver):
        days = {job.operation_id: None for job in problem.jobs}
        for (j, d), var in x.items():
            if solver.BooleanValue(var):
                days[problem.jobs[j].operation_id] = d
        return days

    found = (cp_model.OPTIMAL, cp_model.FEASIBLE)
    hint(greedy_days(problem))
    model.Maximize(sum(on_time))
    solver, result = run(time_limit * 0.6)
    if result not in found:
        plan = solve_greedy(problem, status="fallback")
        plan.solve_seconds = round(time.perf_counter() - started, 3)
        return plan
    best_on_time = round(solver.ObjectiveValue())
    bound = math.floor(solver.BestObjectiveBound() + 1e-6)
    proven = result == cp_model.OPTIMAL
    days = days_from(solver)

    model.Add(sum(on_time) >= best_on_time)
    model.Minimize(sum(c * v for c, v in penalty))
    hint(days)
    solver, result = run(time_limit - (time.perf_counter() - started))
    if result in found:
        days = days_from(solver)
        proven = proven and result == cp_model.OPTIMAL
    return evaluate(problem, days, assign_teams(problem, days), "cp-sat",
                    "optimal" if proven else "feasible", started,
                    bound_on_time=min(bound, len(problem.jobs)))


def solve(problem, time_limit=10.0, workers=2, seed=0):
    """CP-SAT with a time limit; greedy if it finds nothing in time."""
    if not problem.jobs:
        return solve_greedy(problem, status="optimal")
    return solve_cp_sat(problem, time_limit=time_limit, workers=workers, seed=seed)

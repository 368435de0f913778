"""Scheduling benchmark: a seeded town's fortnight of joint operations, planned by CP-SAT (the
service's own solver, with its time limit) and by the greedy baseline (earliest deadline first),
side by side with the solver's proven bound on operations on time.

    .venv/bin/python bench/scheduling.py [--operations 500] [--days 14] [--seeds 1 2 3]
                                         [--time-limit 10] [--workers 2]

The town (generated, not Yicheng's data): the 13 forces, each with local teams and for some a
district team; officers with duty rosters (7-day forces rotate a rest day, the others work Monday to
Friday) and random leave; a cap on concurrent operations per team. Operations take their forces
from the shipped legal-competence rules (competence.yml), an urgency (10 % emergency, 30 % urgent,
60 % normal) and a due time from it; illegal construction and land use wait out a 10-day
rectification period first. Capacity is sized near demand, so that not everything fits on time.

Prints one block per seed (solve time, on time, late, lateness hours, unscheduled, team utilisation
for CP-SAT and greedy, and the bound), then the medians over the seeds. "late" and "lateness" include
operations due within the fortnight that the plan leaves out, counted as done the day after it;
"unscheduled" also counts operations due after the fortnight, which a later plan takes. CP-SAT puts
on-time operations first (lexicographically), so it leaves out operations that cannot be on time
anyway rather than let them take a day from one that can: more on time, more lateness than greedy. Last line: JSON with
solve_seconds, on_time, bound_on_time, greedy_on_time, lateness_hours (medians) and more.
"""
import argparse
import json
import random
import statistics
import sys
from datetime import date, timedelta

from enforcement import reference, scheduling

URGENCIES = (("emergency", 0.1, 24), ("urgent", 0.3, 72), ("normal", 0.6, 168))  # due hours after whistle
WAITING_DAYS = {"illegal_construction": 10, "illegal_land_use": 10}
SEVEN_DAY_FORCES = {"public_security", "fire_rescue", "emergency_management"}
DISTRICT_FORCES = {"comprehensive_enforcement", "natural_resources", "market_supervision",
                   "ecology_environment"}
FIRST_DAY = date(2026, 11, 30)  # a Monday


def town_fortnight(seed, operations=500, days=14):
    """A seeded scheduling problem: (Problem, description)."""
    rng = random.Random(seed)
    shipped = reference.shipped()
    forces, violations = shipped.forces, shipped.violation_types
    # violation mix: the common ones more often
    weights = [rng.uniform(0.5, 3.0) for _ in violations]
    jobs = []
    demand = {f.code: 0 for f in forces}
    while len(jobs) < operations:
        n = len(jobs)
        v = rng.choices(violations, weights)[0]
        urgency, due_after = _pick_urgency(rng)
        whistle_day = rng.randrange(0, days - 2)
        whistle_hour = whistle_day * 24 + rng.uniform(8, 18)
        release = whistle_day
        due = whistle_hour + due_after
        if v.code in WAITING_DAYS:
            release = whistle_day + WAITING_DAYS[v.code]
            due = release * 24 + due_after
            if release >= days:  # its waiting period outlasts the fortnight: a later plan's job
                continue
        jobs.append(scheduling.Job(operation_id=f"CZ{seed:03d}{n:05d}", forces=list(v.forces),
                                   release_day=release, due_hour=round(due, 2),
                                   finish_hour=17.5, urgency=urgency))
        for f in v.forces:
            demand[f] += 1

    dates = [FIRST_DAY + timedelta(days=d) for d in range(days)]
    teams = []
    for force in forces:
        # teams of 6–9 officers, two to an operation, a cap of 2–3; enough teams that the force's
        # capacity over the fortnight is about its demand
        seven = force.code in SEVEN_DAY_FORCES
        working = sum(1 for d in dates if seven or d.isoweekday() <= 5)
        per_team = 2.5 * working * 0.75
        count = max(1, round(demand[force.code] / per_team))
        for t in range(count + (1 if force.code in DISTRICT_FORCES else 0)):
            local = t < count
            officers = []
            for o in range(rng.randint(6, 9)):
                roster = "1234567".replace(str(o % 7 + 1), "") if seven else "12345"
                absences = []
                if rng.random() < 0.15:  # leave
                    start = rng.choice(dates)
                    absences.append((start, start + timedelta(days=rng.randint(1, 5))))
                officers.append((roster, absences))
            capacity = scheduling.daily_capacity(
                dates, "1234567" if seven else "12345", rng.choice((2, 3)), 2, officers)
            teams.append(scheduling.TeamCapacity(
                code=f"{force.code}-{'local' if local else 'district'}-{t}", force_code=force.code,
                capacity=capacity, local=local))
    return scheduling.Problem(horizon_days=days, jobs=jobs, teams=teams)


def _pick_urgency(rng):
    r, acc = rng.random(), 0.0
    for urgency, share, due_after in URGENCIES:
        acc += share
        if r < acc:
            return urgency, due_after
    return URGENCIES[-1][0], URGENCIES[-1][2]


def row(label, plan):
    return (f"  {label:<8} {plan.solve_seconds:>7.2f} s  on time {plan.on_time:>4}  late {plan.late:>4}"
            f"  lateness {plan.lateness_hours:>8.1f} h  unscheduled {len(plan.unscheduled):>4}"
            f"  utilisation {plan.utilisation:>6.1%}  ({plan.status})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operations", type=int, default=500)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    results = []
    for seed in args.seeds:
        problem = town_fortnight(seed, args.operations, args.days)
        greedy = scheduling.solve_greedy(problem)
        cp = scheduling.solve(problem, time_limit=args.time_limit, workers=args.workers, seed=seed)
        print(f"seed {seed}: {len(problem.jobs)} operations, {len(problem.teams)} teams of 13 forces, "
              f"{args.days} days")
        print(row("cp-sat", cp))
        print(row("greedy", greedy))
        print(f"  bound    on time ≤ {cp.bound_on_time}   cp-sat reaches "
              f"{cp.on_time / cp.bound_on_time:.1%} of it, greedy {greedy.on_time / cp.bound_on_time:.1%}")
        results.append((cp, greedy))

    def median(values):
        return statistics.median(values)

    summary = {
        "seeds": args.seeds, "operations": args.operations, "days": args.days,
        "time_limit": args.time_limit, "workers": args.workers,
        "solve_seconds": median([c.solve_seconds for c, _ in results]),
        "on_time": median([c.on_time for c, _ in results]),
        "bound_on_time": median([c.bound_on_time for c, _ in results]),
        "greedy_on_time": median([g.on_time for _, g in results]),
        "lateness_hours": median([c.lateness_hours for c, _ in results]),
        "greedy_lateness_hours": median([g.lateness_hours for _, g in results]),
        "utilisation": median([c.utilisation for c, _ in results]),
        "greedy_utilisation": median([g.utilisation for _, g in results]),
        "on_time_of_bound": median([c.on_time / c.bound_on_time for c, _ in results]),
    }
    print(f"median over {len(results)} seeds: cp-sat {summary['solve_seconds']:.2f} s, on time "
          f"{summary['on_time']} (greedy {summary['greedy_on_time']}, bound {summary['bound_on_time']}), "
          f"{summary['on_time_of_bound']:.1%} of the bound; lateness {summary['lateness_hours']} h "
          f"(greedy {summary['greedy_lateness_hours']} h)")
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())

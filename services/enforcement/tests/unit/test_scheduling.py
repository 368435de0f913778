"""The scheduler on its own: capacity from rosters and leave, the greedy baseline, CP-SAT optimal on
a small instance (checked by enumerating every plan), the fallback when CP-SAT gets no time, and
re-planning that moves few assignments."""
import itertools
import random
from datetime import date, timedelta

import pytest

from enforcement.scheduling import (
    Assignment, Job, Problem, TeamCapacity, daily_capacity, evaluate, feasible_days, force_capacity,
    lateness, solve, solve_cp_sat, solve_greedy,
)

MONDAY = date(2026, 11, 30)
WEEK = [MONDAY + timedelta(days=d) for d in range(7)]
END = 17.5  # an operation counts as finished at 17:30 on its day


def day_end(day):
    return day * 24 + END


def job(op, forces, due_day, release=0, urgency="normal"):
    return Job(operation_id=op, forces=list(forces), release_day=release, due_hour=day_end(due_day),
               finish_hour=END, urgency=urgency)


def team(code, force, capacity, local=True):
    return TeamCapacity(code=code, force_code=force, capacity=list(capacity), local=local)


# --- availability -----------------------------------------------------------------------------------

def test_capacity_follows_duty_days_rosters_leave_and_the_cap():
    officers = [("12345", []), ("12345", [(WEEK[1], WEEK[2])]), ("1234", []), ("12345", [])]
    assert daily_capacity(WEEK, "123456", 3, 2, officers) == [
        2,  # Monday: four officers, two per operation
        1,  # Tuesday: one on leave → three → one operation
        1,  # Wednesday: still on leave
        2,  # Thursday: all four
        1,  # Friday: the third officer's roster has Fridays off
        0,  # Saturday: the team is on duty but none of its officers
        0,  # Sunday: the team is off duty
    ]
    many = [("1234567", [])] * 10
    assert daily_capacity(WEEK[:1], "1234567", 3, 2, many) == [3]  # the cap


def test_a_job_may_only_go_on_days_all_its_forces_have_room():
    problem = Problem(horizon_days=4, jobs=[job("a", ["A", "B"], 3, release=1)],
                      teams=[team("a1", "A", [1, 1, 1, 1]), team("b1", "B", [1, 0, 1, 1])])
    assert feasible_days(problem.jobs[0], force_capacity(problem), 4) == [2, 3]


# --- CP-SAT on a small instance ---------------------------------------------------------------------

def tight_instance():
    """One team each of forces A and B, one operation a day each, two days. Job x needs both on day
    0; y needs A and z needs B on day 0. Earliest-deadline-first takes x first and makes y and z
    late; the best plan puts y and z on time."""
    return Problem(horizon_days=2, jobs=[job("x", "AB", 0), job("y", "A", 0), job("z", "B", 0)],
                   teams=[team("a1", "A", [1, 1]), team("b1", "B", [1, 1])])


def best_on_time_by_enumeration(problem):
    best = 0
    capacity = force_capacity(problem)
    for days in itertools.product([None, *range(problem.horizon_days)], repeat=len(problem.jobs)):
        used = {}
        for j, d in zip(problem.jobs, days):
            for f in j.forces if d is not None else ():
                used[f, d] = used.get((f, d), 0) + 1
        if all(n <= capacity[f][d] for (f, d), n in used.items()) and \
                all(d is None or d >= j.release_day for j, d in zip(problem.jobs, days)):
            best = max(best, sum(1 for j, d in zip(problem.jobs, days)
                                 if d is not None and lateness(j, d) == 0))
    return best


def test_cp_sat_finds_the_optimal_plan_and_proves_it():
    problem = tight_instance()
    greedy = solve_greedy(problem)
    plan = solve(problem, time_limit=5)
    assert best_on_time_by_enumeration(problem) == 2
    assert greedy.on_time == 1
    assert (plan.solver, plan.status, plan.on_time, plan.bound_on_time) == ("cp-sat", "optimal", 2, 2)
    by_op = {(a.operation_id, a.force_code): (a.team, a.day) for a in plan.assignments}
    assert by_op[("y", "A")] == ("a1", 0) and by_op[("z", "B")] == ("b1", 0)
    # x still gets done, a day late, rather than left out
    assert by_op[("x", "A")] == ("a1", 1) and by_op[("x", "B")] == ("b1", 1)
    assert plan.late == 1 and plan.lateness_hours == 24.0


def random_instance(seed, jobs=12, days=4):
    rng = random.Random(seed)
    forces = "ABC"
    return Problem(
        horizon_days=days,
        jobs=[job(f"j{n}", rng.sample(forces, rng.randint(1, 2)), rng.randrange(days),
                  release=rng.randrange(2)) for n in range(jobs)],
        teams=[team(f"{f}{t}", f, [rng.randint(0, 2) for _ in range(days)])
               for f in forces for t in range(2)])


@pytest.mark.parametrize("seed", range(4))
def test_cp_sat_matches_enumeration_on_random_small_instances(seed):
    problem = random_instance(seed, jobs=7, days=3)
    plan = solve(problem, time_limit=5)
    assert plan.status == "optimal"
    assert plan.on_time == plan.bound_on_time == best_on_time_by_enumeration(problem)
    assert plan.on_time >= solve_greedy(problem).on_time


def test_plans_respect_capacity_release_and_forces():
    problem = random_instance(7, jobs=40, days=6)
    for plan in (solve(problem, time_limit=5), solve_greedy(problem)):
        used = {}
        for a in plan.assignments:
            used[a.team, a.day] = used.get((a.team, a.day), 0) + 1
        capacity = {t.code: t for t in problem.teams}
        assert all(n <= capacity[t].capacity[d] for (t, d), n in used.items())
        by_job = {}
        for a in plan.assignments:
            assert capacity[a.team].force_code == a.force_code
            by_job.setdefault(a.operation_id, set()).add((a.force_code, a.day))
        for j in problem.jobs:
            if j.operation_id in by_job:  # every force present, all on one day, not before release
                assert {f for f, _ in by_job[j.operation_id]} == set(j.forces)
                assert len({d for _, d in by_job[j.operation_id]}) == 1
                assert next(iter(by_job[j.operation_id]))[1] >= j.release_day
            else:
                assert j.operation_id in plan.unscheduled


def test_with_no_time_cp_sat_falls_back_to_the_greedy_plan():
    problem = random_instance(3, jobs=40, days=6)
    plan = solve_cp_sat(problem, time_limit=0)
    greedy = solve_greedy(problem)
    assert (plan.solver, plan.status) == ("greedy", "fallback")
    assert plan.assignments == greedy.assignments and plan.bound_on_time is None


def test_an_empty_town_has_an_empty_plan():
    plan = solve(Problem(horizon_days=3, jobs=[], teams=[team("a1", "A", [1, 1, 1])]))
    assert plan.assignments == [] and plan.on_time == 0


# --- re-planning --------------------------------------------------------------------------------------

def week_of_work():
    """30 operations over a week for three forces with two teams each: room for all, not much more."""
    rng = random.Random(11)
    jobs = [job(f"op{n:02d}", rng.sample("ABC", 2), rng.randint(2, 6), release=rng.randint(0, 2))
            for n in range(30)]
    teams = [team(f"{f}{t}", f, [3, 3, 3, 3, 3, 0, 0], local=t == 0) for f in "ABC" for t in range(2)]
    return Problem(horizon_days=7, jobs=jobs, teams=teams)


def revised(problem, plan, **changes):
    return Problem(**{"horizon_days": problem.horizon_days, "jobs": problem.jobs,
                      "teams": problem.teams, "previous": plan.assignments, **changes})


def test_an_officer_dropping_out_moves_few_assignments():
    problem = week_of_work()
    first = solve(problem, time_limit=5)
    # the busiest team loses an officer on its busiest day: one operation fewer there
    load = {}
    for a in first.assignments:
        load[a.team, a.day] = load.get((a.team, a.day), 0) + 1
    (busy_team, busy_day), _ = max(load.items(), key=lambda kv: (kv[1], kv[0]))
    teams = [TeamCapacity(t.code, t.force_code,
                          [c - 1 if (t.code, d) == (busy_team, busy_day) else c
                           for d, c in enumerate(t.capacity)], t.local) for t in problem.teams]
    again = solve(revised(problem, first, teams=teams), time_limit=5)

    assert again.on_time == first.on_time
    assert 1 <= again.moved <= 2  # one force of one operation changes team (or its day)
    fresh = solve(Problem(horizon_days=7, jobs=problem.jobs, teams=teams), time_limit=5, seed=3)
    # a plan made from scratch, measured against the same previous plan, moves many more
    scratch = evaluate(revised(problem, first, teams=teams), {}, fresh.assignments, "cp-sat", "x", 0)
    assert scratch.moved > 3 * again.moved


def test_an_urgent_operation_gets_on_time_with_few_moves():
    problem = week_of_work()
    first = solve(problem, time_limit=5)
    urgent = job("urgent", "AB", 0, urgency="emergency")
    full = [TeamCapacity(t.code, t.force_code, [sum(1 for a in first.assignments
                                                   if a.team == t.code and a.day == 0)] + t.capacity[1:],
                         t.local) for t in problem.teams]  # no spare room on day 0
    again = solve(revised(problem, first, jobs=[*problem.jobs, urgent], teams=full), time_limit=5)

    urgent_days = {a.day for a in again.assignments if a.operation_id == "urgent"}
    assert urgent_days == {0}
    assert again.moved <= 4  # at most two operations' forces make room on day 0
    kept = {(a.operation_id, a.force_code): (a.day, a.team) for a in again.assignments}
    unchanged = sum(1 for a in first.assignments if kept.get((a.operation_id, a.force_code)) == (a.day, a.team))
    assert unchanged >= len(first.assignments) - 4


def test_greedy_keeps_previous_days_that_still_fit():
    problem = week_of_work()
    first = solve_greedy(problem)
    again = solve_greedy(revised(problem, first))
    assert again.moved == 0 and again.assignments == first.assignments

"""The scheduling worker process: reads a problem as JSON on stdin, writes the plan as JSON on
stdout. The service starts one per solve (``python -m enforcement.solver_process``), so CP-SAT's CPU
work never runs in the process whose eventlet hub keeps the broker heartbeats and answers calls; a
solve that hangs or crashes is killed or lost without touching the service.

    {"problem": {...}, "time_limit": 10, "workers": 2}  →  {...plan...}
"""
import json
import sys

from enforcement import scheduling


def main():
    request = json.load(sys.stdin)
    problem = scheduling.Problem.from_dict(request["problem"])
    plan = scheduling.solve(problem, time_limit=float(request.get("time_limit", 10)),
                            workers=int(request.get("workers", 2)), seed=int(request.get("seed", 0)))
    json.dump(plan.to_dict(), sys.stdout)


if __name__ == "__main__":
    main()

"""The reference data that ships in the package (``enforcement/data``), read and checked.

- ``forces.csv``: the forces and their teams in each town (team names and codes are demo data,
  ``source`` says so); a district replaces the file with its own and reloads.
- ``competence.yml``: violation types → the forces legally competent (lead and assist), the
  report-in deadline, reminder and escalation for each urgency, the operation's due time, and the
  legal procedure (notice and statutory waiting period) where there is one.
- ``rosters.yml``: each force's duty days, hours, cap on concurrent operations and officers (demo
  data, marked so), and the district teams serving every town.
"""
import csv
from pathlib import Path
from typing import NamedTuple

import yaml

from enforcement import domain
from wuji_common import reference

DATA = Path(__file__).parent / "data"


def force_rows(path=DATA / "forces.csv"):
    with open(path, encoding="utf-8", newline="") as f:
        return [dict(row) for row in csv.DictReader(f)]


def competence_doc(path=DATA / "competence.yml"):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def rosters_doc(path=DATA / "rosters.yml"):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


class Reference(NamedTuple):
    towns: dict
    forces: list
    teams: list            # the towns' own teams, then the district teams
    violation_types: list
    rosters: list          # one per team
    officers: list


def shipped():
    """The reference data from the shipped files and wuji_common's towns, checked."""
    towns = reference.towns()
    forces, teams = domain.parse_forces(force_rows(), set(towns))
    violation_types = domain.parse_competence(competence_doc(), {f.code for f in forces})
    district, rosters, officers = domain.parse_rosters(rosters_doc(), forces, teams, set(towns))
    return Reference(towns, forces, [*teams, *district], violation_types, rosters, officers)

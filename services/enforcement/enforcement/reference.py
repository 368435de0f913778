"""The reference data that ships in the package (``enforcement/data``), read and checked.

- ``forces.csv``: the forces and their teams in each town (team names and codes are demo data,
  ``source`` says so); a district replaces the file with its own and reloads.
- ``competence.yml``: violation types → the forces legally competent (lead and assist), and the
  report-in deadline for each urgency.
"""
import csv
from pathlib import Path

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


def shipped():
    """(towns, forces, teams, violation_types) from the shipped files and wuji_common's towns."""
    towns = reference.towns()
    forces, teams = domain.parse_forces(force_rows(), set(towns))
    violation_types = domain.parse_competence(competence_doc(), {f.code for f in forces})
    return towns, forces, teams, violation_types

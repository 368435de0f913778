"""Reference data that ships with the platform: Yicheng district's divisions and its units.

The district and its seven towns/sub-districts carry their official statistical division codes (统计用区划代码,
2022). Village codes are not published: every village row is demo data (``source`` says so), as are
the units' codes. A district replaces these files with its own and reloads.
"""
import csv
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent / "reference"


def _read(name):
    with open(HERE / name, encoding="utf-8", newline="") as f:
        return [dict(row) for row in csv.DictReader(f)]


@lru_cache(maxsize=None)
def divisions():
    """Rows with code, name, level (district|town|village), parent_code, source."""
    return tuple(_read("divisions.csv"))


@lru_cache(maxsize=None)
def units():
    """Rows with code, name, type (district_department|town_office|grid_worker|command_centre),
    town_code, village_code, source."""
    return tuple(_read("units.csv"))


def towns():
    return {d["code"]: d["name"] for d in divisions() if d["level"] == "town"}


def villages():
    return {d["code"]: d for d in divisions() if d["level"] == "village"}

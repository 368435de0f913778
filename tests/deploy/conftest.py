"""Fixtures of the deployment tests: docker-compose.yml parsed once."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def compose():
    """docker-compose.yml as Compose reads it (YAML merge keys resolved; ${...} left as text)."""
    with open(ROOT / "docker-compose.yml", encoding="utf-8") as f:
        return yaml.safe_load(f)

"""The committed event documentation is generated from the catalogue and must match it."""
import json
from pathlib import Path

import pytest

from wuji_common.asyncapi import asyncapi_document, events_markdown
from wuji_common.events import CATALOGUE, make_event

DOCS = Path(__file__).resolve().parents[3] / "docs"


def test_docs_match_the_catalogue():
    assert json.loads((DOCS / "asyncapi.json").read_text(encoding="utf-8")) == asyncapi_document(), \
        "run `.venv/bin/wuji-broker asyncapi` and commit docs/"
    assert (DOCS / "events.md").read_text(encoding="utf-8") == events_markdown()


def test_every_event_type_is_documented():
    doc = asyncapi_document()
    for event_type, (source, _, schema) in CATALOGUE.items():
        assert f"{source}.events/{event_type}" in doc["channels"]
        assert schema.__doc__, f"{event_type} needs a docstring saying what happened"


def test_make_event_refuses_fields_outside_the_contract():
    with pytest.raises(ValueError):
        make_event("appeal_rated", "YC1", {"satisfaction": "satisfied", "rated_at": "2026-11-25T10:00:00+00:00", "phone": "13812345678"})

"""``triage db upgrade`` and ``triage load-reference`` as an operator runs them."""
import pytest
from sqlalchemy import create_engine, func, select

from triage import cli
from triage.models import Division, Unit
from wuji_common import reference


def test_upgrade_then_load_reference(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'var' / 'triage.db'}"
    for argv in (["db", "upgrade", "--db-url", url], ["load-reference", "--db-url", url],
                 ["load-reference", "--db-url", url]):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 0
    rows = len(reference.divisions()) + len(reference.units())
    assert f"loaded {rows} reference rows" in capsys.readouterr().out
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Division)).scalar() == len(reference.divisions())
        assert conn.execute(select(func.count()).select_from(Unit)).scalar() == len(reference.units())
    engine.dispose()


def test_upgrade_can_load_the_reference_data_in_the_same_run(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'triage.db'}"
    with pytest.raises(SystemExit) as done:
        cli.main(["db", "upgrade", "--load-reference", "--db-url", url])
    assert done.value.code == 0
    rows = len(reference.divisions()) + len(reference.units())
    assert capsys.readouterr().out.splitlines()[-1] == f"triage: loaded {rows} reference rows"
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Unit)).scalar() == len(reference.units())
    engine.dispose()

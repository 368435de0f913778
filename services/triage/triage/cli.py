"""``triage db upgrade``, ``triage load-reference``, and the classifier's ``train`` / ``evaluate``
(from triage.cli_model, when it is installed)."""
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

from triage import handlers
from triage.models import metadata
from wuji_common import reference
from wuji_common.cli import service_cli


def load_reference(uow):
    return handlers.load_reference(uow, list(reference.divisions()), list(reference.units()))


def add_model_commands(sub):
    """Register the classifier's subcommands; each sets ``args.func``, which service_cli calls."""
    if find_spec("triage.cli_model") is None:
        return
    import_module("triage.cli_model").add_subcommands(sub)


main = service_cli("triage", Path(__file__).parent / "migrations", metadata, load_reference,
                   extra=add_model_commands)

from metrics.models import metadata
from wuji_common.migrations import run_env

run_env(metadata)

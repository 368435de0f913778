#!/bin/sh
# Start one Wuji service in its container: bring its database schema up to date, load the reference
# data that ships with the project, then become `nameko run` (exec: SIGTERM from `docker stop`
# reaches nameko, which stops taking work and lets running workers finish).
#
# SERVICE names the service (intake, triage, enforcement, notify, metrics); its settings come from
# the environment through services/$SERVICE/config.yml.
# Migrations run at every start and are idempotent; on PostgreSQL an advisory lock serialises them,
# so several replicas of one service may start at the same moment.
set -eu

: "${SERVICE:?set SERVICE to intake, triage, enforcement, notify or metrics}"
# the repository root (/app in the image)
cd "$(dirname "$0")/.."
config="services/$SERVICE/config.yml"
if [ ! -f "$config" ]; then
    echo "entrypoint: no such service: $SERVICE ($config not found)" >&2
    exit 64
fi
# a value still holding a placeholder of .env.example is a set-up mistake, never a secret
placeholders=$(env | grep -E '^[A-Za-z_][A-Za-z0-9_]*=.*replace-me' | cut -d= -f1 || true)
if [ -n "$placeholders" ]; then
    echo "entrypoint: replace the .env.example placeholders in:" $placeholders >&2
    exit 78
fi

# every service answers --load-reference; loading again changes nothing
"$SERVICE" db upgrade --load-reference

# Prometheus scrapes the metrics port from another container, so it must listen beyond loopback.
# MetricsExporter reads METRICS_ADDRESS from the nameko config; a config.yml that does not pass it
# through from the environment gets it appended here (a copy; the file in the image is unchanged).
if [ -n "${METRICS_ADDRESS:-}" ] && ! grep -q '^METRICS_ADDRESS:' "$config"; then
    overlay="${TMPDIR:-/tmp}/wuji-$SERVICE-config.yml"
    { cat "$config"; printf '\n# appended by deploy/entrypoint.sh\nMETRICS_ADDRESS: ${METRICS_ADDRESS:127.0.0.1}\n'; } > "$overlay"
    config="$overlay"
fi

exec nameko run --config "$config" "$SERVICE.service"

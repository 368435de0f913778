#!/bin/bash
# One database and one login role per Wuji service, each owning only its own database.
#
# The postgres image runs this once, on an empty data directory (/docker-entrypoint-initdb.d/).
# It is idempotent, so after adding a service or rotating a password it can be run again:
#   docker compose exec -u postgres postgres bash /docker-entrypoint-initdb.d/10-wuji-databases.sh
#
# Environment: <SERVICE>_DB_PASSWORD for INTAKE, TRIAGE, ENFORCEMENT, NOTIFY and METRICS (URL-safe,
# at least 16 characters: they go into the services' database URLs unescaped); POSTGRES_USER and
# POSTGRES_DB (set by the image) name the superuser connection; WUJI_DB_PREFIX (default wuji_)
# prefixes role and database names (wuji_intake, ...).
set -euo pipefail

SERVICES=(intake triage enforcement notify metrics)
prefix="${WUJI_DB_PREFIX:-wuji_}"

psql_admin() {
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}" \
        --dbname "${POSTGRES_DB:-postgres}" "$@"
}

# every password is checked before anything changes in the database
declare -A passwords
for svc in "${SERVICES[@]}"; do
    var="${svc^^}_DB_PASSWORD"
    password="${!var:-}"
    if [[ ! "$password" =~ ^[A-Za-z0-9._~-]{16,}$ ]]; then
        echo "init-databases: $var must be set to at least 16 URL-safe characters (A-Z a-z 0-9 . _ ~ -)" >&2
        exit 1
    fi
    if [[ "$password" == replace-me* ]]; then
        echo "init-databases: $var still has the placeholder from .env.example" >&2
        exit 1
    fi
    passwords[$svc]=$password
done

for svc in "${SERVICES[@]}"; do
    name="$prefix$svc"
    # psql variables (:"name" quotes an identifier, :'password' a literal): nothing is spliced into SQL
    psql_admin -v name="$name" -v password="${passwords[$svc]}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'name')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'name') \gexec
ALTER ROLE :"name" WITH LOGIN PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'name')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name') \gexec
-- services do not see each other's data: only the owner (and superusers) may connect
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
    echo "init-databases: $name ready"
done

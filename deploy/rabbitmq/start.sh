#!/bin/bash
# The rabbitmq container's entrypoint: start the broker as the image would, create Wuji's users from
# the environment (init-users.sh) once it is up, then stay in the foreground until the broker stops.
# The compose health check requires the ready marker, so no service connects before its user exists.
set -uo pipefail

READY=/tmp/wuji-users-ready
COOKIE=/var/lib/rabbitmq/.erlang.cookie
here="$(dirname "$0")"
rm -f "$READY"

docker-entrypoint.sh rabbitmq-server &
broker=$!
# `docker stop` sends SIGTERM to this script (PID 1): pass it on, the broker shuts down cleanly
trap 'kill -TERM "$broker" 2>/dev/null' TERM INT

# the CLI tools must run as the broker's user: they authenticate with its Erlang cookie
as_rabbitmq() { if [ "$(id -u)" = 0 ]; then gosu rabbitmq "$@"; else "$@"; fi; }

broker_up() {
    # wait for the node to write its cookie first, so that rabbitmqctl does not create another one
    local deadline=$((SECONDS + 180))
    until [ -s "$COOKIE" ] && as_rabbitmq rabbitmqctl --quiet await_startup >/dev/null 2>&1; do
        kill -0 "$broker" 2>/dev/null || return 1
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 2
    done
}

remove_guest() {
    # no guest is created when definitions are imported at boot; remove one left by an older setup
    if as_rabbitmq rabbitmqctl --silent list_users | cut -f1 | grep -qx guest; then
        as_rabbitmq rabbitmqctl --quiet delete_user guest >/dev/null
    fi
}

failed=0
if broker_up && as_rabbitmq bash "$here/init-users.sh" && remove_guest; then
    touch "$READY"
else
    echo "start: the broker did not come up with Wuji's users; stopping it" >&2
    failed=1
    kill -TERM "$broker" 2>/dev/null
fi

# wait returns early when a trapped signal arrives: wait again until the broker has exited
while kill -0 "$broker" 2>/dev/null; do
    wait "$broker"
done
wait "$broker"
status=$?
[ "$failed" = 0 ] || exit 1
exit "$status"

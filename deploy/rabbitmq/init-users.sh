#!/bin/bash
# Create or update Wuji's RabbitMQ users and their permissions from the environment.
#
# Idempotent: deploy/rabbitmq/start.sh runs it at every broker start, and after a password change it
# can be run again by hand:  docker compose exec -u rabbitmq rabbitmq bash /opt/wuji/rabbitmq/init-users.sh
#
# Why a script and not the definitions file: definitions cannot read environment variables, and
# password hashes of real secrets do not belong in the repository. Passwords reach rabbitmqctl on
# standard input, never on a command line.
#
# Environment:
#   WUJI_AMQP_ADMIN_USER, WUJI_AMQP_ADMIN_PASSWORD  operators and the queue declaration job
#   <SERVICE>_AMQP_PASSWORD    one per service (INTAKE, TRIAGE, ENFORCEMENT, NOTIFY, METRICS);
#                              the user is named after the service
#   WUJI_AMQP_VHOST            default wuji
#   WUJI_AMQP_USER_PREFIX      default none (tests use it to stay apart from other users)
# (not RABBITMQ_*: the broker image and its scripts read variables of that prefix themselves)
# Passwords go into AMQP URIs unescaped, so they must be URL-safe: letters, digits and . _ ~ -
# (e.g. `openssl rand -hex 24`), at least 16 characters.
set -euo pipefail

SERVICES=(intake triage enforcement notify metrics)
vhost="${WUJI_AMQP_VHOST:-wuji}"
prefix="${WUJI_AMQP_USER_PREFIX:-}"

ctl() { rabbitmqctl --quiet "$@" >/dev/null; }

password_from() {
    local var=$1
    local value="${!var:-}"
    if [[ ! "$value" =~ ^[A-Za-z0-9._~-]{16,}$ ]]; then
        echo "init-users: $var must be set to at least 16 URL-safe characters (A-Z a-z 0-9 . _ ~ -)" >&2
        return 1
    fi
    if [[ "$value" == replace-me* ]]; then
        echo "init-users: $var still has the placeholder from .env.example" >&2
        return 1
    fi
    printf '%s' "$value"
}

ensure_user() {
    local user=$1 password=$2
    if grep -qxF -- "$user" <<<"$existing_users"; then
        printf '%s' "$password" | ctl change_password "$user"
    else
        printf '%s' "$password" | ctl add_user "$user"
    fi
}

# What a nameko service touches (nameko 2.14 names; see wuji_common.topology and .entrypoints):
#   nameko-rpc                          the RPC exchange (requests and replies)
#   <service>.events                    its own event exchange; it declares (configure) and binds
#                                       to (read) every service's, but publishes (write) only to its own
#   rpc-<service>                       its RPC queue
#   rpc.reply-<service>-<uuid>          reply queues of its RPC proxies
#   evt-<source>-<type>--<service>.<m>  its event handlers' queues, with .retry.<n> and .dead
#   <service>.retry                     its own direct exchange: failed events go to their retry/dead queue
permissions_for() {
    local svc=$1
    local own="rpc-$svc|rpc\\.reply-$svc-.+|evt-.+--$svc\\..+"
    local configure="^(nameko-rpc|.+\\.events|$svc\\.retry|$own)\$"
    local write="^(nameko-rpc|$svc\\.events|$svc\\.retry|$own)\$"
    local read="^(nameko-rpc|.+\\.events|$svc\\.retry|$own)\$"
    printf '%s\n%s\n%s\n' "$configure" "$write" "$read"
}

# Routing keys a service may publish on nameko-rpc (topic permissions): `<service>.<method>` calls and
# replies (keyed by a uuid). intake.contact_for_notification and intake.contacts_for_notification
# return citizens' plain contact data, and only notify needs them.
rpc_calls_for() {
    if [ "$1" = notify ]; then
        printf '%s' '^.*$'
    else
        printf '%s' '^(?!intake\.contacts?_for_notification$).*$'
    fi
}

main() {
    # every password is checked before anything changes on the broker
    local admin="${WUJI_AMQP_ADMIN_USER:-wuji-admin}" svc
    local -A passwords
    passwords[$admin]=$(password_from WUJI_AMQP_ADMIN_PASSWORD)
    for svc in "${SERVICES[@]}"; do
        passwords[$prefix$svc]=$(password_from "${svc^^}_AMQP_PASSWORD")
    done

    ctl add_vhost "$vhost"    # already there from the definitions file; kept for a bare broker
    # (each rabbitmqctl call starts an Erlang VM: the user list is read once)
    local existing_users
    existing_users=$(rabbitmqctl --silent list_users | cut -f1)

    ensure_user "$admin" "${passwords[$admin]}"
    ctl set_user_tags "$admin" administrator
    ctl set_permissions -p "$vhost" "$admin" ".*" ".*" ".*"

    local user perms
    for svc in "${SERVICES[@]}"; do
        user="$prefix$svc"
        ensure_user "$user" "${passwords[$user]}"      # no tags: no management UI for services
        mapfile -t perms < <(permissions_for "$svc")
        ctl set_permissions -p "$vhost" "$user" "${perms[0]}" "${perms[1]}" "${perms[2]}"
        ctl set_topic_permissions -p "$vhost" "$user" nameko-rpc "$(rpc_calls_for "$svc")" '^.*$'
    done
    echo "init-users: $admin and ${#SERVICES[@]} service users ready on vhost $vhost"
}

main "$@"

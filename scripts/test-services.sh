#!/usr/bin/env bash
# Installs and starts the system services the test suite talks to, from
# Debian's packages. Idempotent and quick when everything is already running.
#
#   PostgreSQL: a dedicated cluster "thrifty" on 127.0.0.1:${THRIFTY_PG_PORT:-55432}
#   (trust auth on loopback only), database "thrifty_test". The URL is written
#   to .thrifty/test-services/postgres.url for the tests.
#   Redis: a private redis-server on 127.0.0.1:${THRIFTY_REDIS_PORT:-56379}, no persistence;
#   the URL is written to .thrifty/test-services/redis.url.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .thrifty/test-services

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

apt_updated=0
# Another apt or dpkg (an unattended upgrade, a parallel session) may hold the locks: wait for
# them (DPkg::Lock::Timeout for dpkg's; retries for a run that still fails while locked).
APT_WAIT=${THRIFTY_APT_WAIT_S:-600}
apt_get() {
    local deadline=$((SECONDS + APT_WAIT)) out
    while true; do
        if out=$(as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="$APT_WAIT" "$@" 2>&1); then
            return 0
        fi
        if ! grep -qiE "could not get lock|unable to (acquire|lock)|is another process using it" <<<"$out" \
            || [ "$SECONDS" -ge "$deadline" ]; then
            printf '%s\n' "$out" >&2
            return 1
        fi
        echo "apt is busy (another apt/dpkg holds its lock); waiting..." >&2
        sleep 5
    done
}
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt_get update -qq
        apt_updated=1
    fi
    apt_get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL ---------------------------------------------------------------
pg_port=${THRIFTY_PG_PORT:-55432}
pg_db=thrifty_test
setup_postgres() {
    if ! command -v pg_createcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        # Installing starts no service we rely on: the tests use their own cluster.
        apt_install postgresql
    fi
    local version
    version=$(ls /usr/lib/postgresql | sort -V | tail -1)
    if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version thrifty"; then
        as_root pg_createcluster "$version" thrifty -p "$pg_port" -- \
            --auth-local=trust --auth-host=trust >/dev/null
        # Loopback only, tuned for a test machine (no durability wait on commit).
        printf "%s\n" "listen_addresses = '127.0.0.1'" "max_connections = 200" \
            "synchronous_commit = off" \
            | as_root tee "/etc/postgresql/$version/thrifty/conf.d/thrifty-tests.conf" >/dev/null
    fi
    if ! pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="thrifty" {print $4}' | grep -q online; then
        as_root pg_ctlcluster "$version" thrifty start
    fi
    local i
    for i in $(seq 1 50); do
        if pg_isready -q -h 127.0.0.1 -p "$pg_port"; then break; fi
        sleep 0.2
    done
    if ! psql -h 127.0.0.1 -p "$pg_port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$pg_db'" | grep -q 1; then
        psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "CREATE DATABASE $pg_db" >/dev/null
    fi
    echo "postgresql://postgres@127.0.0.1:$pg_port/$pg_db" > .thrifty/test-services/postgres.url
}

# --- Redis ----------------------------------------------------------------------
redis_port=${THRIFTY_REDIS_PORT:-56379}
setup_redis() {
    if ! command -v redis-server >/dev/null; then
        apt_install redis-server
    fi
    if ! redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
        local dir
        dir="$(pwd)/.thrifty/test-services/redis"
        mkdir -p "$dir"
        redis-server --bind 127.0.0.1 --port "$redis_port" --protected-mode yes --save "" \
            --appendonly no --dir "$dir" --daemonize yes --logfile "$dir/redis.log" >/dev/null
        local i
        for i in $(seq 1 50); do
            if redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null | grep -q PONG; then break; fi
            sleep 0.1
        done
    fi
    echo "redis://127.0.0.1:$redis_port/0" > .thrifty/test-services/redis.url
}

# --- Chromium (headless, for the dashboard's browser tests) --------------------------
# Debian's package; Playwright drives it as the system browser (no browser download).
if ! command -v chromium >/dev/null; then
    apt_install chromium
fi

setup_postgres
setup_redis
echo "test services: postgresql on 127.0.0.1:$pg_port ($(cat .thrifty/test-services/postgres.url))"
echo "test services: redis on 127.0.0.1:$redis_port ($(cat .thrifty/test-services/redis.url))"

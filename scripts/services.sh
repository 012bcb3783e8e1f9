#!/usr/bin/env bash
# Starts (or stops) a private PostgreSQL cluster and Redis on loopback for tests and benchmarks.
# Usage: scripts/services.sh start|stop|stop-postgres|stop-redis|restart-postgres|running|env
# Prints nothing on `start` but errors; `env` prints the exports to eval.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUN_DIR="${LOUPE_SERVICES_DIR:-$ROOT/.run}"
PG_PORT="${LOUPE_PG_PORT:-54329}"
REDIS_PORT="${LOUPE_REDIS_PORT:-63799}"
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
PG_DATA="$RUN_DIR/pg"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_postgres() {
  mkdir -p "$RUN_DIR"
  if [ ! -s "$PG_DATA/PG_VERSION" ]; then
    mkdir -p "$PG_DATA"; [ "$(id -u)" = 0 ] && chown postgres "$PG_DATA" "$RUN_DIR"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U loupe --auth=trust -E UTF8 >/dev/null
  fi
  if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
      echo "Port $PG_PORT is taken by a PostgreSQL that is not $PG_DATA's (a removed checkout's?)." >&2
      echo "Stop it, or choose another port with LOUPE_PG_PORT=..." >&2
      exit 1
    fi
    # fsync off: a test cluster trades durability for speed; the fault tests restart it cleanly.
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -o \
      "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" start >/dev/null
  fi
  as_pg "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U loupe -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='loupe'" | grep -q 1 \
    || as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U loupe loupe
}

start_redis() {
  mkdir -p "$RUN_DIR/redis"
  if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --save "" --appendonly no \
      --dir "$RUN_DIR/redis" --logfile "$RUN_DIR/redis/redis.log" >/dev/null
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
}

case "${1:-start}" in
  start) start_postgres; start_redis ;;
  stop)
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true ;;
  stop-postgres) as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true ;;
  stop-redis) redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true ;;
  running)
    # Which of the two answer now (before `start`, tells a caller what it will have to stop).
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && echo postgres
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && echo redis
    true ;;
  restart-postgres) as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w restart >/dev/null ;;
  env)
    echo "export DATABASE_URL=postgres://loupe@127.0.0.1:$PG_PORT/loupe"
    echo "export LOUPE_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
    echo "export LOUPE_PG_DATA=$PG_DATA LOUPE_PG_BIN=$PG_BIN" ;;
  *) echo "usage: $0 start|stop|stop-postgres|stop-redis|restart-postgres|running|env" >&2; exit 2 ;;
esac

#!/bin/sh
# A data pod of the replicated Redis: a replica of the primary the Sentinels name, or (first start, no Sentinel
# answering yet) redis-0 is the primary and the others replicate it. Sentinel then moves the roles on failover
# and rewrites nothing here: a restarted pod asks the Sentinels again.
set -eu
ME="${POD_NAME}.redis"
PRIMARY=""
for attempt in 1 2 3 4 5 6; do
  PRIMARY=$(REDISCLI_AUTH="" redis-cli -h redis-sentinel -p 26379 --raw sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1 || true)
  [ -n "$PRIMARY" ] && break
  [ "$POD_NAME" = "redis-0" ] && break
  sleep 2
done
[ -n "$PRIMARY" ] || [ "$POD_NAME" = "redis-0" ] || PRIMARY="redis-0.redis"
set -- redis-server --appendonly yes --appendfsync everysec --dir /data \
  --maxmemory "$REDIS_MAXMEMORY" --maxmemory-policy noeviction \
  --requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD" --protected-mode no \
  --replica-announce-ip "$ME"
if [ -n "$PRIMARY" ] && [ "$PRIMARY" != "$ME" ]; then
  set -- "$@" --replicaof "$PRIMARY" 6379
fi
exec "$@"

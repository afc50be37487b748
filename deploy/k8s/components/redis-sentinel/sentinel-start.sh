#!/bin/sh
# A Sentinel: monitors the primary its peers already know (after a failover that is no longer redis-0), or
# redis-0 on a first start. Its config lives on an emptyDir: Sentinel rewrites it as it learns the set.
set -eu
PRIMARY=""
for peer in 0 1 2; do
  host="redis-sentinel-${peer}.redis-sentinel"
  [ "$host" = "${POD_NAME}.redis-sentinel" ] && continue
  PRIMARY=$(redis-cli -h "$host" -p 26379 --raw sentinel get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1 || true)
  [ -n "$PRIMARY" ] && break
done
[ -n "$PRIMARY" ] || PRIMARY="redis-0.redis"
cat > /data/sentinel.conf <<CONF
port 26379
dir /data
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip ${POD_NAME}.redis-sentinel
sentinel monitor ${MASTER_NAME} ${PRIMARY} 6379 2
sentinel auth-pass ${MASTER_NAME} ${REDIS_PASSWORD}
sentinel down-after-milliseconds ${MASTER_NAME} ${DOWN_AFTER_MS}
sentinel failover-timeout ${MASTER_NAME} ${FAILOVER_TIMEOUT_MS}
sentinel parallel-syncs ${MASTER_NAME} 1
CONF
exec redis-sentinel /data/sentinel.conf

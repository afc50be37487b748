"""One parser for the stack's Redis URL, plain or through Sentinels, and what each client library needs.

    redis://[:password@]host:port/db                 one Redis (as before)
    redis+sentinel://[:password@]h1:26379,h2:26379/MASTER[/db][?sentinel_password=...]

With Sentinels, every connection asks them for the current primary (redis-py ``Sentinel.master_for``;
Celery/kombu's ``sentinel://`` transport with ``master_name``), so a failover is followed by reconnecting:
nothing else in the stack knows which node is the primary. The password is the data nodes' (``requirepass``);
``sentinel_password`` the Sentinels' own, when they have one.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit

from longcat.errors import InvalidArgument

SENTINEL_SCHEMES = ("redis+sentinel", "sentinel")
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisTarget:
    url: str
    sentinels: tuple[tuple[str, int], ...] = ()  # empty: a plain redis:// URL
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)


def parse(url: str) -> RedisTarget:
    """A plain URL is passed through (redis-py parses it); a Sentinel URL is split into its parts."""
    u = urlsplit(url)
    if u.scheme not in SENTINEL_SCHEMES:
        return RedisTarget(url=url)
    userinfo, _, hosts = u.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    sentinels = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
        try:
            sentinels.append((host or "127.0.0.1", int(port or DEFAULT_SENTINEL_PORT)))
        except ValueError:
            raise InvalidArgument(f"{item!r} in the Redis URL is not host:port", "redis_url") from None
    parts = [p for p in u.path.split("/") if p]
    if not parts or not hosts:
        raise InvalidArgument("a redis+sentinel:// URL names its Sentinels and the master: "
                              "redis+sentinel://host:26379,host2:26379/mymaster/0", "redis_url")
    try:
        db = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise InvalidArgument(f"{parts[1]!r} in the Redis URL is not a database number", "redis_url") from None
    query = parse_qs(u.query)
    spw = query.get("sentinel_password", [None])[0]
    return RedisTarget(url=url, sentinels=tuple(sentinels), master=unquote(parts[0]), db=db,
                       username=unquote(username) or None, password=unquote(password) or None,
                       sentinel_password=spw or None)


def make_client(url: str, **kwargs):
    """A redis-py client for the URL: ``Redis.from_url`` or ``Sentinel(...).master_for(...)``; ``kwargs`` are
    the connection options (timeouts, retry) and apply to the data connections either way."""
    import redis
    from redis.sentinel import Sentinel

    target = parse(url)
    if not target.is_sentinel:
        return redis.Redis.from_url(url, **kwargs)
    timeout = min(kwargs.get("socket_connect_timeout") or 1.0, 1.0)
    sentinel = Sentinel(list(target.sentinels), min_other_sentinels=0,
                        sentinel_kwargs={"password": target.sentinel_password, "socket_timeout": timeout,
                                         "socket_connect_timeout": timeout})
    return sentinel.master_for(target.master, redis_class=redis.Redis, db=target.db, username=target.username,
                               password=target.password, **kwargs)


def celery_broker(url: str) -> tuple[str, dict]:
    """Celery's broker URL and transport options for the stack's URL: kombu's ``sentinel://`` transport (one
    ``sentinel://`` per Sentinel, ``;``-separated, ``master_name`` in the options) for a Sentinel URL."""
    target = parse(url)
    if not target.is_sentinel:
        return url, {}
    auth = ""
    if target.password:
        auth = f"{quote(target.username or '', safe='')}:{quote(target.password, safe='')}@"
    broker = ";".join(f"sentinel://{auth}{h}:{p}/{target.db}" for h, p in target.sentinels)
    options = {"master_name": target.master}
    if target.sentinel_password:
        options["sentinel_kwargs"] = {"password": target.sentinel_password}
    return broker, options

"""The whole stack on one machine: checks, then Redis (found or started), then every service, supervised.

``LocalStack.prepare()`` starts nothing: it validates the plan, decides whether a private Redis is needed,
checks every port up front, takes the data dir's lock and resolves the model (building the tiny one on first
use). ``start()`` starts Redis then all services in parallel and waits for their health checks; ``run()``
supervises until a stop is requested; ``stop()`` stops everything (services in reverse order, the private
Redis last) and is safe to call at any point.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from longcat.errors import LongCatError
from longcat.stack import redis_local
from longcat.stack.plan import TIER_REDIS, StackOptions, StackPlan, check_ports, make_plan
from longcat.stack.supervisor import (
    Child,
    RestartPolicy,
    Supervisor,
    child_command_prefix,
    child_popen_kwargs,
    grpc_health_check,
)


class StackLocked(LongCatError):
    code = "UNAVAILABLE"


class LocalStack:
    def __init__(self, opts: StackOptions, report=None, policy: RestartPolicy | None = None,
                 start_timeout_s: float = 600.0, stop_timeout_s: float = 60.0):
        self.opts = opts
        self._user_report = report or (lambda *a, **k: None)
        self.policy = policy or RestartPolicy()
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.plan: StackPlan | None = None
        self.model_path: str | None = None
        self.redis_owned = False
        self.redis: redis_local.PrivateRedis | None = None
        self.redis_ha = None  # redis_ha.LocalRedisHA with --redis-ha
        self.supervisor: Supervisor | None = None
        self._lock = None
        self.started_at = 0.0

    def report(self, event: str, child=None, **fields) -> None:
        self._user_report(event, child, **fields)
        if event == "serving" and fields.get("restarted") and self.plan is not None:
            self.write_state()  # the restarted child's new pid

    # --- before anything starts ------------------------------------------------------------------------------

    def prepare(self) -> StackPlan:
        if self.opts.redis_ha:  # the services get the Sentinels' URL; the five processes are ours
            import dataclasses

            from longcat.stack.redis_ha import LocalRedisHA

            down_ms = self.opts.redis_ha_down_after_ms
            self.redis_ha = LocalRedisHA(make_plan(self.opts).data_dir / "redis-ha", down_after_ms=down_ms,
                                         failover_timeout_ms=max(3 * down_ms, 3000),
                                         replicas=self.opts.redis_ha_replicas).prepare()
            self.opts = dataclasses.replace(self.opts, redis_url=self.redis_ha.url)
        plan = make_plan(self.opts)                       # validates options and paths
        self.redis_owned = self.redis_ha is None and redis_local.probe(plan.redis.url) == "down"
        if self.redis_owned:
            redis_local.can_start_private(plan.redis)
        check_ports(plan.ports(with_redis=self.redis_owned))
        self._take_lock(plan.data_dir)
        from longcat.models.loading import resolve_model

        self.report("model", None, model=self.opts.model)
        self.model_path = resolve_model(self.opts.model)
        self.plan = make_plan(self.opts, self.model_path)
        return self.plan

    def _take_lock(self, data_dir: Path) -> None:
        import fcntl

        data_dir.mkdir(parents=True, exist_ok=True)
        f = open(data_dir / "up.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise StackLocked(f"another `longcat up` (pid {holder}) is running on the data dir {data_dir}: "
                              f"stop it, or pass another --data-dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f

    # --- starting and running -------------------------------------------------------------------------------

    def start(self) -> None:
        from longcat.launch import ServiceProcess

        plan = self.plan or self.prepare()
        for d in (plan.logs_dir, plan.adapter_dir, plan.blob_dir, plan.data_root, plan.output_root):
            d.mkdir(parents=True, exist_ok=True)
        popen = child_popen_kwargs()
        prefix = child_command_prefix()
        env = {"PYTHONUNBUFFERED": "1"}
        children = []
        if self.redis_owned:
            self.redis = redis_local.PrivateRedis(plan.redis, popen_kwargs=popen, command_prefix=prefix)
            children.append(Child(self.redis, TIER_REDIS, self.redis.healthy))
        if self.redis_ha is not None:
            for node in self.redis_ha.nodes:
                node.popen_kwargs, node.command_prefix = dict(popen), list(prefix)
                children.append(Child(node, TIER_REDIS, node.healthy))
        services = []
        for s in plan.services:
            proc = ServiceProcess(s.name, s.args, plan.logs_dir, env, port=s.port, metrics_port=s.metrics_port,
                                  host=s.host, log_path=s.log_path, module=f"services.{s.kind}",
                                  popen_kwargs=popen, start=False)
            proc.cmd = [*prefix, *proc.cmd]
            services.append(Child(proc, s.tier, grpc_health_check(s.address)))
        self.supervisor = Supervisor(children + services, self.report, self.policy, self.stop_timeout_s)
        self.started_at = time.monotonic()
        if children:
            self.supervisor.start_group(children, timeout=30.0)
        if self.redis_ha is not None:
            self.redis_ha.wait_ready(timeout=30.0)  # replica in sync, Sentinels agree: then the services
        self.supervisor.start_group(services, timeout=self.start_timeout_s)
        self.write_state()

    def run(self) -> None:
        self.supervisor.run()

    def request_stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.request_stop()

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop_all()
        if self.plan is not None:
            try:
                self.plan.state_path.unlink()
            except FileNotFoundError:
                pass
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # --- description ------------------------------------------------------------------------------------------

    def describe(self) -> dict:
        plan = self.plan
        sup = self.supervisor
        children = {c.name: c for c in sup.children} if sup else {}
        services = {}
        for s in plan.services:
            c = children.get(s.name)
            services[s.name] = {"address": s.address, "pid": c.pid if c else None,
                                "metrics_port": s.metrics_port or None, "log": str(s.log_path),
                                "restarts": c.restarts if c else 0}
        redis_child = children.get("redis")
        return {
            "gateway": plan.gateway.address,
            "http": plan.http_url,
            "pid": os.getpid(),
            "model": self.model_path,
            "data_dir": str(plan.data_dir),
            "adapter_dir": str(plan.adapter_dir),
            "blob_dir": str(plan.blob_dir),
            "data_root": str(plan.data_root),
            "output_root": str(plan.output_root),
            "namespace": self.opts.namespace,
            "redis_ha": None if self.redis_ha is None else {
                "url": self.redis_ha.url, "root": str(self.redis_ha.root),
                "nodes": {n.name: {"address": n.address, "pid": n.pid} for n in self.redis_ha.nodes}},
            "redis": {"url": plan.redis.url, "owned": self.redis_owned,
                      "pid": redis_child.pid if redis_child else None,
                      "data_dir": str(plan.redis.data_dir) if self.redis_owned else None,
                      "log": str(plan.redis.log_path) if self.redis_owned else None},
            "services": services,
        }

    def write_state(self) -> None:
        path = self.plan.state_path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.describe(), indent=2) + "\n")
        tmp.replace(path)

"""The operator's configuration: one object, read from environment variables (the Helm chart sets them).

| variable | default | meaning |
|---|---|---|
| SFTOP_NAMESPACES | (empty: all) | comma-separated namespaces to watch; empty watches the whole cluster |
| SFTOP_TRAINER_IMAGE | ghcr.io/sftop/sftop-trainer:<version> | trainer image for SFTJobs that name none |
| SFTOP_DEFAULT_CPU | 4 | CPU request and limit of trainer pods whose SFTJob sets none |
| SFTOP_DEFAULT_MEMORY | 32Gi | memory request and limit of trainer pods whose SFTJob sets none |
| SFTOP_VALIDATION_CPU | 2 | CPU request and limit of validation pods whose SFTJob sets none |
| SFTOP_VALIDATION_MEMORY | 8Gi | memory request and limit of validation pods whose SFTJob sets none |
| SFTOP_VALIDATION_DEADLINE_SECONDS | 3600 | wall-clock limit of a validation Job |
| SFTOP_PROGRESS_PORT | 8080 | the trainer pods' progress endpoint port |
| SFTOP_PROGRESS_INTERVAL | 15 | seconds between two progress reads of one running SFTJob |
| SFTOP_PROGRESS_TIMEOUT | 1 | seconds a progress read may take; a pod that does not answer is read less often |
| SFTOP_PROGRESS_CONCURRENCY | 64 | progress reads under way at once |
| SFTOP_STATUS_WRITES_PER_MINUTE | 4 | most live-progress status writes per running SFTJob per minute |
| SFTOP_RESYNC_INTERVAL | 300 | seconds between two full reconciliations of one SFTJob (drift repair) |
| SFTOP_TERMINATION_GRACE_SECONDS | 120 | trainer pods' grace period: time to finish a step and save a checkpoint |
| SFTOP_WORKERS | 16 | SFTJobs reconciled at the same time (and the API calls in flight) |
| SFTOP_STORAGE_REQUESTS | false | whether training pods request ephemeral-storage for their cache, sized from the plan (true only where every ClusterQueue covers ephemeral-storage, as Kueue admits no Workload asking for a resource its queue does not cover, and GPU node groups that scale from zero declare it to the cluster-autoscaler) |
| SFTOP_LOG_FORMAT | text | text or json |
| SFTOP_LOG_LEVEL | INFO | Python log level |
| SFTOP_HEALTH_PORT | 8081 | port of the liveness endpoint (/healthz); 0 turns it off |
| SFTOP_METRICS_PORT | 8080 | port of the Prometheus metrics endpoint (/metrics); 0 turns it off |
| SFTOP_POLICY | (empty: none) | name of the cluster's SFTPolicy (sftop.policy): every new run is checked against it before any child is created, and while it is missing new runs wait (PolicyMissing); empty enforces no policy |
| SFTOP_HF_ENDPOINT | (empty: the Hub) | a Hugging Face Hub mirror for validation and training pods (HF_ENDPOINT) |
| SFTOP_K8S_SERVER | (empty) | talk to this API server URL instead of the in-cluster or kubeconfig one (tests) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("sftop")
    except metadata.PackageNotFoundError:
        return "0.1.0"


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    trainer_image: str = field(default_factory=lambda: f"ghcr.io/sftop/sftop-trainer:{_version()}")
    default_cpu: str = "4"
    default_memory: str = "32Gi"
    validation_cpu: str = "2"
    validation_memory: str = "8Gi"
    validation_deadline_seconds: int = 3600
    progress_port: int = 8080
    progress_interval: float = 15.0
    progress_timeout: float = 1.0
    progress_concurrency: int = 64
    status_writes_per_minute: float = 4.0
    resync_interval: float = 300.0
    termination_grace_seconds: int = 120
    workers: int = 16
    log_format: str = "text"
    log_level: str = "INFO"
    health_port: int = 8081
    metrics_port: int = 8080
    k8s_server: str | None = None
    policy: str | None = None
    hf_endpoint: str | None = None
    storage_requests: bool = False

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        kw: dict = {}

        def number(name: str, kind: type, minimum: float) -> None:
            if env.get(name):
                try:
                    value = kind(env[name])
                except ValueError:
                    raise SettingsError(f"{name}={env[name]!r} is not a {kind.__name__}") from None
                if value < minimum:
                    raise SettingsError(f"{name}={env[name]!r} must be at least {minimum}")
                kw[name.removeprefix("SFTOP_").lower()] = value

        if env.get("SFTOP_NAMESPACES"):
            kw["namespaces"] = tuple(n.strip() for n in env["SFTOP_NAMESPACES"].split(",") if n.strip())
        for name in ("SFTOP_TRAINER_IMAGE", "SFTOP_DEFAULT_CPU", "SFTOP_DEFAULT_MEMORY", "SFTOP_LOG_LEVEL",
                     "SFTOP_VALIDATION_CPU", "SFTOP_VALIDATION_MEMORY", "SFTOP_POLICY", "SFTOP_HF_ENDPOINT"):
            if env.get(name):
                kw[name.removeprefix("SFTOP_").lower()] = env[name]
        if env.get("SFTOP_LOG_FORMAT"):
            if env["SFTOP_LOG_FORMAT"] not in ("text", "json"):
                raise SettingsError(f"SFTOP_LOG_FORMAT={env['SFTOP_LOG_FORMAT']!r}: use text or json")
            kw["log_format"] = env["SFTOP_LOG_FORMAT"]
        number("SFTOP_PROGRESS_PORT", int, 1)
        number("SFTOP_PROGRESS_INTERVAL", float, 1)
        number("SFTOP_PROGRESS_TIMEOUT", float, 0.1)
        number("SFTOP_PROGRESS_CONCURRENCY", int, 1)
        number("SFTOP_STATUS_WRITES_PER_MINUTE", float, 0.1)
        number("SFTOP_RESYNC_INTERVAL", float, 1)
        number("SFTOP_TERMINATION_GRACE_SECONDS", int, 1)
        number("SFTOP_WORKERS", int, 1)
        number("SFTOP_VALIDATION_DEADLINE_SECONDS", int, 1)
        number("SFTOP_HEALTH_PORT", int, 0)
        number("SFTOP_METRICS_PORT", int, 0)
        if env.get("SFTOP_STORAGE_REQUESTS"):
            value = env["SFTOP_STORAGE_REQUESTS"].strip().lower()
            if value not in ("true", "false"):
                raise SettingsError(f"SFTOP_STORAGE_REQUESTS={env['SFTOP_STORAGE_REQUESTS']!r}: use true or false")
            kw["storage_requests"] = value == "true"
        if env.get("SFTOP_K8S_SERVER"):
            kw["k8s_server"] = env["SFTOP_K8S_SERVER"]
        return cls(**kw)

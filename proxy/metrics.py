"""Prometheus metrics (SPEC 10) on a registry of veil's own, cheap enough for the hot path.

Hot-path series (requests, encrypt/decrypt counts, request durations) are plain dicts and
lists that the proxies bump with ``+= 1`` -- no label lookup, no lock -- and a custom collector
turns them into Prometheus families at scrape time. Everything else (rotation, keyring, KMS)
is rare and uses ``prometheus_client`` metrics directly. Label values never carry key names,
values or plaintext: ``command`` is a policy-table name or ``other``; ``key_version`` is an
integer or ``plaintext``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

OUTCOMES = ("ok", "error", "refused", "would_refuse")
PROTOCOLS = ("resp", "s3")
STORES = ("redis", "s3")
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class FastHistogram:
    """A histogram whose ``observe`` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            acc += n
            out.append((bound, float(acc)))
        return out


class HotPath(Collector):
    """The counters the proxies update per request."""

    def __init__(self) -> None:
        # (protocol, command, outcome) -> count
        self.requests: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        # (store, key_version) -> count; key_version is str(int) or "plaintext"
        self.encrypts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.decrypts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.durations = {p: FastHistogram() for p in PROTOCOLS}

    def collect(self) -> Iterator[Metric]:
        req = CounterMetricFamily(
            "veil_requests",
            "Requests by protocol, command and outcome",
            labels=["protocol", "command", "outcome"],
        )
        for key, n in list(self.requests.items()):
            req.add_metric(list(key), n)
        yield req
        for name, data, doc in (
            ("veil_encrypt", self.encrypts, "Values and objects encrypted, by key version"),
            ("veil_decrypt", self.decrypts, "Values and objects decrypted, by key version"),
        ):
            fam = CounterMetricFamily(name, doc, labels=["store", "key_version"])
            for pair, count in list(data.items()):
                fam.add_metric(list(pair), count)
            yield fam
        dur = HistogramMetricFamily(
            "veil_request_duration_seconds",
            "Time from request to reply, as veil sees it",
            labels=["protocol"],
        )
        for protocol, h in self.durations.items():
            dur.add_metric([protocol], h.buckets(), h.sum)
        yield dur


class Metrics:
    """All of SPEC 10. One instance per process, built by the composition root."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hot = HotPath()
        r.register(self.hot)
        self.decrypt_failures = Counter(
            "veil_decrypt_failures",
            "Decryption failures",
            ["store", "key_version", "reason"],
            registry=r,
        )
        self.key_version_items = Gauge(
            "veil_key_version_items",
            "Items per key version, as last counted by a scan",
            ["store", "key_version"],
            registry=r,
        )
        self.reencrypt_items = Counter(
            "veil_reencrypt_items",
            "Items re-encrypted by the migration",
            ["store", "from_version", "to_version", "outcome"],
            registry=r,
        )
        self.reencrypt_progress = Gauge(
            "veil_reencrypt_progress_ratio",
            "Progress of the current migration pass",
            ["store"],
            registry=r,
        )
        self.kms_duration = Histogram(
            "veil_kms_request_duration_seconds", "KMS call latency", ["provider", "op"], registry=r
        )
        self.kms_errors = Counter(
            "veil_kms_errors", "KMS call failures", ["provider", "op"], registry=r
        )
        self.oldest_version_age = Gauge(
            "veil_oldest_key_version_in_use_age_seconds",
            "Age (since creation) of the oldest key version still holding items",
            ["store"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "veil_circuit_breaker_open", "1 while the breaker is open", ["store"], registry=r
        )
        self.keyring_versions = Gauge(
            "veil_keyring_versions", "Key versions by state", ["state"], registry=r
        )
        self.keyring_revision = Gauge(
            "veil_keyring_revision", "Loaded keyring revision", registry=r
        )
        self.keyring_reload = Gauge(
            "veil_keyring_last_reload_timestamp_seconds",
            "When the keyring was last read from its store",
            registry=r,
        )
        self.lazy_depth = Gauge(
            "veil_lazy_queue_depth", "Items waiting for lazy re-encryption", ["store"], registry=r
        )
        self.lazy_dropped = Counter(
            "veil_lazy_queue_dropped", "Lazy re-encryptions dropped", ["store"], registry=r
        )
        self.nonce_budget = Gauge(
            "veil_nonce_budget_used_ratio",
            "Encryptions under a version over its nonce budget (2^48)",
            ["key_version"],
            registry=r,
        )
        self.sidecars_live = Gauge(
            "veil_sidecars_live", "Sidecars with a recent heartbeat", registry=r
        )
        self.audit_head = Gauge(
            "veil_audit_head_seq", "Sequence number of the audit chain head", registry=r
        )

    def kms_observer(self, provider: str, op: str, seconds: float, error: bool) -> None:
        """A ``providers.KmsObserver``."""
        self.kms_duration.labels(provider, op).observe(seconds)
        if error:
            self.kms_errors.labels(provider, op).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

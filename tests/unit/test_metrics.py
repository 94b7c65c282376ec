"""SPEC 10: exactly these metric names and labels, on veil's own registry."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import Metrics

SPEC = {
    "veil_requests_total": {"protocol", "command", "outcome"},
    "veil_request_duration_seconds": {"protocol"},
    "veil_encrypt_total": {"store", "key_version"},
    "veil_decrypt_total": {"store", "key_version"},
    "veil_decrypt_failures_total": {"store", "key_version", "reason"},
    "veil_key_version_items": {"store", "key_version"},
    "veil_reencrypt_items_total": {"store", "from_version", "to_version", "outcome"},
    "veil_reencrypt_progress_ratio": {"store"},
    "veil_kms_request_duration_seconds": {"provider", "op"},
    "veil_kms_errors_total": {"provider", "op"},
    "veil_oldest_key_version_in_use_age_seconds": {"store"},
    "veil_circuit_breaker_open": {"store"},
    "veil_keyring_versions": {"state"},
    "veil_keyring_revision": set(),
    "veil_keyring_last_reload_timestamp_seconds": set(),
    "veil_lazy_queue_depth": {"store"},
    "veil_lazy_queue_dropped_total": {"store"},
    "veil_nonce_budget_used_ratio": {"key_version"},
    "veil_sidecars_live": set(),
    "veil_audit_head_seq": set(),
}


def exercised() -> Metrics:
    """A registry with one sample in every family, as a busy sidecar has."""
    m = Metrics()
    m.hot.requests[("resp", "GET", "ok")] += 1
    m.hot.encrypts[("redis", "1")] += 1
    m.hot.decrypts[("s3", "plaintext")] += 1
    m.hot.durations["resp"].observe(0.001)
    m.decrypt_failures.labels("redis", "1", "tampered").inc()
    m.key_version_items.labels("redis", "1").set(3)
    m.reencrypt_items.labels("redis", "1", "2", "ok").inc()
    m.reencrypt_progress.labels("redis").set(0.5)
    m.kms_observer("aws-kms", "decrypt", 0.01, True)
    m.oldest_version_age.labels("redis").set(10)
    m.breaker_open.labels("redis").set(0)
    m.keyring_versions.labels("active").set(1)
    m.keyring_revision.set(1)
    m.keyring_reload.set(1)
    m.lazy_depth.labels("redis").set(0)
    m.lazy_dropped.labels("redis").inc()
    m.nonce_budget.labels("1").set(0.0)
    m.sidecars_live.set(1)
    m.audit_head.set(0)
    return m


def families() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    text = exercised().render().decode()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            name = sample.name
            if name.endswith("_created"):  # prometheus_client's creation time of a series
                name = name[: -len("_created")] + "_total"
                if name not in SPEC:
                    name = name[: -len("_total")]
            for suffix in ("_bucket", "_count", "_sum"):
                if name.endswith(suffix) and name[: -len(suffix)] in SPEC:
                    name = name[: -len(suffix)]
            labels = set(sample.labels) - {"le"}
            out.setdefault(name, set()).update(labels)
    return out


def test_every_spec_metric_exists_with_its_labels() -> None:
    found = families()
    for name, labels in SPEC.items():
        assert name in found, name
        assert found[name] == labels, (name, found[name])


def test_no_metric_outside_the_spec() -> None:
    assert set(families()) <= set(SPEC)

"""S3 rotation (SPEC 8): metadata-only rewraps that move no body byte and keep everything;
body re-encryption for a compromised version; versioned buckets; real boto3 and moto."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocols.s3.errors import S3Error
from proxy import wiring
from proxy.app import App
from proxy.config import Settings
from proxy.crypto import meta
from proxy.crypto.keys import KeyKind
from proxy.keys.ops import KeyOps
from tests.integration.test_s3_support import (
    ACCESS_KEY,
    SECRET_KEY,
    VeilThread,
    s3_client,
)
from tests.servers import MotoServer, free_port, init_keyring, veil_settings


class Rig(VeilThread):
    def start(self) -> Rig:  # the engine is built, but the test drives its ticks
        import threading

        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.app = App(self.settings, migrate=False)
            self.ctx = self.loop.run_until_complete(self.app.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(30)
        return self

    def ops(self) -> KeyOps:
        assert self.ctx is not None
        return wiring.build_ops(self.settings, self.ctx.store, self.ctx.runtime.provider)

    def rotate(self) -> int:
        async def go() -> int:
            assert self.ctx is not None
            ops = self.ops()
            change = await ops.rotate("default")
            version = int(change.events[0]["version"])
            await self.ctx.runtime.refresh()
            await ops.promote("default", version)
            await self.ctx.runtime.refresh()
            return version

        return self.run(go())

    def tick(self) -> None:
        assert self.ctx is not None and self.ctx.engine is not None
        self.run(self.ctx.engine.tick(), timeout=120)


@pytest.fixture
def rig(tmp_path: Path, moto_server: MotoServer) -> Iterator[Rig]:
    moto_server.reset()
    settings = veil_settings(
        tmp_path,
        s3={
            "listen": f"127.0.0.1:{free_port()}",
            "upstream": moto_server.url,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "upstream_access_key": "testing",
            "upstream_secret_key": "testing",
        },
        keys={"grace_period": "0s"},
    )
    assert isinstance(settings, Settings)
    asyncio.run(init_keyring(settings))
    rig = Rig(settings).start()
    yield rig
    rig.stop()


def direct(moto: MotoServer) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=moto.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def version_of(raw: Any, bucket: str, key: str, **kw: Any) -> int:
    head = raw.head_object(Bucket=bucket, Key=key, **kw)
    header, _ = meta.decode(head["Metadata"]["veil-env"])
    return int.from_bytes(header[9:11], "big")


def test_rotation_rewraps_metadata_only_and_keeps_everything(
    rig: Rig, moto_server: MotoServer
) -> None:
    veil = s3_client(rig.url)
    raw = direct(moto_server)
    raw.create_bucket(Bucket="rot")
    bodies = {f"obj/{i}": os.urandom(1000 * i + 1) for i in range(12)}
    for key, body in bodies.items():
        veil.put_object(
            Bucket="rot",
            Key=key,
            Body=body,
            ContentType="application/x-test",
            Metadata={"owner": "alice"},
            Tagging="team=blue",
        )
    veil.put_object_acl(Bucket="rot", Key="obj/1", ACL="public-read")
    big = os.urandom(6 * 1024 * 1024)
    up = veil.create_multipart_upload(Bucket="rot", Key="mp")["UploadId"]
    parts = [
        veil.upload_part(
            Bucket="rot",
            Key="mp",
            UploadId=up,
            PartNumber=n,
            Body=big[(n - 1) * 5 * 2**20 : n * 5 * 2**20],
        )["ETag"]
        for n in (1, 2)
    ]
    veil.complete_multipart_upload(
        Bucket="rot",
        Key="mp",
        UploadId=up,
        MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), parts, strict=True)]
        },
    )
    stored_before = {k: raw.get_object(Bucket="rot", Key=k)["Body"].read() for k in bodies}

    assert rig.rotate() == 2
    rig.tick()

    for key, body in bodies.items():
        assert version_of(raw, "rot", key) == 2
        # the body did not move: the very same ciphertext, only the wrap changed
        assert raw.get_object(Bucket="rot", Key=key)["Body"].read() == stored_before[key]
        got = veil.get_object(Bucket="rot", Key=key)
        assert got["Body"].read() == body
        assert got["ContentType"] == "application/x-test"
        assert got["Metadata"] == {"owner": "alice"}
        assert raw.get_object_tagging(Bucket="rot", Key=key)["TagSet"] == [
            {"Key": "team", "Value": "blue"}
        ]
    grants = raw.get_object_acl(Bucket="rot", Key="obj/1")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("AllUsers") for g in grants)
    assert version_of(raw, "rot", "mp") == 2
    assert (
        veil.get_object(Bucket="rot", Key="mp", Range="bytes=5242870-5242900")["Body"].read()
        == big[5242870:5242901]
    )
    assert rig.ctx is not None and rig.ctx.engine is not None
    status = rig.run(rig.ctx.engine.status_json())["stores"]["s3"]
    assert status["complete"] and status["migrated"] == 13 and status["remaining"] == {}
    kr = rig.run(rig.ops().load())
    v1 = kr.cls("default").find(KeyKind.MASTER, 1)
    assert v1 is not None and v1.migration_complete is not None and v1.items["s3"] == 0


def test_emergency_reencrypts_bodies_under_new_data_keys(rig: Rig, moto_server: MotoServer) -> None:
    veil = s3_client(rig.url)
    raw = direct(moto_server)
    raw.create_bucket(Bucket="emg")
    body = os.urandom(200_000)
    veil.put_object(Bucket="emg", Key="secret", Body=body, Metadata={"k": "v"})
    before = raw.get_object(Bucket="emg", Key="secret")["Body"].read()
    rig.run(rig.ops().revoke("default", 1, emergency=True))
    assert rig.ctx is not None
    rig.run(rig.ctx.runtime.refresh())
    rig.tick()
    after = raw.get_object(Bucket="emg", Key="secret")["Body"].read()
    assert after != before and len(after) == len(before)  # a new data key: new ciphertext
    assert version_of(raw, "emg", "secret") == 2
    got = veil.get_object(Bucket="emg", Key="secret")
    assert got["Body"].read() == body and got["Metadata"] == {"k": "v"}
    kr = rig.run(rig.ops().load())
    assert kr.cls("default").versions[0].state.value == "revoked"


def test_noncurrent_versions_block_completion(rig: Rig, moto_server: MotoServer) -> None:
    veil = s3_client(rig.url)
    raw = direct(moto_server)
    raw.create_bucket(Bucket="ver")
    raw.put_bucket_versioning(Bucket="ver", VersioningConfiguration={"Status": "Enabled"})
    veil.put_object(Bucket="ver", Key="k", Body=b"first")
    rig.rotate()
    rig.tick()
    assert rig.ctx is not None and rig.ctx.engine is not None
    status = rig.run(rig.ctx.engine.status_json())["stores"]["s3"]
    # the rewrap made a new current version; the old one (under v1) is immutable
    assert status["unmigratable"] == {"noncurrent": 1} and not status["complete"]
    kr = rig.run(rig.ops().load())
    assert kr.cls("default").find(KeyKind.MASTER, 1).migration_complete is None  # type: ignore[union-attr]
    assert veil.get_object(Bucket="ver", Key="k")["Body"].read() == b"first"


def test_a_client_write_racing_a_rewrap_wins(rig: Rig, moto_server: MotoServer) -> None:
    """The rewrap pins its self-copy to the ETag it read: a client PUT that lands between the
    walker's HEAD and its copy makes the copy fail (412), never pairs the old object's wrapped
    key with the new body. The next pass finds the new object current."""
    from proxy.rotation.s3_walk import S3Walker
    from proxy.s3.store import head_object

    raw = direct(moto_server)
    raw.create_bucket(Bucket="race")
    client = s3_client(rig.url)
    client.put_object(Bucket="race", Key="k", Body=b"first" * 1000)
    rig.rotate()
    assert rig.ctx is not None
    deps = rig.ctx.listeners["s3"].deps  # type: ignore[attr-defined]
    walker = S3Walker(deps)
    stale = rig.run(head_object(deps, "race", "k"))  # what the walker read ...
    client.put_object(Bucket="race", Key="k", Body=b"second" * 1000)  # ... then a client wrote
    with pytest.raises(S3Error) as e:
        rig.run(walker.rewrap("race", "k", stale))
    assert e.value.code == "PreconditionFailed"
    assert client.get_object(Bucket="race", Key="k")["Body"].read() == b"second" * 1000

"""A loopback S3-compatible server for tests: moto's S3 backend (`moto[server]`) in a child
process on 127.0.0.1, answering one request at a time, with a log of every write request.

    python tests/s3_server.py LOGFILE        # prints "port N" once listening; serves until killed

    with S3Server(tmp_path / "requests.log") as s3:
        s3.create_bucket("prefmill-t1")
        env = s3.env()                       # AWS_* variables pointing at the server
        s3.objects("prefmill-t1")            # {key: bytes} of everything in the bucket
        s3.writes()                          # [(method, path, If-None-Match, status)] seen so far

Why one request at a time: moto implements `If-None-Match: *` (the conditional put deltalake
uses for every commit) as "read the key, then write it", without a lock, so under its default
threaded server two racing commits of the same version could both succeed. Served serially the
check and the write cannot interleave, which is what real S3 guarantees server-side. What moto
does not emulate at all: signature / credential checks (any key pair is accepted), the 409
ConditionalRequestConflict of real S3 for two conditional writes in flight, throttling (503
SlowDown), latency and TLS.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY_ID = "AKIAPREFMILLTESTKEY0"
SECRET_ACCESS_KEY = "prefmill-test-secret-never-written-anywhere"


def serve(log_path: str) -> None:
    """Child process: moto's S3 app behind a single-threaded werkzeug server."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    inner = DomainDispatcherApplication(create_backend_app)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        method = environ["REQUEST_METHOD"]
        if method not in ("PUT", "POST", "DELETE"):
            return inner(environ, start_response)

        def logged_start(status: str, headers: Any, *rest: Any) -> Any:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(f"{method}\t{environ.get('PATH_INFO', '')}\t{environ.get('HTTP_IF_NONE_MATCH', '')}"
                        f"\t{status.split()[0]}\n")
            return start_response(status, headers, *rest)

        return inner(environ, logged_start)

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    server = make_server("127.0.0.1", 0, app, threaded=False, request_handler=QuietHandler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


class S3Server:
    """Starts `serve` in a child process; `stop()` (or leaving the `with`) ends that process."""

    def __init__(self, log_path: Path):
        self.log_path = Path(log_path)
        self.log_path.write_text("")
        self.proc: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def start(self) -> S3Server:
        self.proc = subprocess.Popen([sys.executable, __file__, str(self.log_path)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split() if self.proc.stdout else []
        if len(line) != 2 or line[0] != "port":
            self.stop()
            raise RuntimeError(f"moto S3 server did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.endpoint = f"http://127.0.0.1:{line[1]}"
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr) if self.proc else ():
            if stream:
                stream.close()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self, *, key_id: str = ACCESS_KEY_ID, secret: str = SECRET_ACCESS_KEY) -> dict[str, str]:
        """The variables a user sets for an S3-compatible endpoint (credentials only from here)."""
        return {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.endpoint}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def objects(self, bucket: str) -> dict[str, bytes]:
        c, out = self.client(), {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                out[o["Key"]] = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        return out

    def writes(self) -> list[tuple[str, str, str, str]]:
        """(method, path, If-None-Match header, HTTP status) of every PUT/POST/DELETE so far."""
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [tuple(line.split("\t")) for line in lines if line.count("\t") == 3]  # type: ignore[misc]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without any AWS_/GOOGLE_/AZURE_ variable, plus `extra` (for subprocesses)."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "AZURE_"))}
    return keep | (extra or {})


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One loopback server per test module (import this fixture into the module)."""
    pytest.importorskip("moto", reason="the S3 tests need moto[server] (dev extra)")
    with S3Server(tmp_path_factory.mktemp("s3") / "requests.log") as server:
        yield server


@pytest.fixture
def s3_root(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket and this process's AWS_* environment pointing at it; returns the store URI."""
    bucket = f"pm-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    return f"s3://{bucket}/prefmill"


if __name__ == "__main__":
    serve(sys.argv[1])

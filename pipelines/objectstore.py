"""Object-store roots for the versioned store: `s3://bucket/prefix` (and gs://, az:// through the
same deltalake storage_options path). Used by pipelines/store.py; nothing here reads tables.

    loc = parse_location("s3://my-bucket/prefmill")     # None for a local folder
    fs = ObjectFiles(loc)                                # delta-rs' object_store, as files
    fs.open(create=True)                                 # checks credentials, bucket, endpoint

Credentials come only from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN / AWS_PROFILE ..., AWS_ENDPOINT_URL and AWS_REGION for S3): the options this
module passes to deltalake and polars hold no secret, the URI we keep holds none (a URI with
`user:pass@` or a query string is refused), and every error message is scrubbed of credential
values. S3 commits use conditional puts (`If-None-Match: *`, object_store's `conditional_put =
etag`), pinned here so an environment variable cannot switch a store to unsafe renames.
Tested against S3 (moto on loopback, tests/s3_server.py); gs:// and az:// take the same code path
but have not been run against any server.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipelines.lineage import redact

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.=+-]+$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Short retries for the opening check only: an unreachable endpoint fails in seconds, not minutes.
_PROBE_OPTIONS = {"max_retries": "2", "retry_timeout": "15s", "connect_timeout": "5s", "timeout": "20s"}


class StoreError(ValueError):
    """A store operation was asked something it cannot do (bad name, unknown table, bad version,
    a bad store location). Lives here so store.py and this module raise the same type; import
    it from pipelines.store."""


@dataclass(frozen=True)
class Backend:
    """What a URI scheme needs from the environment."""

    credentials: tuple[tuple[str, ...], ...]   # any one group fully set is enough
    hint: str                                  # the fix, named in the error


BACKENDS = {
    "s3": Backend((("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("AWS_PROFILE",),
                   ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"), ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",),
                   ("AWS_CONTAINER_CREDENTIALS_FULL_URI",)),
                  "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), plus AWS_ENDPOINT_URL "
                  "for a non-AWS server"),
    "gs": Backend((("GOOGLE_APPLICATION_CREDENTIALS",), ("GOOGLE_SERVICE_ACCOUNT",), ("GOOGLE_SERVICE_ACCOUNT_PATH",),
                   ("GOOGLE_SERVICE_ACCOUNT_KEY",)),
                  "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"),
    "az": Backend((("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY"),
                   ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_SAS_KEY"),
                   ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID")),
                  "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or a SAS key / client secret)"),
}


def is_uri(root: object) -> bool:
    return isinstance(root, str) and "://" in root


@dataclass(frozen=True)
class Location:
    """An object-store root: scheme, bucket (container) and a key prefix without slashes at the ends."""

    scheme: str
    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def child(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])


def parse_location(root: str) -> Location | None:
    """None for a local path; a Location for scheme://bucket[/prefix]; StoreError for anything else.
    Error messages never repeat the user-info or query part of the text (they may hold secrets)."""
    if not is_uri(root):
        return None
    parts = urlsplit(root)
    scheme = parts.scheme.lower()
    if parts.username or parts.password or "@" in parts.netloc:
        raise StoreError(f"store URI {scheme}://... carries credentials; remove them from the URI and set them in the "
                         f"environment instead ({BACKENDS.get(scheme, BACKENDS['s3']).hint})")
    if parts.query or parts.fragment:
        raise StoreError(f"store URI {scheme}://{parts.netloc}{parts.path} has a '?' or '#' part; pass only "
                         f"{scheme}://BUCKET/PREFIX and put options and credentials in the environment")
    shown = f"{scheme}://{parts.netloc}{parts.path}"
    if scheme not in BACKENDS:
        raise StoreError(f"unsupported store URI {shown!r}; use a local folder or s3://BUCKET/PREFIX "
                         f"(gs:// and az:// also go through deltalake)")
    bucket = parts.netloc
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StoreError(f"bad bucket name {bucket!r} in {shown!r}; a bucket is 3-63 lowercase letters, digits, "
                         f"'.' or '-', e.g. {scheme}://my-bucket/prefmill")
    segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if any(not _SEGMENT_RE.match(s) or s in (".", "..") for s in segments) or "//" in parts.path.rstrip("/"):
        raise StoreError(f"bad prefix {parts.path!r} in {shown!r}; use '/'-separated names of letters, digits, "
                         f"'_', '.', '=', '+' or '-', e.g. {scheme}://{bucket}/prefmill/run1")
    return Location(scheme, bucket, "/".join(segments))


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""


def storage_options(loc: Location) -> dict[str, str]:
    """Options for deltalake / polars: no secret ever goes here (credentials are read from the
    environment by delta-rs and polars themselves)."""
    if loc.scheme != "s3":
        return {}
    opts = {"conditional_put": "etag"}    # commits are PUT If-None-Match: * (safe concurrent writers)
    if _endpoint().lower().startswith("http://"):
        opts["allow_http"] = "true"       # the user pointed AWS_ENDPOINT_URL at a plain-HTTP server
    return opts


def check_credentials(loc: Location) -> None:
    """Some credential source is fully set in the environment (its values are never looked at)."""
    be = BACKENDS[loc.scheme]
    if any(all(os.environ.get(v) for v in group) for group in be.credentials):
        return
    partial = [g for g in be.credentials if any(os.environ.get(v) for v in g)]
    if partial:
        missing = ", ".join(v for v in partial[0] if not os.environ.get(v))
        raise StoreError(f"incomplete credentials for {loc.uri}: {missing} not set; {be.hint}")
    raise StoreError(f"no credentials for {loc.uri} in the environment; {be.hint}")


def explain(err: BaseException, loc: Location) -> StoreError:
    """A one-line StoreError naming the fix for an object-store failure (credentials scrubbed)."""
    text = redact(str(err))
    low = text.lower()
    ep = _endpoint() or "the default AWS endpoint"
    if "nosuchbucket" in low or "bucket does not exist" in low or "containernotfound" in low:
        how = f" (e.g. `aws s3 mb s3://{loc.bucket}`)" if loc.scheme == "s3" else ""
        return StoreError(f"bucket {loc.bucket!r} does not exist at {ep}; create it first{how} or fix the store URI")
    if any(w in low for w in ("accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "403 forbidden")):
        return StoreError(f"the object store refused the credentials for {loc.uri}; fix them in the environment "
                          f"({BACKENDS[loc.scheme].hint})")
    if any(w in low for w in ("error sending request", "tcp connect", "dns error", "connection refused", "timed out")):
        where = f" at {ep}; check AWS_ENDPOINT_URL and" if loc.scheme == "s3" else "; check"
        return StoreError(f"cannot reach the object store for {loc.uri}{where} that the server is running and reachable")
    lines = [ln for ln in (_ANSI.sub("", raw).replace("↳", "").strip() for raw in text.splitlines()) if ln]
    what = " ... ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else type(err).__name__
    return StoreError(f"object store error for {loc.uri}: {what[:300]}")


class ObjectFiles:
    """Files under an object-store root through delta-rs' own object_store client (the one that
    commits), so listing, commit-log reads and the store marker use the same configuration."""

    def __init__(self, loc: Location, *, probe: bool = False):
        import pyarrow.fs as pafs
        from deltalake.fs import DeltaStorageHandler

        self.loc = loc
        check_credentials(loc)
        opts = storage_options(loc) | (_PROBE_OPTIONS if probe else {})
        try:
            self._fs = pafs.PyFileSystem(DeltaStorageHandler(loc.uri, options=opts))
        except (OSError, RuntimeError) as e:
            raise explain(e, loc) from None
        self._pafs = pafs

    def open(self, *, create: bool) -> None:
        """The opening check, which writes nothing: credentials set, endpoint reachable, bucket
        present, and (unless `create`) at least one table under the prefix. One-line StoreError."""
        try:
            found = self.dirs("tables")
        except (OSError, RuntimeError) as e:
            raise explain(e, self.loc) from None
        if not found and not create:
            raise StoreError(f"no prefmill store at {self.loc.uri} (no tables under it); pass --store (or set "
                             f"PREFMILL_STORE) to an existing store, or run a recipe to create one")

    def exists(self, *paths: str) -> bool:
        """True if any of `paths` (relative to the root) is an object."""
        infos = self._fs.get_file_info(list(paths))
        return any(i.type == self._pafs.FileType.File for i in infos)

    def dirs(self, path: str) -> list[str]:
        sel = self._pafs.FileSelector(path, allow_not_found=True)
        return sorted(i.base_name for i in self._fs.get_file_info(sel) if i.type == self._pafs.FileType.Directory)

    def read_text(self, path: str) -> str | None:
        """The object's text, or None when it does not exist."""
        try:
            with self._fs.open_input_stream(path) as f:
                return f.read().decode("utf-8")
        except FileNotFoundError:
            return None

"""Where a store lies: a local folder or an fsspec URL (s3://, gs://, ...) with its storage options.

The one place both packages turn a store name into a file system, parse `--storage-option KEY=VALUE`, hide
credentials from anything written down, and turn a remote failure (unreachable endpoint, no credentials, no
bucket, no store there) into one `StoreError` line that names the URL.

Credentials come from the storage options (`key=`, `secret=`, `token=` for s3fs) or, when those are not given,
from the standard environment variables and files of the storage client (for S3: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, ~/.aws). Only the option values
listed in `PUBLIC_OPTION_KEYS` are ever written to a log, a checkpoint, a run's config or a store; every other
value is shown as `REDACTED`.

Remote access needs the `s3` extra (`pip install mpt[s3]`: s3fs); a local folder needs nothing beyond zarr.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from mpt_data import schema
from mpt_data.integrity import StoreError

REDACTED = "<redacted>"
# Option values that carry no secret and help a reader of a log or run config (where the data came from).
# Everything else (key, secret, token, passwords, profile contents, headers...) is redacted.
PUBLIC_OPTION_KEYS = frozenset({"endpoint_url", "region_name", "anon", "use_ssl", "requester_pays", "version_aware",
                                "default_block_size", "default_cache_type", "client_kwargs", "config_kwargs",
                                "verify", "max_concurrency", "cache_regions", "s3_additional_kwargs",
                                "signature_version", "addressing_style", "connect_timeout", "read_timeout",
                                "retries", "max_attempts", "mode"})


_INHERITED_CLIENTS: list[Any] = []


def keep_inherited(client: Any) -> None:
    """Keep a client (file system, zarr group) inherited from the parent through a fork alive until this process
    exits: it is unusable here (its event loop and connections are the parent's), and collecting it would make its
    HTTP session warn "Unclosed client session" about a session this process never opened. A forked DataLoader
    worker exits without collecting, so nothing is printed."""
    _INHERITED_CLIENTS.append(client)


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """{KEY: VALUE} from `KEY=VALUE` strings (`--storage-option`, repeatable).

    A VALUE that parses as JSON is taken as such (numbers, true/false/null, quoted strings, lists and dicts such as
    `client_kwargs={"endpoint_url": "http://127.0.0.1:9000"}`); `True`/`False` are booleans too; anything else is a
    string. Raises ValueError naming the key (never the value, which may be a secret) when an item has no `=`."""
    out: dict[str, Any] = {}
    for item in pairs:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:  # the text itself is not shown: it may be a secret typed without its key
            raise ValueError(f"storage option number {len(out) + 1} has no KEY= part: expected KEY=VALUE")
        if raw in ("True", "False"):
            value: Any = raw == "True"
        else:
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        out[key] = value
    return out


def redact_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options as they may be written down: values of keys outside `PUBLIC_OPTION_KEYS` replaced by REDACTED,
    inside nested dicts too."""
    out: dict[str, Any] = {}
    for k, v in (options or {}).items():
        if k not in PUBLIC_OPTION_KEYS:
            out[k] = REDACTED
        elif isinstance(v, Mapping):
            out[k] = redact_options(v)
        else:
            out[k] = v
    return out


def is_local(url: str | Path) -> bool:
    """True for a plain path or a file:// URL."""
    text = str(url)
    return "://" not in text or text.startswith("file://")


def local_path(url: str | Path) -> Path:
    """The folder of a local store name (a path or a file:// URL)."""
    text = str(url)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def _chain_names(exc: BaseException) -> set[str]:
    """Class names of `exc`'s types and of its causes' (the storage clients wrap their errors)."""
    names: set[str] = set()
    seen = 0
    while exc is not None and seen < 8:
        names.update(t.__name__ for t in type(exc).__mro__)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return names


@dataclass(frozen=True)
class Location:
    """A store's name (`url`: a path or an fsspec URL) and the storage options to reach it.

    `options` stays out of repr and comparisons, and `describe_options()` is the only form of it to print."""

    url: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def local(self) -> bool:
        return is_local(self.url)

    @property
    def path(self) -> Path:
        """The local folder (a local location only)."""
        if not self.local:
            raise StoreError(f"{self.url}: not a local folder")
        return local_path(self.url)

    @property
    def endpoint(self) -> str | None:
        """The endpoint the options name, if any (for messages)."""
        ck = self.options.get("client_kwargs") or {}
        return self.options.get("endpoint_url") or (ck.get("endpoint_url") if isinstance(ck, Mapping) else None)

    def describe_options(self) -> str:
        return json.dumps(redact_options(self.options), sort_keys=True)

    @property
    def _fs_root(self) -> tuple[Any, str]:
        """(file system, root), made once per process: a forked DataLoader worker must not reuse its parent's
        client (its event loop and connections belong to the parent)."""
        import os

        cached = self.__dict__.get("_client")
        if cached is not None and cached[0] == os.getpid():
            return cached[1], cached[2]
        if cached is not None:
            keep_inherited(cached[1])
        fs, root = self._connect()
        object.__setattr__(self, "_client", (os.getpid(), fs, root))
        return fs, root

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_client"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def _connect(self) -> tuple[Any, str]:
        import fsspec

        if self.local:
            return fsspec.filesystem("file"), str(self.path.absolute())
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **dict(self.options))
        except ImportError as err:
            raise StoreError(f"{self.url}: reading this URL needs a package that is not installed ({err}); "
                             "install the extra: pip install 'mpt[s3]'") from err
        except (TypeError, ValueError) as err:
            raise StoreError(f"{self.url}: storage options {self.describe_options()} are not accepted: "
                             f"{type(err).__name__}") from err
        return fs, root.rstrip("/")

    @property
    def fs(self):
        return self._fs_root[0]

    @property
    def root(self) -> str:
        """The store's root in the file system's own path form (no protocol)."""
        return self._fs_root[1]

    def key(self, relative: str) -> str:
        """The file system path of `relative` (a '/'-separated path inside the store)."""
        return f"{self.root}/{relative}" if relative else self.root

    def error(self, err: BaseException, doing: str) -> StoreError:
        """One line saying why `doing` failed at this location, naming the URL, never a credential."""
        if isinstance(err, StoreError):  # raised here already (e.g. a missing s3fs): it says what to do
            return err
        names = _chain_names(err)
        where = self.url
        if "NoCredentialsError" in names or "PartialCredentialsError" in names:
            return StoreError(f"{where}: no credentials to {doing}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                              "(or --storage-option key=... --storage-option secret=...)")
        if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ClientConnectorError",
                    "ConnectionRefusedError", "ReadTimeoutError"}:
            return StoreError(f"{where}: cannot reach the endpoint {self.endpoint or '(the default)'} to {doing}; "
                              "check --storage-option endpoint_url=... or AWS_ENDPOINT_URL")
        if isinstance(err, PermissionError) or names & {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return StoreError(f"{where}: access denied to {doing}: the credentials are refused or lack permission")
        if isinstance(err, FileNotFoundError) and not self.local:
            bucket = self.root.split("/", 1)[0]
            try:
                bucket_there = self.fs.exists(bucket)
            except Exception:  # the bucket check is only for the message; the original error stands
                bucket_there = True
            if not bucket_there:
                return StoreError(f"{where}: the bucket {bucket!r} does not exist"
                                  + (f" at {self.endpoint}" if self.endpoint else ""))
        if isinstance(err, FileNotFoundError):
            return StoreError(f"{where}: not an MPT store (no {getattr(err, 'filename', None) or 'zarr.json'}); "
                              "build one with `mpt-data build`, or check the URL")
        return StoreError(f"{where}: cannot {doing}: {type(err).__name__}")

    def read_bytes(self, relative: str) -> bytes | None:
        """The bytes of one file of the store, None when it does not exist; remote failures as StoreError."""
        try:
            return self.fs.cat_file(self.key(relative))
        except FileNotFoundError:
            if not self.local:
                self.check_bucket()
            return None
        except Exception as err:
            raise self.error(err, f"read {relative}") from err

    def check_bucket(self) -> None:
        """StoreError when the location's bucket (or, locally, nothing) is missing or unreachable."""
        if self.local:
            return
        bucket = self.root.split("/", 1)[0]
        try:
            there = self.fs.exists(bucket)
        except Exception as err:
            raise self.error(err, "list the bucket") from err
        if not there:
            raise StoreError(f"{self.url}: the bucket {bucket!r} does not exist"
                             + (f" at {self.endpoint}" if self.endpoint else ""))

    def root_attributes(self) -> dict[str, Any]:
        """The root group's attributes read from its zarr.json; StoreError when there is no MPT store."""
        blob = self.read_bytes("zarr.json")
        if blob is None:
            raise StoreError(f"{self.url}: no Zarr store found (no zarr.json), so not an MPT store; build one with "
                             "`mpt-data build`, or check the URL")
        try:
            doc = json.loads(blob)
        except ValueError as err:
            raise StoreError(f"{self.url}/zarr.json is not JSON: the store is damaged") from err
        attrs = doc.get("attributes") if isinstance(doc, dict) else None
        if not isinstance(attrs, dict) or attrs.get(schema.ATTR_SCHEMA) != schema.SCHEMA_VERSION:
            found = attrs.get(schema.ATTR_SCHEMA) if isinstance(attrs, dict) else None
            raise StoreError(f"{self.url} is not an MPT store of schema {schema.SCHEMA_VERSION} (schema {found!r})")
        return attrs

    def files(self) -> dict[str, int]:
        """{relative path: size in bytes} of every file under the store's root (empty when there is none)."""
        try:
            found = self.fs.find(self.root, detail=True, withdirs=False)
        except FileNotFoundError:
            return {}
        except Exception as err:
            raise self.error(err, "list the store's files") from err
        prefix = self.root + "/"
        return {k[len(prefix):]: int(v.get("size") or 0) for k, v in found.items()
                if k.startswith(prefix) and v.get("type", "file") != "directory"}

    def open_group(self, use_consolidated: bool | None = None):
        """The store's root group, read-only, checked first: a missing store, bucket or endpoint and absent
        credentials are one StoreError each, before zarr reads anything."""
        import warnings

        import zarr

        self.root_attributes()
        kwargs: dict[str, Any] = {"mode": "r", "use_consolidated": use_consolidated}
        if not self.local:
            kwargs["storage_options"] = dict(self.options)
        try:
            with warnings.catch_warnings():  # sequences.parquet, _build/, integrity.json are ours, not zarr's
                warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy.*")
                return zarr.open_group(store=self.url if not self.local else str(self.path), **kwargs)
        except StoreError:
            raise
        except Exception as err:
            raise self.error(err, "open the store") from err

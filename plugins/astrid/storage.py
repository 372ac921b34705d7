"""One storage root per deployment: every URI in the catalog must resolve inside it.

:class:`StorageRoot` wraps a path-like with the ``pathlib``/``UPath`` API — a ``pathlib.Path``,
a ``upath.UPath`` (``file://``, ``s3://`` ...) or Airflow's ``ObjectStoragePath`` (a ``UPath``) —
and turns the strings stored in the catalog into paths under that root. Anything that would
leave the root (another bucket, another directory, ``..`` traversal, a symlink pointing out of a
local root, another scheme) is refused with :class:`~astrid.errors.StorageError`, so a crafted or
stale catalog row can never make a worker read or write elsewhere.

:func:`to_path` is the one place that turns "a str or a path-like" into a path-like, for the
FITS and synthetic-survey writers.
"""

from __future__ import annotations

import os
import pathlib
import posixpath
from typing import Any
from urllib.parse import unquote, urlsplit

from astrid.errors import StorageError

__all__ = ["StorageRoot", "to_path"]

# fsspec protocol aliases that name the same store.
_LOCAL = "file"
_ALIASES = {"": _LOCAL, "file": _LOCAL, "local": _LOCAL, "s3a": "s3", "gcs": "gs"}


def has_scheme(s: str) -> bool:
    """Whether ``s`` is a URI (``s3://``, ``file://``, ``gs+x://``) rather than a local path."""
    return "://" in s and s.split("://", 1)[0].replace("+", "").replace("-", "").isalnum()


def to_path(p: Any, **storage_options: Any) -> Any:
    """A path-like for ``p``: a ``str`` with a scheme (``s3://``, ``file://``) becomes a
    ``upath.UPath`` (``storage_options`` passed through), any other ``str``/``os.PathLike`` a
    ``pathlib.Path``; objects that already have ``.open`` (``pathlib``/``UPath``/
    ``ObjectStoragePath``) are returned unchanged."""
    if isinstance(p, str):
        if has_scheme(p):
            from upath import UPath

            return UPath(p, **storage_options)
        return pathlib.Path(p)
    if hasattr(p, "open") and hasattr(p, "joinpath"):
        return p
    if isinstance(p, os.PathLike):
        return pathlib.Path(p)
    raise TypeError(f"expected a str or a path-like (pathlib.Path, upath.UPath), got {type(p).__name__}")


def _protocol(path: Any) -> str:
    if isinstance(path, pathlib.PurePath):
        return _LOCAL
    proto = getattr(path, "protocol", "")
    if isinstance(proto, (tuple, list)):
        proto = proto[0] if proto else ""
    return _ALIASES.get(proto, proto)


def _location(path: Any) -> str:
    """The protocol-less location of ``path``: an absolute POSIX path for local roots,
    ``bucket/key`` for object stores."""
    if isinstance(path, pathlib.PurePath):
        return posixpath.normpath(str(pathlib.Path(path).absolute()).replace(os.sep, "/"))
    loc = str(getattr(path, "path", str(path)))
    if _protocol(path) == _LOCAL:
        return posixpath.normpath(loc) if loc else "/"
    return loc.strip("/")


class StorageRoot:
    """Resolves catalog URIs inside one root; refuses everything outside it."""

    def __init__(self, root: Any) -> None:
        if isinstance(root, str) or not (hasattr(root, "joinpath") and hasattr(root, "open")):
            root = to_path(root)
        self.path = root
        self.protocol = _protocol(root)
        self._location = _location(root)
        if self.protocol != _LOCAL and not self._location:
            raise StorageError(f"storage root {root!s} names no bucket: use e.g. s3://bucket/prefix")

    @classmethod
    def from_uri(cls, uri: str, **storage_options: Any) -> StorageRoot:
        """A root built with ``upath.UPath(uri, **storage_options)`` (``file://``, ``s3://``, or a
        plain local path)."""
        from upath import UPath

        return cls(UPath(uri, **storage_options))

    def __repr__(self) -> str:
        return f"StorageRoot({self.uri!r})"

    @property
    def uri(self) -> str:
        """The root as a URI (``file:///...`` or ``s3://bucket/prefix``)."""
        if self.protocol == _LOCAL:
            return pathlib.PurePosixPath(self._location).as_uri()
        return f"{self.protocol}://{self._location}"

    def _refuse(self, uri: str, why: str) -> StorageError:
        return StorageError(
            f"refusing {uri!r}: {why}; it must lie inside the storage root {self.uri} — store a path "
            f"relative to the root or an absolute URI under it, or point the storage root at the data"
        )

    def _relative(self, uri: str) -> str:
        """The POSIX path of ``uri`` relative to the root ('' for the root itself)."""
        if not isinstance(uri, str):
            raise self._refuse(str(uri), f"expected a str URI, got {type(uri).__name__}")
        if not uri.strip():
            raise self._refuse(uri, "the URI is empty")
        if "\x00" in uri:
            raise self._refuse(uri, "the URI contains a NUL byte")
        if has_scheme(uri):
            parts = urlsplit(uri)
            scheme = _ALIASES.get(parts.scheme.lower(), parts.scheme.lower())
            if scheme != self.protocol:
                raise self._refuse(uri, f"scheme {parts.scheme!r} differs from the root's")
            if scheme == _LOCAL:
                if parts.netloc not in ("", "localhost"):
                    raise self._refuse(uri, f"host {parts.netloc!r} is not local")
                location = unquote(parts.path)
            else:
                # ObjectStoragePath writes a connection id as user info: s3://conn_id@bucket/key
                location = f"{parts.netloc.rsplit('@', 1)[-1]}/{parts.path.lstrip('/')}"
            absolute = True
        else:
            location = uri
            absolute = location.startswith("/")
            if absolute and self.protocol != _LOCAL:
                raise self._refuse(uri, "a bare absolute path is a local file, the root is not")
        segments = [s for s in location.split("/") if s not in ("", ".")]
        if ".." in segments:
            raise self._refuse(uri, "'..' path traversal is not allowed")
        if not absolute:
            return "/".join(segments)
        location = "/".join(segments)
        root = self._location.strip("/")
        if self.protocol != _LOCAL and location.split("/", 1)[0] != root.split("/", 1)[0]:
            raise self._refuse(uri, f"bucket {location.split('/', 1)[0]!r} is not the root's bucket")
        if root == "":
            return location
        if location == root:
            return ""
        if not location.startswith(root + "/"):
            raise self._refuse(uri, "it is outside the root")
        return location[len(root) + 1 :]

    def resolve(self, uri: str) -> Any:
        """The path for ``uri`` (absolute URI, absolute local path for a local root, or a path
        relative to the root), built from the root so its storage options carry over."""
        rel = self._relative(uri)
        path = self.path.joinpath(*rel.split("/")) if rel else self.path
        if self.protocol == _LOCAL:
            real_root = pathlib.Path(self._location).resolve()
            real = pathlib.Path(self._location, *rel.split("/")).resolve() if rel else real_root
            if real != real_root and real_root not in real.parents:
                raise self._refuse(uri, f"it resolves through a symlink to {real}, outside the root")
        return path

    def uri_for(self, path: Any) -> str:
        """The string stored in the catalog for ``path`` (which must lie under the root):
        ``file:///abs/path`` for local roots, ``s3://bucket/key`` for object stores."""
        if isinstance(path, str):
            path = self.resolve(path)
        if _protocol(path) != self.protocol:
            raise self._refuse(str(path), "its scheme differs from the root's")
        location = _location(path)
        if self.protocol == _LOCAL:
            if not location.startswith("/"):
                location = posixpath.normpath(str(pathlib.Path(location).absolute()))
            rel = self._relative(location)
            return pathlib.PurePosixPath(self._location, *([rel] if rel else [])).as_uri()
        rel = self._relative(f"{self.protocol}://{location}")
        return f"{self.protocol}://{self._location}" + (f"/{rel}" if rel else "")

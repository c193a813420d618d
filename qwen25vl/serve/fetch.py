"""Loading request media safely: data URLs, http(s) URLs and local paths under configured roots.

A server that fetches any URL a client names can be turned against the network it runs in (SSRF): cloud metadata at
169.254.169.254, admin pages on localhost, hosts on the private LAN. So each host is resolved first and every address
it resolves to must be public (unless the operator allows private ones); the connection then goes to the address that
was checked (a second DNS answer cannot swap in another one), and redirects are followed by hand, each hop checked
again. Sizes and the total time are capped while reading. Local files are served only from configured roots, after
resolving symlinks and `..`.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from qwen25vl.errors import InputError
from qwen25vl.processing.media import check_local_file, check_path_text, decode_data_url, is_data_url

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
Resolver = Callable[[str, int], Sequence[str]]


class FetchError(InputError):
    """A media source that was refused or could not be loaded (answered with a 400 naming the source)."""


@dataclass(frozen=True)
class FetchPolicy:
    allow_private: bool = False  # allow private, loopback, link-local, ... addresses (trusted networks only)
    local_roots: tuple[Path, ...] = ()  # local paths are refused unless they resolve under one of these
    max_bytes: int = 32 * 1024 * 1024  # per fetched item
    timeout: float = 10.0  # seconds for one fetch, redirects included
    max_redirects: int = 5


def address_refused(address: str) -> str | None:
    """Why an IP address may not be fetched from by default (None when it is a public unicast address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    for kind in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):  # most specific first
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:
        return "non-global"  # shared address space (100.64/10) and other special ranges
    return None


def system_resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise FetchError(f"cannot resolve host {host!r}: {err.strerror}") from None
    return sorted({info[4][0] for info in infos})


class MediaFetcher:
    """Turns a media source string into bytes (URLs, data URLs) or a checked local Path."""

    def __init__(self, policy: FetchPolicy = FetchPolicy(), *, resolve: Resolver = system_resolve,
                 refuse: Callable[[str], str | None] = address_refused):
        self.policy = policy
        self._resolve = resolve
        self._refuse = refuse
        self._roots = tuple(Path(r).resolve() for r in policy.local_roots)

    def load(self, source: str, what: str = "media") -> bytes | Path:
        """`what` names the item in error messages (e.g. "messages[1].content[0] image")."""
        if is_data_url(source):
            return self._data_url(source, what)
        scheme = urllib.parse.urlsplit(source).scheme.lower()
        if scheme in ("http", "https"):
            return self.fetch_url(source, what)
        if scheme == "file":
            return self.local_path(urllib.parse.unquote(urllib.parse.urlsplit(source).path), what)
        if scheme and len(scheme) > 1:  # a one-letter "scheme" is a Windows drive
            raise FetchError(f"{what}: unsupported URL scheme {scheme!r} in {_short(source)}; "
                             "use http(s), data: or a local path")
        return self.local_path(source, what)

    # ---- data URLs ----------------------------------------------------------------------------------------------

    def _data_url(self, source: str, what: str) -> bytes:
        return _as_fetch_error(decode_data_url, source, max_bytes=self.policy.max_bytes, what=what,
                               limit_name="max_fetch_bytes")

    # ---- local paths --------------------------------------------------------------------------------------------

    def local_path(self, raw: str, what: str) -> Path:
        if not self._roots:
            raise FetchError(f"{what}: local path {raw!r:.200} refused: the server has no local roots "
                             "(start it with --local-root DIR)")
        given = _as_fetch_error(check_path_text, raw, what=what)
        try:
            bases = [given] if given.is_absolute() else [root / given for root in self._roots]
            candidates = [base.resolve() for base in bases]
        except (OSError, RuntimeError) as err:  # a symlink loop
            raise FetchError(f"{what}: local path {raw!r:.200} cannot be resolved ({err})") from None
        for path in candidates:
            if any(path == root or root in path.parents for root in self._roots):
                return _as_fetch_error(check_local_file, path, what=f"{what}: local file",
                                       max_bytes=self.policy.max_bytes, limit_name="max_fetch_bytes")
        raise FetchError(f"{what}: local path {raw!r:.200} is outside the allowed roots "
                         f"{[str(r) for r in self._roots]}")

    # ---- http(s) ------------------------------------------------------------------------------------------------

    def fetch_url(self, url: str, what: str = "media") -> bytes:
        deadline = time.monotonic() + self.policy.timeout
        for _hop in range(self.policy.max_redirects + 1):
            status, location, body = self._get_once(url, deadline, what)
            if status in REDIRECT_STATUSES and location:
                url = urllib.parse.urljoin(url, location)  # the next hop goes through every check again
                continue
            if status != 200:
                raise FetchError(f"{what}: fetching {_short(url)} answered HTTP {status}")
            return body
        raise FetchError(f"{what}: more than {self.policy.max_redirects} redirects fetching {_short(url)}")

    def _checked_address(self, url: str, what: str) -> tuple[urllib.parse.SplitResult, str, int]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"{what}: redirect to unsupported scheme {parts.scheme!r} ({_short(url)})")
        if not parts.hostname:
            raise FetchError(f"{what}: URL {_short(url)} has no host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise FetchError(f"{what}: URL {_short(url)} has an invalid port") from None
        addresses = self._resolve(parts.hostname, port)
        if not addresses:
            raise FetchError(f"{what}: host {parts.hostname!r} resolves to no address")
        if not self.policy.allow_private:
            for address in addresses:  # all of them: a host with one private answer is refused
                reason = self._refuse(address)
                if reason:
                    raise FetchError(f"{what}: URL {_short(url)} refused: host {parts.hostname!r} resolves to "
                                     f"{reason} address {address} (allow with --allow-private-urls)")
        return parts, addresses[0], port

    def _get_once(self, url: str, deadline: float, what: str) -> tuple[int, str | None, bytes]:
        parts, address, port = self._checked_address(url, what)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"{what}: fetching {_short(url)} exceeded the time limit fetch_timeout="
                             f"{self.policy.timeout}s")
        conn_cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = conn_cls(parts.hostname, port, address, remaining)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", path, headers={"User-Agent": "qwen25vl-serve", "Accept": "*/*"})
            resp = conn.getresponse()
            if resp.status in REDIRECT_STATUSES:
                return resp.status, resp.getheader("Location"), b""
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > self.policy.max_bytes:
                raise FetchError(f"{what}: {_short(url)} is {length} bytes, over the limit "
                                 f"max_fetch_bytes={self.policy.max_bytes}")
            return resp.status, None, self._read_capped(resp, conn, deadline, url, what)
        except (OSError, http.client.HTTPException, ssl.SSLError) as err:
            if isinstance(err, TimeoutError) or "timed out" in str(err):
                raise FetchError(f"{what}: fetching {_short(url)} exceeded the time limit "
                                 f"fetch_timeout={self.policy.timeout}s") from None
            raise FetchError(f"{what}: fetching {_short(url)} failed: {err}") from None
        finally:
            conn.close()

    def _read_capped(self, resp, conn, deadline: float, url: str, what: str) -> bytes:
        chunks, total = [], 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(f"{what}: fetching {_short(url)} exceeded the time limit "
                                 f"fetch_timeout={self.policy.timeout}s")
            if conn.sock is not None:
                conn.sock.settimeout(remaining)  # a slow trickle cannot outlive the deadline
            chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > self.policy.max_bytes:
                raise FetchError(f"{what}: {_short(url)} is over the limit max_fetch_bytes={self.policy.max_bytes}")
            chunks.append(chunk)


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the address that was checked, while the Host header keeps the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # certificate checked for the name


def _as_fetch_error(check, *args, **kwargs):
    """Run one of the shared media checks, its InputError raised as this module's FetchError."""
    try:
        return check(*args, **kwargs)
    except FetchError:
        raise
    except InputError as err:
        raise FetchError(str(err)) from None


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")

"""Safe media loading for the server: address checks (before connecting), redirects re-checked, caps, local roots."""

import base64
import http.server
import os
import socket
import threading
import time

import pytest

from qwen25vl.serve.fetch import FetchError, FetchPolicy, MediaFetcher, address_refused

PAYLOAD = bytes(range(256)) * 8  # 2 KiB


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        port = self.server.server_address[1]
        if self.path == "/data":
            self._send(200, PAYLOAD)
        elif self.path == "/nolength":  # no Content-Length: the cap must hold while reading
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.close_connection = True
        elif self.path == "/slow":  # a byte every 0.1 s for 20 s: no single read waits long, the whole does
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif self.path == "/to-data":
            self._redirect(f"http://127.0.0.1:{port}/data")
        elif self.path == "/to-other-host":
            self._redirect(f"http://127.0.0.2:{port}/data")
        elif self.path == "/loop":
            self._redirect("/loop")
        else:
            self._send(404, b"no")

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("address,kind", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.10", "private"),
    ("172.16.5.4", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"), ("::ffff:127.0.0.1", "loopback"),
    ("100.64.0.1", "non-global"), ("240.0.0.1", "reserved"),
])
def test_special_addresses_are_refused(address, kind):
    reason = address_refused(address)
    assert reason is not None and reason in (kind, "private", "reserved")


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address):
    assert address_refused(address) is None


def test_loopback_url_refused_by_default(server):
    with pytest.raises(FetchError, match="loopback address 127.0.0.1"):
        MediaFetcher().load(server + "/data", "messages[0].content[0] image_url")


@pytest.mark.parametrize("answers,kind", [(["10.0.0.5"], "private"), (["169.254.169.254"], "link-local"),
                                           (["93.184.216.34", "192.168.1.1"], "private")])
def test_names_resolving_to_private_addresses_are_refused_before_connecting(answers, kind, monkeypatch):
    def resolve(host, port):
        assert host == "images.example"
        return answers

    def no_connect(*args, **kwargs):
        raise AssertionError("connected to a refused address")

    monkeypatch.setattr(socket, "create_connection", no_connect)
    fetcher = MediaFetcher(resolve=resolve)
    with pytest.raises(FetchError, match=f"{kind} address"):
        fetcher.load("http://images.example/cat.png", "item")


def test_allowed_private_fetch_and_redirect(server):
    fetcher = MediaFetcher(FetchPolicy(allow_private=True))
    assert fetcher.load(server + "/data") == PAYLOAD
    assert fetcher.load(server + "/to-data") == PAYLOAD
    assert fetcher.load(server + "/nolength") == PAYLOAD


def test_redirect_target_is_checked_again(server):
    # 127.0.0.1 is allowed here but 127.0.0.2 is not: the first hop passes, the redirect's target must be refused.
    fetcher = MediaFetcher(FetchPolicy(), refuse=lambda a: "blocked" if a == "127.0.0.2" else None)
    assert fetcher.load(server + "/data") == PAYLOAD
    with pytest.raises(FetchError, match="blocked address 127.0.0.2"):
        fetcher.load(server + "/to-other-host")


def test_redirect_loop_is_capped(server):
    fetcher = MediaFetcher(FetchPolicy(allow_private=True, max_redirects=3))
    with pytest.raises(FetchError, match="more than 3 redirects"):
        fetcher.load(server + "/loop")


def test_size_cap_with_and_without_content_length(server):
    fetcher = MediaFetcher(FetchPolicy(allow_private=True, max_bytes=1000))
    for path in ("/data", "/nolength"):
        with pytest.raises(FetchError, match="max_fetch_bytes=1000"):
            fetcher.load(server + path)


def test_time_cap_covers_a_slow_trickle(server):
    fetcher = MediaFetcher(FetchPolicy(allow_private=True, timeout=0.5))
    start = time.monotonic()
    with pytest.raises(FetchError, match="fetch_timeout=0.5"):
        fetcher.load(server + "/slow")
    assert time.monotonic() - start < 10  # the cap ended it, not the 20 s trickle (wide slack for a loaded CI)


def test_http_errors_name_the_status(server):
    with pytest.raises(FetchError, match="HTTP 404"):
        MediaFetcher(FetchPolicy(allow_private=True)).load(server + "/missing")


def test_data_urls():
    fetcher = MediaFetcher(FetchPolicy(max_bytes=4096))
    url = "data:image/png;base64," + base64.b64encode(PAYLOAD).decode()
    assert fetcher.load(url) == PAYLOAD
    with pytest.raises(FetchError, match="not valid base64"):
        fetcher.load("data:image/png;base64,@@@@", "img")
    with pytest.raises(FetchError, match="max_fetch_bytes=100"):
        MediaFetcher(FetchPolicy(max_bytes=100)).load(url)
    with pytest.raises(FetchError, match="no ','"):
        fetcher.load("data:image/png;base64")


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "gopher://example.com/", "javascript:alert(1)"])
def test_other_schemes_are_refused(url):
    with pytest.raises(FetchError, match="unsupported URL scheme"):
        MediaFetcher().load(url, "item")


def test_local_paths_only_under_roots(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "a.bin").write_bytes(b"abc")
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    os.symlink(secret, root / "link.txt")

    with pytest.raises(FetchError, match="no local roots"):
        MediaFetcher().load(str(root / "a.bin"), "item")
    fetcher = MediaFetcher(FetchPolicy(local_roots=(root,)))
    assert fetcher.load(str(root / "a.bin")) == (root / "a.bin").resolve()
    assert fetcher.load("a.bin") == (root / "a.bin").resolve()  # relative to a root
    assert fetcher.load("file://" + str(root / "a.bin")) == (root / "a.bin").resolve()
    for escape in (str(secret), str(root / ".." / "secret.txt"), "../secret.txt", str(root / "link.txt")):
        with pytest.raises(FetchError, match="outside the allowed roots"):
            fetcher.load(escape, "item")
    with pytest.raises(FetchError, match="does not exist"):
        fetcher.load(str(root / "missing.png"), "item")

"""Loading sources: bad files, bombs, URLs (a local http.server in a thread). Every failure is an InputError."""

import base64
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from qwen25vl.errors import InputError
from qwen25vl.processing.image import process_image
from qwen25vl.processing.media import fetch_url, load_image, resolve_source


def _png(w=40, h=30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/ok.png":
            body = _png()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/slow":
            time.sleep(3)
            self.send_response(200)
            self.end_headers()
        elif self.path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
            self.wfile.write(b"x" * 1000)
        elif self.path == "/big-undeclared":  # no Content-Length: the cap must bite while reading
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"x" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_url_ok(server):
    got = process_image(f"{server}/ok.png")
    want = process_image(_png())
    assert got.grid_thw == want.grid_thw and (got.pixel_values == want.pixel_values).all()


def test_url_timeout(server):
    t = time.monotonic()
    with pytest.raises(InputError, match=r"image '.*/slow'.*timed out"):
        load_image(f"{server}/slow", timeout=0.5)
    assert time.monotonic() - t < 2.5


@pytest.mark.parametrize("path", ["/big-declared", "/big-undeclared"])
def test_url_too_large(server, path):
    with pytest.raises(InputError, match=rf"{path}.*download cap of 100000 bytes"):
        load_image(f"{server}{path}", max_bytes=100_000)


def test_url_http_error(server):
    with pytest.raises(InputError, match="HTTP 404"):
        fetch_url(f"{server}/missing.png", max_bytes=1000)
    with pytest.raises(InputError, match="cannot download"):
        fetch_url("http://127.0.0.1:1/none.png", max_bytes=1000, timeout=2)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.png.*zero bytes"):
        process_image(path)
    with pytest.raises(InputError, match="zero bytes"):
        load_image(b"")


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.jpg"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match=r"cut.jpg.*truncated or corrupt"):
        load_image(path)
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(_png()[:-40])


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, I am text")
    with pytest.raises(InputError, match=r"notes.png.*not an image"):
        load_image(path)
    with pytest.raises(InputError, match="not an image"):
        load_image(b"\x00\x01garbage" * 10)


def test_decompression_bomb_over_cap():
    # a 4000 x 4000 PNG of zeros is tiny on disk; the header alone must be enough to refuse it
    buf = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(InputError, match="16000000 pixels is over the cap 1000000"):
        load_image(buf.getvalue(), max_image_pixels=1_000_000)
    with pytest.raises(InputError, match="over the cap"):
        load_image(np.zeros((100, 100, 3), np.uint8), max_image_pixels=5000)
    assert load_image(buf.getvalue(), max_image_pixels=16_000_000).size == (4000, 4000)


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="base64"):
        load_image("data:image/png,rawtext")
    with pytest.raises(InputError, match="invalid base64"):
        load_image("data:image/png;base64,!!!notbase64")
    with pytest.raises(InputError, match="unsupported source type int"):
        load_image(42)
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((5, 5, 7), np.uint8))
    with pytest.raises(InputError, match="NaN"):
        load_image(np.full((5, 5), np.nan, np.float32))
    ok = "data:image/png;base64," + base64.b64encode(_png()).decode()
    assert isinstance(resolve_source(ok), bytes)

"""Loading sources: bad files, bombs, URLs (a local http.server in a thread). Every failure is an InputError."""

import base64
import io
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from qwen25vl.errors import InputError
from qwen25vl.processing.image import process_image
from qwen25vl.processing.media import (
    MAX_ASPECT_RATIO,
    check_local_file,
    decode_data_url,
    fetch_url,
    load_image,
    resolve_source,
    to_rgb,
)
from qwen25vl.serve.fetch import FetchError, FetchPolicy, MediaFetcher


def _png(w=40, h=30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


_RELEASE = threading.Event()


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
        elif self.path == "/slow":  # answers only when the module's tests are over: only a timeout ends the wait
            _RELEASE.wait(60)
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
    _RELEASE.set()
    httpd.shutdown()
    httpd.server_close()


def test_url_ok(server):
    got = process_image(f"{server}/ok.png")
    want = process_image(_png())
    assert got.grid_thw == want.grid_thw and (got.pixel_values == want.pixel_values).all()


def test_url_timeout(server):
    # the server never answers before the module ends, so reaching "timed out" at all is the cap working
    with pytest.raises(InputError, match=r"image '.*/slow'.*timed out"):
        load_image(f"{server}/slow", timeout=0.5)


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
    with pytest.raises(InputError, match="not an image"):  # a percent-encoded payload is decoded, then refused
        load_image("data:image/png,rawtext")
    with pytest.raises(InputError, match="not valid base64"):
        load_image("data:image/png;base64,!!!notbase64")
    with pytest.raises(InputError, match="unsupported source type int"):
        load_image(42)
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((5, 5, 7), np.uint8))
    with pytest.raises(InputError, match="NaN"):
        load_image(np.full((5, 5), np.nan, np.float32))
    ok = "data:image/png;base64," + base64.b64encode(_png()).decode()
    assert isinstance(resolve_source(ok), bytes)


def _data_url(raw: bytes, scheme: str = "data") -> str:
    return f"{scheme}:image/png;base64," + base64.b64encode(raw).decode()


@pytest.mark.parametrize("scheme", ["data", "DATA", "Data"])
def test_data_url_scheme_is_case_insensitive(scheme):
    url = _data_url(_png(), scheme)
    assert resolve_source(url) == _png()
    assert load_image(url).size == (40, 30)
    assert MediaFetcher().load(url) == _png()  # not taken for a local path (the server has no roots)


def test_one_data_url_decoder_with_the_callers_cap():
    url = _data_url(_png())
    size = len(_png())
    assert decode_data_url(url, max_bytes=size) == _png()
    with pytest.raises(InputError, match=f"{size} bytes is over the limit max_bytes={size - 1}"):
        decode_data_url(url, max_bytes=size - 1)
    with pytest.raises(InputError, match=f"over the limit max_bytes={size - 1}"):
        resolve_source(url, max_bytes=size - 1)  # the processor passes its cap
    with pytest.raises(FetchError, match=f"over the limit max_fetch_bytes={size - 1}"):
        MediaFetcher(FetchPolicy(max_bytes=size - 1)).load(url)  # the server passes its own
    spaced = url[:40] + "\n " + url[40:]
    assert decode_data_url(spaced, max_bytes=size) == _png()  # whitespace inside base64 is ignored
    assert decode_data_url("data:text/plain,a%20b", max_bytes=3) == b"a b"
    for bad, match in (("data:image/png;base64", "no ','"), ("data:image/png;base64,", "zero bytes"),
                       ("data:;base64,@@@@", "not valid base64")):
        with pytest.raises(InputError, match=match):
            decode_data_url(bad, max_bytes=100)


def test_only_regular_files_are_media(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    (tmp_path / "folder.png").mkdir()
    cases = [
        (fifo, "is a FIFO"),
        (tmp_path / "folder.png", "is a directory"),
        ("/dev/zero", "is a character device"),  # read to the end, it never ends
        (str(tmp_path / "a\0b.png"), "NUL byte"),
        (str(tmp_path / ("x" * 5000 + ".png")), "cannot read \\(File name too long\\)"),
        (str(tmp_path / "missing.png"), "does not exist"),
        (str(tmp_path / "nofolder" / "x.png"), "does not exist"),
    ]
    for path, match in cases:
        with pytest.raises(InputError, match=match):
            load_image(path)
        with pytest.raises(InputError, match=match):
            check_local_file(path)
    fetcher = MediaFetcher(FetchPolicy(local_roots=(tmp_path,)))
    for path, match in cases[:2] + cases[3:5]:  # /dev/zero is outside the root
        with pytest.raises(FetchError, match=match):
            fetcher.load(str(path), "item")
    (tmp_path / "ok.png").write_bytes(_png())
    assert load_image("file://" + str(tmp_path / "ok.png")).size == (40, 30)
    assert load_image("FILE://" + str(tmp_path / "ok.png").replace("ok", "%6Fk")).size == (40, 30)


def _never_decoded(monkeypatch):
    def refuse(self, *args):
        raise AssertionError(f"decoded a {self.size} image that its header already refused")

    monkeypatch.setattr(Image.Image, "load", refuse)
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_bombs_and_extreme_aspect_ratios_are_refused_from_the_header(monkeypatch):
    thin = _encoded(Image.new("L", (MAX_ASPECT_RATIO * 10 + 10, 10)), "PNG")  # ratio 201
    big_png = _encoded(Image.new("L", (3000, 3000)), "PNG")
    big_webp = _encoded(Image.new("RGB", (3000, 3000)), "WEBP", lossless=True)
    _never_decoded(monkeypatch)
    with pytest.raises(InputError, match="aspect ratio 201.0 is over the limit 200"):
        load_image(thin)
    for raw in (big_png, big_webp):
        with pytest.raises(InputError, match="9000000 pixels is over the cap 8999999"):
            load_image(raw, max_image_pixels=8_999_999)


def test_pil_decompression_bomb_guard_is_an_input_error(monkeypatch):
    raw = _encoded(Image.new("L", (300, 300)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own guard (2x this) bites first
    with pytest.raises(InputError, match="decompression-bomb"):
        load_image(raw, max_image_pixels=10**9)


def test_sixteen_bit_images_scale_to_eight_bits():
    levels = np.arange(0, 65536, 7, dtype=np.uint16)[:1000].reshape(10, 100)
    got = np.asarray(to_rgb(Image.fromarray(levels)))[..., 0]
    assert (got == np.round(levels / 257.0).astype(np.uint8)).all()
    assert got.max() > 6  # not clipped: 6993 / 257 = 27

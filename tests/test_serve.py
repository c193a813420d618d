"""The OpenAI-compatible server, end to end: the official `openai` client against uvicorn on 127.0.0.1 (free port),
serving a random tiny checkpoint. Greedy answers must equal the Python API's; batching must not change them."""

import asyncio
import base64
import contextlib
import http.server
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

import openai
import httpx
import uvicorn  # noqa: F401

import qwen25vl  # noqa: E402
from qwen25vl.serve.app import create_app  # noqa: E402
from qwen25vl.serve.background import BackgroundServer  # noqa: E402
from qwen25vl.serve.settings import Limits, ServeSettings  # noqa: E402
from qwen25vl.testing.checkpoint import make_tiny_checkpoint  # noqa: E402

KEY = "test-key"
NAME = "tiny-vl"
LIMITS = Limits(max_image_pixels=56 * 84, max_frames=8, max_prompt_tokens=400, max_tokens=2048)


def _png(seed: int, size=(84, 56)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _write_mp4(path, frames: int = 8, fps: int = 4, size: int = 56):
    import av
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(frames):
            frame = np.full((size, size, 3), (i * 30) % 256, np.uint8)
            frame[: size // 2, : size // 2] = 255 - (i * 30) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@contextlib.contextmanager
def _image_host(image: Image.Image):
    """A loopback HTTP server holding one PNG; yields its URL."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    body = buf.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/cat.png"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=1)  # seed 1: varied greedy text
    return qwen25vl.load(folder)


@pytest.fixture(scope="module")
def media_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    _write_mp4(root / "clip.mp4")
    return root


@pytest.fixture(scope="module")
def server(vlm, media_root):
    settings = ServeSettings(model_name=NAME, api_key=KEY, local_roots=(media_root,), limits=LIMITS)
    app = create_app(vlm, settings)
    with BackgroundServer(app) as srv:
        srv.scheduler = app.state.scheduler
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


EXTENSIONS = ("top_k", "ignore_eos", "repetition_penalty")


def _ask(client, messages, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 12)
    extra = {k: kw.pop(k) for k in EXTENSIONS if k in kw}  # ours (vLLM's names): the client sends them as extra_body
    if extra:
        kw["extra_body"] = extra
    return client.chat.completions.create(model=NAME, messages=messages, **kw)


def _user(*parts):
    return [{"role": "user", "content": list(parts)}]


def test_models_health_and_auth(server, client):
    assert [m.id for m in client.models.list()] == [NAME]
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        _ask(bad, [{"role": "user", "content": "hi"}])


def test_text_greedy_equals_python_api(client, vlm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]
    got = _ask(client, messages, max_tokens=16)
    want = vlm.chat(messages, temperature=0, max_new_tokens=16)
    assert got.choices[0].message.content == want and want.strip()
    prompt_len = vlm.processor(messages, add_generation_prompt=True)["input_ids"].shape[1]
    assert got.usage.prompt_tokens == prompt_len
    assert got.usage.completion_tokens == 16 or got.choices[0].finish_reason == "stop"
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens


def test_image_data_url_counts_vision_tokens(client, vlm):
    image = _png(0)
    got = _ask(client, _user({"type": "image_url", "image_url": {"url": _data_url(image)}},
                             {"type": "text", "text": "What is this?"}))
    api_messages = _user({"type": "image", "image": image, "max_pixels": LIMITS.max_image_pixels},
                         {"type": "text", "text": "What is this?"})
    assert got.choices[0].message.content == vlm.chat(api_messages, temperature=0, max_new_tokens=12)
    assert got.usage.prompt_tokens_details.image_tokens == (56 // 28) * (84 // 28)
    text_only = _ask(client, [{"role": "user", "content": "What is this?"}])
    # the image adds its pad tokens plus <|vision_start|> and <|vision_end|>
    assert got.usage.prompt_tokens == text_only.usage.prompt_tokens + 6 + 2


def test_per_item_pixel_limits_change_the_tokens(client):
    def image_tokens(size, **opts):
        part = {"type": "image_url", "image_url": {"url": _data_url(_png(1, size=size)), **opts}}
        return _ask(client, _user(part), max_tokens=1).usage.prompt_tokens_details.image_tokens

    assert image_tokens((84, 56)) == 6
    assert image_tokens((84, 56), max_pixels=56 * 56) == 2  # scaled down to 56 x 28
    assert image_tokens((28, 28)) == 4  # the checkpoint's min_pixels (56 x 56) scales it up
    assert image_tokens((28, 28), min_pixels=28 * 28) == 1


def test_video_file_and_frame_list(client, vlm, media_root):
    opts = {"fps": 2.0, "min_pixels": 28 * 28, "max_pixels": 56 * 56}
    got = _ask(client, _user({"type": "video_url", "video_url": {"url": "clip.mp4", **opts}},
                             {"type": "text", "text": "What happens?"}))
    api_messages = _user({"type": "video", "video": str(media_root / "clip.mp4"), "max_frames": LIMITS.max_frames,
                          **opts}, {"type": "text", "text": "What happens?"})
    assert got.choices[0].message.content == vlm.chat(api_messages, temperature=0, max_new_tokens=12)
    assert got.usage.prompt_tokens_details.video_tokens == 2 * 2 * 2  # 4 frames at 2 fps -> t=2, 56x56 -> 2x2
    as_data = "data:video/mp4;base64," + base64.b64encode((media_root / "clip.mp4").read_bytes()).decode()
    same = _ask(client, _user({"type": "video_url", "video_url": {"url": as_data, **opts}},
                              {"type": "text", "text": "What happens?"}))
    assert same.choices[0].message.content == got.choices[0].message.content

    frames = [_png(10 + i, size=(56, 56)) for i in range(4)]
    got = _ask(client, _user({"type": "video", "video": [_data_url(f) for f in frames], **opts},
                             {"type": "text", "text": "What happens?"}))
    api_messages = _user({"type": "video", "video": frames, **opts}, {"type": "text", "text": "What happens?"})
    assert got.choices[0].message.content == vlm.chat(api_messages, temperature=0, max_new_tokens=12)
    assert got.usage.prompt_tokens_details.video_tokens == 8


def test_streaming_equals_plain_and_reports_usage(client):
    messages = [{"role": "user", "content": "Tell me a story."}]
    plain = _ask(client, messages, max_tokens=20)
    chunks = list(_ask(client, messages, max_tokens=20, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens

    sampled = dict(n=2, temperature=1.0, top_k=0, top_p=1.0, seed=5, max_tokens=10)
    plain = _ask(client, messages, **sampled)
    texts = ["", ""]
    for chunk in _ask(client, messages, stream=True, **sampled):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [c.message.content for c in plain.choices]


def test_stop_strings_and_sampling_options(client):
    messages = [{"role": "user", "content": "Count."}]
    full = _ask(client, messages, max_tokens=20, ignore_eos=True).choices[0].message.content
    stop = full[6:9]
    cut = _ask(client, messages, max_tokens=20, stop=[stop], ignore_eos=True).choices[0]
    assert cut.message.content == full[: full.find(stop)] and cut.finish_reason == "stop"

    sampled = dict(temperature=1.0, top_p=1.0, top_k=0, n=3, seed=7, max_tokens=10, ignore_eos=True)
    first, again = _ask(client, messages, **sampled), _ask(client, messages, **sampled)
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]  # seeded: reproducible
    assert len(set(texts)) > 1  # the n choices differ
    assert first.usage.completion_tokens == 30


def test_seeded_sampling_equals_python_api(client, vlm):
    messages = [{"role": "user", "content": "Surprise me."}]
    opts = dict(temperature=0.8, top_p=0.9, top_k=0, seed=11)
    got = _ask(client, messages, max_tokens=12, **opts).choices[0].message.content
    assert got == vlm.chat(messages, max_new_tokens=12, **opts)
    assert got != _ask(client, messages, max_tokens=12, **{**opts, "seed": 12}).choices[0].message.content


def test_json_object_response_format(client):
    for seed in range(3):
        got = _ask(client, [{"role": "user", "content": f"Give JSON {seed}."}], temperature=1.0, top_k=0, top_p=1.0,
                   seed=seed, max_tokens=24, response_format={"type": "json_object"})
        assert isinstance(json.loads(got.choices[0].message.content), dict)


@pytest.mark.parametrize("part,match", [
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}},
     r"messages\[0\]\.content\[0\]"),
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}, "base64"),
    ({"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}, "loopback"),
    ({"type": "image_url", "image_url": {"url": "/etc/passwd"}}, "outside the allowed roots"),
    ({"type": "image_url", "image_url": {"url": "AAAA"}, "max_pixels": 10**7}, "max_image_pixels"),
    ({"type": "video", "video": ["x"] * 9}, "max_frames"),
    ({"type": "video_url", "video_url": {"url": "clip.mp4", "total_pixels": 10**9}}, "max_request_pixels"),
])
def test_bad_items_are_400s_naming_the_problem(client, part, match):
    with pytest.raises(openai.BadRequestError, match=match):
        _ask(client, _user(part, {"type": "text", "text": "hi"}))


def test_limits_and_unknown_model(client):
    with pytest.raises(openai.BadRequestError, match="max_prompt_tokens=400"):
        _ask(client, [{"role": "user", "content": "word " * 500}])
    with pytest.raises(openai.BadRequestError, match="max_tokens=2048"):
        _ask(client, [{"role": "user", "content": "hi"}], max_tokens=5000)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=NAME, messages=[])


def test_32_concurrent_clients_all_answered_and_batched(server, client):
    prompts = [f"Question number {i}?" for i in range(4)]
    want = {p: _ask(client, [{"role": "user", "content": p}], max_tokens=8).choices[0].message.content
            for p in prompts}
    async_client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)

    async def one(i):
        r = await async_client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": prompts[i % 4]}], temperature=0, max_tokens=8)
        return prompts[i % 4], r.choices[0].message.content

    async def main():
        try:
            return await asyncio.gather(*(one(i) for i in range(32)))
        finally:
            await async_client.close()

    before = server.scheduler.max_rows_seen
    server.scheduler.max_rows_seen = 0
    first_step = []

    def wait_for_all_32():  # the worker's first step waits for the rest to queue: they join the same batch
        if not first_step:
            first_step.append(server.scheduler.wait_rows(32, timeout=30))

    server.scheduler.before_step = wait_for_all_32
    try:
        results = asyncio.run(main())
    finally:
        server.scheduler.before_step = None
    assert first_step == [True]
    assert len(results) == 32
    assert all(text == want[p] for p, text in results)  # batched decoding answers as one-by-one does
    assert server.scheduler.max_rows_seen == 32  # requests really shared decode steps
    server.scheduler.max_rows_seen = max(before, server.scheduler.max_rows_seen)


@contextlib.contextmanager
def _throttled(scheduler, seconds: float = 0.005):
    """Each decode step takes at least `seconds`: 2,000 tokens then last >= 10 s on any machine, so a row that
    leaves the batch sooner was cancelled; and tokens never pause long enough for an idle-time check to run."""
    scheduler.before_step = lambda: time.sleep(seconds)
    try:
        yield scheduler
    finally:
        scheduler.before_step = None


def _raw_request(url: str, body: dict, key: str = KEY, path: str = "/v1/chat/completions") -> socket.socket:
    """Send one request on a fresh socket and return the socket (the caller reads or abandons it)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
    sock.sendall(head.encode() + data)
    return sock


LONG = {"model": NAME, "messages": [{"role": "user", "content": "Go on and on."}], "max_tokens": 2000,
        "ignore_eos": True, "temperature": 0}


def test_client_dropped_mid_stream_frees_its_slot(server, client):
    scheduler, before = server.scheduler, server.scheduler.rows_cancelled
    with _throttled(scheduler), httpx.Client(timeout=30) as http:
        with http.stream("POST", server.url + "/v1/chat/completions", json={**LONG, "stream": True},
                         headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert response.status_code == 200
            seen = 0
            for line in response.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    seen += 1
                if seen >= 3:
                    break
        # the row cannot finish in this window (>= 10 s of throttled steps): only a cancellation frees it
        assert scheduler.wait_until(lambda s: s.running_rows == 0 and s.rows_cancelled > before, timeout=8)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert _ask(client, [{"role": "user", "content": "still there?"}], max_tokens=4).choices[0].message.content


def test_non_streaming_client_that_gives_up_frees_its_slot(server):
    scheduler, before = server.scheduler, server.scheduler.rows_cancelled
    with _throttled(scheduler):
        sock = _raw_request(server.url, LONG)
        try:
            assert scheduler.wait_until(lambda s: s.running_rows == 1 and s.steps > 0, timeout=30)
            steps = scheduler.steps
            assert scheduler.wait_until(lambda s: s.steps >= steps + 20, timeout=30)  # tokens are flowing
        finally:
            sock.close()  # the client gives up while its tokens stream without pause
        assert scheduler.wait_until(lambda s: s.running_rows == 0 and s.rows_cancelled > before, timeout=8)


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    """One HTTP/1.1 response with a Content-Length body from a keep-alive socket: (status, JSON body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    length = int(next(line.split(":")[1] for line in lines if line.lower().startswith("content-length")))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        rest += chunk
    return int(lines[0].split()[1]), json.loads(rest[:length])


class _Boom:
    """A processor that fails with a bug (not a user error) on one prompt."""

    def __init__(self, processor):
        self.inner, self.tokenizer = processor, processor.tokenizer

    def __call__(self, messages, **kw):
        if "boom" in json.dumps(messages, default=str):
            raise RuntimeError("a bug")
        return self.inner(messages, **kw)


def test_a_500_leaves_the_keep_alive_connection_usable(vlm):
    import types
    shim = types.SimpleNamespace(model=vlm.model, processor=_Boom(vlm.processor), defaults=vlm.defaults)
    with BackgroundServer(create_app(shim, ServeSettings(model_name=NAME, limits=LIMITS))) as srv:
        bad = {"model": NAME, "messages": [{"role": "user", "content": "boom"}], "max_tokens": 2}
        good = {**bad, "messages": [{"role": "user", "content": "fine"}]}
        sock = _raw_request(srv.url, bad)
        try:
            for _ in range(3):
                status, body = _read_response(sock)
                assert status == 500 and body["error"]["type"] == "server_error"
                host, port = srv.url.removeprefix("http://").split(":")
                data = json.dumps(good).encode()
                sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                             f"application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
                status, body = _read_response(sock)  # the same connection answers the next request
                assert status == 200 and body["choices"][0]["message"]["content"] is not None
                data = json.dumps(bad).encode()
                sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                             f"application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        finally:
            sock.close()


def test_body_cap_unknown_routes_and_methods_answer_in_openai_shape(vlm):
    settings = ServeSettings(model_name=NAME, limits=LIMITS, max_body_bytes=4096)
    with BackgroundServer(create_app(vlm, settings)) as srv:
        big = {"model": NAME, "messages": [{"role": "user", "content": "x" * 5000}]}
        got = httpx.post(srv.url + "/v1/chat/completions", json=big)
        assert got.status_code == 413 and got.json()["error"]["code"] == "limit_exceeded"
        assert "max_body_bytes=4096" in got.json()["error"]["message"]

        def chunked():  # no Content-Length: the cap counts the bytes as they arrive
            payload = json.dumps(big).encode()
            for i in range(0, len(payload), 1000):
                yield payload[i:i + 1000]

        got = httpx.post(srv.url + "/v1/chat/completions", content=chunked(),
                         headers={"Content-Type": "application/json"})
        assert got.status_code == 413 and "max_body_bytes=4096" in got.json()["error"]["message"]
        small = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(srv.url + "/v1/chat/completions", json=small).status_code == 200
        for response in (httpx.get(srv.url + "/v1/nothing"), httpx.get(srv.url + "/v1/chat/completions")):
            assert response.status_code in (404, 405)
            assert set(response.json()) == {"error"} and response.json()["error"]["message"]


def test_full_queue_is_429_and_timeouts_are_504(vlm):
    settings = ServeSettings(model_name=NAME, max_batch=1, max_queue=1, request_timeout=1.0, limits=LIMITS,
                             allow_private_urls=True)
    app = create_app(vlm, settings)
    with BackgroundServer(app) as srv, _image_host(_png(3)) as image_url, _throttled(app.state.scheduler):
        # 2,000 throttled tokens take >= 10 s on any machine: past request_timeout=1.0 whatever the load
        # (this server may fetch from loopback: an http image URL works like the same image as a data URL)
        sync = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=30)
        by_url = _ask(sync, _user({"type": "image_url", "image_url": {"url": image_url}}), max_tokens=4)
        by_data = _ask(sync, _user({"type": "image_url", "image_url": {"url": _data_url(_png(3))}}), max_tokens=4)
        assert by_url.usage.prompt_tokens_details.image_tokens == 6
        assert by_url.choices[0].message.content == by_data.choices[0].message.content
        client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=30)

        async def one(delay):
            await asyncio.sleep(delay)
            try:
                await client.chat.completions.create(
                    model=NAME, messages=[{"role": "user", "content": "long"}], max_tokens=2000,
                    extra_body={"ignore_eos": True})
                return "ok"
            except openai.RateLimitError as err:
                assert "max_queue=1" in str(err)
                return 429
            except openai.InternalServerError as err:
                assert err.status_code == 504 and "request_timeout=1.0" in str(err)
                return 504

        async def main():
            try:
                return await asyncio.gather(*(one(0.05 * i) for i in range(4)))
            finally:
                await client.close()

        outcomes = asyncio.run(main())
        assert outcomes.count(429) >= 1 and outcomes.count(504) >= 1, outcomes

        # a stream that already started when its time ran out ends with an error event the client raises
        stream = sync.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "long"}],
                                              max_tokens=2000, stream=True, extra_body={"ignore_eos": True})
        received = 0
        with pytest.raises(openai.APIError, match="request_timeout=1.0"):
            for chunk in stream:
                received += 1
        assert received > 1


def test_cli_serves_on_loopback_with_a_key(vlm, tmp_path):
    import os
    import queue
    import re
    import subprocess
    import sys
    import threading

    folder = make_tiny_checkpoint(tmp_path / "cli-model", seed=1)
    env = {**os.environ, "QWEN25VL_API_KEY": "from-env"}
    proc = subprocess.Popen([sys.executable, "-m", "qwen25vl", "serve", "--model", str(folder), "--port", "0",
                             "--threads", "1", "--served-model-name", "cli"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        port, deadline = None, time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "the server exited"
                continue
            match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            port = int(match.group(1)) if match else None
        assert port, "no startup line"
        cli = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="from-env", max_retries=0, timeout=30)
        got = cli.chat.completions.create(model="cli", messages=[{"role": "user", "content": "hi"}], temperature=0,
                                          max_tokens=6)
        assert got.choices[0].message.content == vlm.chat([{"role": "user", "content": "hi"}], temperature=0,
                                                          max_new_tokens=6)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0).models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_server_decode_caps_reach_videos_and_images(vlm, media_root):
    limits = Limits(max_image_pixels=56 * 84, max_frames=8, max_prompt_tokens=400, max_frame_pixels=56 * 56 - 1,
                    max_decoded_pixels=84 * 56 - 1)
    settings = ServeSettings(model_name=NAME, local_roots=(media_root,), limits=limits)
    with BackgroundServer(create_app(vlm, settings)) as srv:
        sync = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=30)
        with pytest.raises(openai.BadRequestError, match=str(56 * 56 - 1)):  # the 56 x 56 clip, refused from its header
            _ask(sync, _user({"type": "video_url", "video_url": {"url": "clip.mp4"}}))
        with pytest.raises(openai.BadRequestError, match=str(84 * 56 - 1)):
            _ask(sync, _user({"type": "image_url", "image_url": {"url": _data_url(_png(0))}}))
        assert _ask(sync, _user({"type": "image_url", "image_url": {"url": _data_url(_png(0, size=(56, 56)))}}))
    assert vlm.processor.max_frame_pixels != 56 * 56 - 1  # the caller's processor keeps its own caps

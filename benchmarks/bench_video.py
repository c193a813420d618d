"""Video decode + preprocess at 2 fps sampling: ours against decode-everything-then-sample (the reference readers).

    .venv/bin/python benchmarks/bench_video.py [--seconds 600] [--clip 20] [--reps 2] [--encodings veryfast:250,ultrafast:60]

Synthetic 720p, 30 fps H.264 videos are encoded once into /tmp, one per encoding PRESET:GOP (x264 preset and
keyframe interval; veryfast:250 is x264's defaults but the speed: 3 B-frames with b-pyramid, CABAC, deblocking). Each
measurement runs in its own process (peak RSS is per process), reference and ours alternating:
- `reference`: what qwen-vl-utils does through torchvision's `read_video` (its fallback reader, and the one this
  machine could run): decode every frame with PyAV's default settings, keep them all, convert every one to RGB,
  stack, take the sampled indices, resize (bicubic, antialias, rounded to uint8), then transformers 4.x's numpy
  rescale / normalise / patchify. Holding a whole 10-minute 720p video takes ~50 GB, so it runs on the first
  `--clip` seconds only.
- `reference-streaming`: the same work per frame (every frame decoded and converted to RGB) but keeping only the
  sampled frames: the reference's speed without its memory, run on the full video.
- `ours`: `process_video` (index by demux, seek past unneeded stretches, unsampled non-reference frames not
  decoded at all, RGB only for kept frames, resized one by one on one torch thread while a second thread decodes,
  table normalisation).
Both reference modes decode with PyAV's default settings, as torchvision's read_video leaves them: slice threading,
which decodes x264's one-slice frames on one core (ours uses the same on a 2-core machine).
Outputs are compared by SHA-256 of pixel_values.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

W, H, FPS = 1280, 720, 30


def make_video(path: str, seconds: float, preset: str = "veryfast", gop: int = 250) -> None:
    import av
    from PIL import Image

    rng = np.random.default_rng(0)
    # a smooth texture larger than the frame, panned over time: compresses like real footage, unlike noise
    tex = np.asarray(Image.fromarray(rng.integers(0, 256, (40, 60), dtype=np.uint8)).resize((W + 512, H + 288),
                     Image.Resampling.BICUBIC))
    chroma = np.asarray(Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).resize((W // 2 + 256, H // 2 + 144),
                        Image.Resampling.BICUBIC))
    tmp = path + ".part"
    with av.open(tmp, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        # x264's own defaults but the preset: veryfast keeps 3 B-frames (b-pyramid), CABAC and the deblocking
        # filter, as camera / web video has; ultrafast drops all three (the first figures used it, gop 60)
        s.options = {"preset": preset, "g": str(gop)}
        s.thread_type = "AUTO"
        for i in range(int(seconds * FPS)):
            dx, dy = (i * 3) % 512, (i * 2) % 288
            yuv = np.empty((H * 3 // 2, W), np.uint8)
            yuv[:H] = tex[dy:dy + H, dx:dx + W]
            yuv[H:H + H // 4].reshape(H // 2, W // 2)[:] = chroma[dy // 2:dy // 2 + H // 2, dx // 2:dx // 2 + W // 2]
            yuv[H + H // 4:].reshape(H // 2, W // 2)[:] = 255 - chroma[dy // 2:dy // 2 + H // 2, dx // 2:dx // 2 + W // 2]
            yuv[(i * 7) % (H - 64):(i * 7) % (H - 64) + 64, 100:164] = (i * 5) % 256  # a moving block
            for p in s.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    os.replace(tmp, path)


def _hf_numpy_preprocess(frames_uint8_tchw: np.ndarray) -> np.ndarray:
    """transformers 4.x Qwen2VLImageProcessor numerics on already-resized frames: float64 rescale, float32
    normalise, then the patch flattening (REFERENCE 4.3)."""
    from qwen25vl.processing.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    v = (frames_uint8_tchw.astype(np.float64) * (1 / 255)).astype(np.float32)
    v = ((v.transpose(0, 2, 3, 1) - np.array(OPENAI_CLIP_MEAN, np.float32)) / np.array(OPENAI_CLIP_STD, np.float32))
    v = v.transpose(0, 3, 1, 2)
    if v.shape[0] % 2:
        v = np.concatenate([v, v[-1:]])
    t, c, h, w = v.shape
    gt, gh, gw = t // 2, h // 14, w // 14
    v = v.reshape(gt, 2, c, gh // 2, 2, 14, gw // 2, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return v.reshape(gt * gh * gw, c * 2 * 14 * 14)


def run_reference(path: str, streaming: bool) -> np.ndarray:
    import av
    import torch

    from qwen25vl.processing.video import frame_pixel_limits, resize_frames, sample_frames, smart_resize

    with av.open(path) as container:
        stream = container.streams.video[0]
        video_fps = float(stream.average_rate)
        if streaming:
            total = stream.frames
            indices, _ = sample_frames(total, video_fps)
            wanted, kept = set(indices), {}
            for i, frame in enumerate(container.decode(video=0)):
                rgb = frame.to_rgb().to_ndarray()  # every frame, as read_video does
                if i in wanted:
                    kept[i] = rgb
            frames = np.stack([kept[i] for i in indices])
        else:
            decoded = {frame.pts: frame for frame in container.decode(video=0)}  # read_video keeps every frame
            frames = np.stack([decoded[p].to_rgb().to_ndarray() for p in sorted(decoded)])
            del decoded
            total = frames.shape[0]
            indices, _ = sample_frames(total, video_fps)
            frames = frames[indices]
    lo, hi = frame_pixel_limits(len(indices), None, None, None)
    rh, rw = smart_resize(frames.shape[1], frames.shape[2], 28, lo, hi)
    # torchvision resizes the whole (T, C, H, W) tensor at once (13 GB of floats for 1,200 720p frames): chunks of
    # 16 give the same numbers (a per-frame op) without swamping the shared machine
    out = np.concatenate([resize_frames(frames[i:i + 16], rh, rw) for i in range(0, len(frames), 16)])
    del frames
    return _hf_numpy_preprocess(out.transpose(0, 3, 1, 2))


def child(mode: str, path: str) -> None:
    import torch

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    decoded = None
    if mode == "ours":
        from qwen25vl.processing import video, video_reader

        readers = []

        def spy(*a, **kw):  # keep the reader to report how many frames it decoded
            readers.append(video_reader.open_video(*a, **kw))
            return readers[-1]

        video.open_video = spy
        out = video.process_video(path)
        pixels, n, decoded = out.pixel_values.numpy(), len(out.frame_indices), readers[0].decoded
    else:
        pixels = run_reference(path, streaming=mode == "reference-streaming")
        decoded = "all"
    seconds = time.perf_counter() - t
    if mode != "ours":
        from qwen25vl.processing.video import sample_frames
        import av

        with av.open(path) as c:
            n = len(sample_frames(c.streams.video[0].frames, float(c.streams.video[0].average_rate))[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "seconds": seconds, "frames": n, "decoded": decoded, "peak_mb": peak / 1024, "import_mb": base / 1024,
                      "threads": torch.get_num_threads(),
                      "sha256": hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:16]}))


def measure(mode: str, path: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--path", path], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def decode_ceiling(path: str, seconds: float) -> tuple[float, float]:
    """Decode-only frames per second over the first `seconds`, PyAV default threading vs frame threads."""
    import av

    rates = []
    for threads in (None, "AUTO"):
        with av.open(path) as c:
            s = c.streams.video[0]
            if threads:
                s.thread_type = threads
            limit, n, t = int(seconds * FPS), 0, time.perf_counter()
            for _ in c.decode(s):
                n += 1
                if n >= limit:
                    break
            rates.append(n / (time.perf_counter() - t))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--clip", type=float, default=20)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--encodings", default="veryfast:250,ultrafast:60")
    parser.add_argument("--write", default=None)
    parser.add_argument("--child", default=None)
    parser.add_argument("--path", default=None)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.path)
    import torch

    cases, ceilings = [], []
    for encoding in args.encodings.split(","):
        preset, gop = encoding.split(":")
        for secs, ref_mode in ((args.clip, "reference"), (args.seconds, "reference-streaming")):
            # the first figures' files (ultrafast, gop 60) kept their old names
            tag = "" if (preset, gop) == ("ultrafast", "60") else f"_{preset}_g{gop}"
            path = f"/tmp/qwen25vl_bench_{W}x{H}_{FPS}fps_{int(secs)}s{tag}.mp4"
            if not os.path.exists(path):
                t = time.perf_counter()
                make_video(path, secs, preset, int(gop))
                print(f"encoded {path} ({os.path.getsize(path) / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s", flush=True)
            cases.append((f"{int(secs)} s, {preset} gop {gop}", path, ref_mode))
        single, threaded = decode_ceiling(cases[-2][1], args.clip)
        ceilings.append(f"{preset} gop {gop}: {single:.0f} frames/s (PyAV default, slice threads), {threaded:.0f} (frame threads)")
    lines = [f"machine: {os.cpu_count()} cores, torch {torch.get_num_threads()} threads, load average "
             f"{os.getloadavg()[0]:.1f} at start; decode-only ceiling on the clips: " + "; ".join(ceilings), "",
             "| video | mode | wall (s), each run | frames decoded | sampled frames / s (best) | peak RSS (MB) | ratio (best / best) | output |",
             "|---|---|---|---|---|---|---|---|"]
    for label, path, ref_mode in cases:
        results = {ref_mode: [], "ours": []}
        for _ in range(args.reps):
            for mode in (ref_mode, "ours"):
                results[mode].append(measure(mode, path))
                print(results[mode][-1], flush=True)
        ref_s = min(r["seconds"] for r in results[ref_mode])
        for mode in (ref_mode, "ours"):
            r = min(results[mode], key=lambda r: r["seconds"])
            same = "equal" if r["sha256"] == results[ref_mode][0]["sha256"] else "DIFFERENT"
            walls = ", ".join(f"{x['seconds']:.1f}" for x in results[mode])
            lines.append(f"| {label} | {mode} | {walls} | {r['decoded']} | {r['frames'] / r['seconds']:.1f} | "
                         f"{r['peak_mb']:.0f} | {ref_s / r['seconds']:.2f}x | {same} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    if args.write:
        with open(args.write, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

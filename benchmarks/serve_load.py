"""Load test of `mmlens serve`: N concurrent simulated sessions against the demo model on loopback.

Each session (its own Gradio client = its own page session): upload a ShapesVQA image, generate, explain with
``attention``, run the logit lens. The server runs in a child process (``python -m mmlens.cli serve``) so its
memory is measured alone: RSS after one warm-up session ("before") and after the N sessions ("after").

    PYTHONPATH=src python benchmarks/serve_load.py --sessions 50 --timeout 300
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import psutil
from gradio_client import Client, handle_file

from mmlens.data import ShapesVQA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mmlens.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start within 120 s")


def session(url: str, image: str, question: str) -> dict[str, float]:
    """One simulated user; returns each step's seconds; raises on any error message from the page."""
    times = {}
    t0 = time.perf_counter()
    c = Client(url, verbose=False, download_files=False)
    times["connect"] = time.perf_counter() - t0
    for step, call in (("upload", lambda: c.predict(handle_file(image), api_name="/upload")),
                       ("generate", lambda: c.predict(question, "", api_name="/generate")),
                       ("explain", lambda: c.predict(api_name="/explain")),
                       ("logit_lens", lambda: c.predict("", api_name="/logit_lens"))):
        t = time.perf_counter()
        out = call()
        times[step] = time.perf_counter() - t
        text = " ".join(str(x) for x in (out if isinstance(out, (list, tuple)) else [out]))
        if "mm-error" in text:
            raise RuntimeError(f"{step}: {text[text.index('mm-error'):][:200]}")
    times["total"] = time.perf_counter() - t0
    return times


def rss_mib(pid: int) -> float:
    p = psutil.Process(pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds for all sessions together")
    ap.add_argument("--warmup", type=int, default=10, help="concurrent warm-up sessions before 'before' (thread "
                    "pools and allocator arenas grow with concurrency once; a leak grows with every session)")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    data = ShapesVQA(seed=0)
    inputs = []
    for i in range(args.sessions):
        s = data.sample(i)
        path = tmp / f"sample{i}.png"
        s.image.save(path)
        inputs.append((str(path), s.question))
    proc = start_server(port)
    try:
        session(url, *inputs[0])  # first-call allocations are not growth
        first = rss_mib(proc.pid)
        if args.warmup:
            with ThreadPoolExecutor(max_workers=args.warmup) as warm:
                list(warm.map(lambda x: session(url, *x), inputs[:args.warmup]))
        before = rss_mib(proc.pid)
        start = time.perf_counter()
        pool = ThreadPoolExecutor(max_workers=args.sessions)
        futures = [pool.submit(session, url, *x) for x in inputs]
        done, pending = wait(futures, timeout=args.timeout)
        wall = time.perf_counter() - start
        for f in pending:
            f.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        after = rss_mib(proc.pid)
        errors = [repr(f.exception())[:200] for f in done if f.exception() is not None]
        results = [f.result() for f in done if f.exception() is None]
        alive = urllib.request.urlopen(url, timeout=5).status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    failures = len(errors) + len(pending)
    print(f"sessions: {args.sessions} concurrent, wall {wall:.1f} s (limit {args.timeout:.0f} s); "
          f"failures: {failures} ({len(pending)} timed out); server still serving: {alive}")
    for e in errors[:5]:
        print("  error:", e)
    if results:
        for step in ("total", "connect", "upload", "generate", "explain", "logit_lens"):
            v = np.array([r[step] for r in results])
            print(f"  {step:10s} p50 {np.percentile(v, 50):6.2f} s   p95 {np.percentile(v, 95):6.2f} s")
    print(f"server RSS: after 1 session {first:.0f} MiB; before (after {args.warmup} concurrent warm-up sessions) "
          f"{before:.0f} MiB; after {after:.0f} MiB; growth {100 * (after / before - 1):+.1f}% "
          f"({100 * (after / first - 1):+.1f}% from the 1-session level)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

"""Reading a ResNet-sized REST body with aiohttp: what the body's read costs, and whether another read loop saves any.

The body is TF Serving's ``resnet_client.py`` request (``json.dumps`` of a float32 [1, 224, 224, 3] image's
``tolist()``, 3.15 MB), POSTed on one keep-alive HTTP/1.1 connection to an aiohttp server in a child process on
127.0.0.1, which reads the whole body and answers with its length (no parsing). Three ways of reading, taken in
turn within each round (the order turning):

- ``wait_for``: ``asyncio.wait_for(request.content.readany(), body_timeout)`` per chunk: ``rest_api``'s loop
  (a bound on time without progress);
- ``timeout``: one ``asyncio.timeout(body_timeout)`` moved on at each chunk (the same bound, no task per chunk);
- ``read``: aiohttp's ``await request.read()`` (no bound on a stalled body; for reference).

Each figure is the client's round trip (send, read, reply), min and median over the rounds. On the shared 2-CPU
machine all three came out within each other's noise (2.0-3.5 ms min): the body's read is the kernel's and
aiohttp's copying, and no read loop removes it.

    PYTHONPATH=$PWD python benchmarks/rest_body_read_bench.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import subprocess
import sys
import time

import numpy as np

BODY_TIMEOUT = 30.0


def serve(port: int) -> None:
    from aiohttp import web

    async def wait_for(request: web.Request) -> web.Response:
        chunks = []
        while True:
            chunk = await asyncio.wait_for(request.content.readany(), BODY_TIMEOUT)
            if not chunk:
                break
            chunks.append(chunk)
        return web.Response(body=b"%d" % len(b"".join(chunks)))

    async def timeout(request: web.Request) -> web.Response:
        chunks = []
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(BODY_TIMEOUT) as no_progress:
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                chunks.append(chunk)
                no_progress.reschedule(loop.time() + BODY_TIMEOUT)
        return web.Response(body=b"%d" % len(b"".join(chunks)))

    async def read(request: web.Request) -> web.Response:
        return web.Response(body=b"%d" % len(await request.read()))

    app = web.Application(client_max_size=1 << 30)
    for handler in (wait_for, timeout, read):
        app.router.add_post(f"/{handler.__name__}", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the child process: serve on this port
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    from tfsctl.testing import free_port, wait_until

    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        x = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
        body = json.dumps({"instances": x.tolist()}).encode()

        def up() -> bool:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("POST", "/read", b"{}")
                return conn.getresponse().read() == b"2"
            except OSError:
                return False

        wait_until(up, 60, "the aiohttp server")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        paths = ["/wait_for", "/timeout", "/read"]
        times: dict[str, list[float]] = {p: [] for p in paths}
        for r in range(args.rounds + 1):
            for path in paths if r % 2 else paths[::-1]:
                start = time.perf_counter()
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                reply = conn.getresponse().read()
                if r:  # the first round warms up
                    times[path].append((time.perf_counter() - start) * 1000)
                assert reply == b"%d" % len(body), reply
        print(f"POST of a {len(body) / 1e6:.2f} MB body, read whole by aiohttp; round trip over {args.rounds} rounds")
        print(f"{'':12} {'min ms':>8} {'median ms':>10}")
        for path, runs in times.items():
            print(f"{path[1:]:12} {min(runs):8.2f} {statistics.median(runs):10.2f}")
    finally:
        child.terminate()
        child.wait()


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# `make demo`: the whole job end to end on the bundled sample.
# export the DeepLab checkpoint -> serve it -> predict on a sample image -> write the mask PNG -> stop the server.
set -euo pipefail
out=${1:-build/demo}
port=${2:-8500}
rest_port=${3:-8501}
bin=${BIN:-.venv/bin}
base="$out/models/deeplab"
image=${IMAGE:-samples/images/shapes_256.png}

mkdir -p "$out"
rm -rf "$base"
echo "==> export samples/deeplab/checkpoint -> $base (version 1)"
"$bin/tfsctl" export samples/deeplab/checkpoint "$base"
"$bin/tfsctl" inspect "$base/1"

echo "==> serve on gRPC :$port, REST :$rest_port"
"$bin/tfsctl" serve --model-name deeplab --model-base-path "$base" --port "$port" --rest-api-port "$rest_port" \
  > "$out/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT

"$bin/python" - "$rest_port" "$server" <<'PY'
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 180
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("server exited early; see server.log")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health/ready", timeout=2) as r:
            if r.status == 200:
                print("server ready")
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.5)
sys.exit("server not ready after 180 s; see server.log")
PY

"$bin/tfsctl" status --server "localhost:$port" --model deeplab
echo "==> predict $image"
"$bin/tfsctl" predict "$image" --server "localhost:$port" --model deeplab --signature predict_images \
  --output "$out/mask.png"

echo "==> stop the server (SIGTERM)"
kill -TERM $server
trap - EXIT
if wait $server; then echo "server exited cleanly"; else echo "server exit code $?"; exit 1; fi
echo "mask written to $out/mask.png"

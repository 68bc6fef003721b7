#!/usr/bin/env bash
# TF Serving's own model-server suite (tensorflow_model_server_test.py) against `tfsctl serve`, as README's
# "Checked against TF Serving's own model-server suite" was measured.
#
#   benchmarks/tf_serving_suite.sh [TF_SERVING_GIT_DIR_OR_URL] [TestClass.test_name ...]
#
# The test, its base class and TF Serving's testdata are copied out of a TF Serving git repository (a bare git dir,
# or cloned shallow from the URL, default github.com/tensorflow/serving) into a temp dir, never into this repository.
# Where the test looks for the tensorflow_model_server binary sits a wrapper that execs `python -m tfsctl serve`
# from this checkout; a stand-in for portpicker (an OS-chosen free port) is used when it is not installed. Files
# the public repository does not hold (Git LFS objects) are left out: the cases that need them fail.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SOURCE=${1:-https://github.com/tensorflow/serving}
shift $(( $# > 0 ? 1 : 0 ))
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tfs-suite.XXXXXX")
echo "work dir: $WORK"

if [ -d "$SOURCE" ]; then
  GIT=(git --git-dir="$SOURCE")
else
  git clone -q --bare --depth 1 "$SOURCE" "$WORK/serving.git"
  GIT=(git --git-dir="$WORK/serving.git")
fi

SRC=$WORK/src/tf_serving
mkdir -p "$SRC/tensorflow_serving/model_servers" "$WORK/py" "$WORK/tmp"
"${GIT[@]}" ls-tree -r HEAD --name-only tensorflow_serving/servables/tensorflow/testdata | while read -r f; do
  mkdir -p "$SRC/$(dirname "$f")"
  "${GIT[@]}" cat-file blob "HEAD:$f" > "$SRC/$f" 2>/dev/null || { echo "not in the repository: $f"; rm -f "$SRC/$f"; }
done
"${GIT[@]}" show HEAD:tensorflow_serving/model_servers/tensorflow_model_server_test.py \
  | sed 's/^from tensorflow_serving.model_servers.test_util import tensorflow_model_server_test_base$/import tensorflow_model_server_test_base/' \
  > "$WORK/py/tensorflow_model_server_test.py"
"${GIT[@]}" show HEAD:tensorflow_serving/model_servers/test_util/tensorflow_model_server_test_base.py \
  > "$WORK/py/tensorflow_model_server_test_base.py"
if ! "$PY" -c 'import portpicker' 2>/dev/null; then
  printf '%s\n' 'import socket' '' '' 'def pick_unused_port():' '    with socket.socket() as s:' \
    '        s.bind(("127.0.0.1", 0))' '        return s.getsockname()[1]' > "$WORK/py/portpicker.py"
fi
cat > "$SRC/tensorflow_serving/model_servers/tensorflow_model_server" <<EOF
#!/usr/bin/env bash
PYTHONPATH="$ROOT" exec "$PY" -m tfsctl serve "\$@"
EOF
chmod +x "$SRC/tensorflow_serving/model_servers/tensorflow_model_server"

cd "$WORK/py"
status=0
TEST_SRCDIR=$WORK/src TEST_TMPDIR=$WORK/tmp "$PY" tensorflow_model_server_test.py "$@" > "$WORK/run.log" 2>&1 || status=$?
grep -E '^\[ +(OK|FAILED) +\]|^Ran ' "$WORK/run.log" || true
echo "full log: $WORK/run.log"
exit "$status"

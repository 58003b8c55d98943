#!/usr/bin/env bash
# MLServer (Seldon's Open Inference Protocol server) with its scikit-learn runtime, in
# a venv of its own under .shadowline/tools/mlserver: the integration test of remote
# candidates starts it as a real V2 model server. Its dependencies (FastAPI, gRPC,
# uvloop, aiokafka) are not the project's, so it never shares the project's venv.
# Pinned by constraints.txt (pip freeze of a working install): MLServer 1.7.1's
# worker pool fails at start with uvloop 0.22+ ("no current event loop"), so uvloop is
# held at 0.21; scikit-learn is the project's own version, so a model saved by the
# tests loads unchanged. Idempotent: a finished install is left as it is.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.shadowline/tools/mlserver
PYTHON=${PYTHON:-python3}
if [ -x "$dest/bin/mlserver" ] && [ -f "$dest/.complete" ] &&
   cmp -s deploy/mlserver/constraints.txt "$dest/.complete"; then
    exit 0
fi
rm -rf "$dest"
"$PYTHON" -m venv "$dest"
"$dest/bin/pip" install -q --upgrade pip
"$dest/bin/pip" install -q -c deploy/mlserver/constraints.txt mlserver mlserver-sklearn uvloop
cp deploy/mlserver/constraints.txt "$dest/.complete"
echo "mlserver: $("$dest/bin/mlserver" --version 2>/dev/null || echo installed) in $dest"

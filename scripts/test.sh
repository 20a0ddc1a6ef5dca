#!/usr/bin/env bash
# Installs everything, then runs the whole test suite: lint, unit tests, integration tests against
# real servers on loopback (moto S3 server, vcsim, Ray). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# pytest exits 5 when it collects no test: that is a broken suite, and it fails this script too.
exec .venv/bin/python -m pytest tests "$@"

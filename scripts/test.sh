#!/bin/bash
# One command for the whole test suite on a fresh Debian 12 machine (as root):
# installs the dependencies, builds both variants, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
make -j2 release asan
make check

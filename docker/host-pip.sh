# Sourced (`. /etc/buildmatrix/host-pip.sh`) at the start of a RUN step that calls pip: fetches the host's pip
# settings (index URLs, trusted hosts, credentials) from the build's one-time URL into a temporary
# PIP_CONFIG_FILE that is removed when the step's shell exits, so it is never part of a layer.
if [ -n "${BUILDMATRIX_PIP_CONF:-}" ]; then
  PIP_CONFIG_FILE=$(mktemp /tmp/host-pip.XXXXXX)
  export PIP_CONFIG_FILE
  trap 'rm -f "$PIP_CONFIG_FILE"' EXIT
  python3 -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=30).read())' \
    "$BUILDMATRIX_PIP_CONF" > "$PIP_CONFIG_FILE"
fi

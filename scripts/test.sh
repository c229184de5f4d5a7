#!/usr/bin/env bash
# Installs what the tests need, then runs every suite against three BEAM generations:
#   OTP 25 + Elixir 1.14   the system's (Debian 12 packages)
#   OTP 27 + Elixir 1.18   Debian 13 "trixie", unpacked into /opt/otp27 (scripts/install-otp.sh)
#   OTP 29 + Elixir 1.20   Debian "sid", unpacked into /opt/otp29
# For each: pytest (all tests on the first generation, the distributed ones on the others; they
# start real BEAM nodes, erl_call and Jinterface peers themselves), then elixir_peer's ExUnit
# suite, `elixir --sname bar -S mix test --include distributed`, which starts the Python node foo.
# Usage: bash scripts/test.sh [extra pytest args]
#   PYKV_GENERATIONS="25 27 29" (default) picks generations; PYKV_OTP_PREFIX (default /opt) the prefixes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

debian_packages=()
command -v elixir >/dev/null && command -v erl >/dev/null || debian_packages+=(elixir erlang-nox)
ls /usr/share/java/OtpErlang.jar >/dev/null 2>&1 || debian_packages+=(erlang-jinterface)
command -v cc >/dev/null || debian_packages+=(gcc libc6-dev)          # pykv's C codec
command -v javac >/dev/null || debian_packages+=(default-jdk-headless) # the Jinterface peer
command -v openssl >/dev/null || debian_packages+=(openssl)
command -v ip >/dev/null || debian_packages+=(iproute2)                # test hosts (tests/hosts.py)
if [ ${#debian_packages[@]} -gt 0 ]; then
  echo "== installing from Debian: ${debian_packages[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debian_packages[@]}" >/dev/null
fi

echo "== installing pykv with its test extras"
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# the tests run both codecs: say which this install has (in CI the C one must be built)
python3 -c 'from pykv.term import codec; print("== pykv codec:", codec.IMPLEMENTATION)'

generations=${PYKV_GENERATIONS:-25 27 29}
prefixes=${PYKV_OTP_PREFIX:-/opt}
declare -A suite_of=([27]=trixie [29]=sid)
system_otp=$(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().')

# PATH for a generation: `elixir -S mix` must find the real mix script, not the prefix's wrapper
generation_path() {
  if [ "$1" = "$system_otp" ]; then echo "$PATH"; return; fi
  local bin
  bin=$(as_root bash "$root/scripts/install-otp.sh" "${suite_of[$1]}" "$prefixes/otp$1" | tail -n 1)
  echo "$bin/../usr/lib/elixir/bin:$bin:$PATH"
}

epmd -daemon >/dev/null 2>&1 || true
# every generation first: the first pytest run's `generations` tests use them all
declare -A path_of
for otp in $generations; do
  if [ "$otp" != "$system_otp" ] && [ -z "${suite_of[$otp]:-}" ]; then
    echo "unknown generation $otp (known: $system_otp ${!suite_of[*]})" >&2; exit 2
  fi
  echo "== [OTP $otp] installing"
  path_of[$otp]=$(generation_path "$otp")
done
export PYKV_GENERATIONS="$generations" PYKV_OTP_PREFIX="$prefixes"
first=1
for otp in $generations; do
  path=${path_of[$otp]}
  build=_build_otp$otp
  if [ $first = 1 ]; then
    selection=()          # every test, once (`generations` tests run every generation themselves)
  else
    selection=(-m "distributed and not generations")  # the unit tests do not depend on the BEAM
  fi
  echo "== [OTP $otp] pytest ${selection[*]} $*"
  PATH=$path MIX_BUILD_ROOT=$build python3 -m pytest "${selection[@]}" "$@"
  echo "== [OTP $otp] elixir_peer: elixir --sname bar -S mix test --include distributed"
  (cd elixir_peer && PATH=$path MIX_BUILD_ROOT=$build elixir --sname bar -S mix test --include distributed)
  first=0
done
# Python generations: the unit tests on 3.12 and 3.13 too, each in a venv of its own (the
# distributed tests ran above, on python3 = 3.11). PYKV_PYTHONS picks them.
for py in ${PYKV_PYTHONS:-3.12 3.13}; do
  interp=
  for candidate in $(ls -d "$HOME"/.pyenv/versions/"$py".*/bin/python 2>/dev/null | sort -V -r) "python$py"; do
    if "$candidate" -c pass 2>/dev/null; then interp=$candidate; break; fi  # (a pyenv shim may not run)
  done
  if [ -z "$interp" ]; then
    if [ -n "${CI:-}" ]; then echo "Python $py not found (python$py, ~/.pyenv/versions/$py.*)" >&2; exit 1; fi
    echo "== [Python $py] not installed here: its unit tests are skipped"; continue
  fi
  echo "== [Python $py] $interp: installing pykv (C codec included), then pytest -m 'not distributed' $*"
  "$interp" -m venv ".venv-py$py"
  ".venv-py$py/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
  ".venv-py$py/bin/python" -c 'from pykv.term import codec; print("== pykv codec:", codec.IMPLEMENTATION)'
  ".venv-py$py/bin/python" -m pytest -m "not distributed" "$@"
done
echo "== all suites passed"

#!/usr/bin/env bash
# Unpacks a newer Erlang/OTP + Elixir from one of Debian's newer suites into a private prefix,
# beside the system's (Debian 12: OTP 25 + Elixir 1.14), so the tests can run on several BEAM
# generations at once:
#   install-otp.sh trixie /opt/otp27     Debian 13: OTP 27 + Elixir 1.18
#   install-otp.sh sid    /opt/otp29     Debian unstable: OTP 29 + Elixir 1.20
# The newer binaries need their own suite's C library, so that comes along and the ELF files
# are pointed at it (patchelf). Prints PREFIX/bin on its last line: put it first on PATH for
# `erl`, `elixir`, `iex`, `mix`, `erl_call` of that generation (for `elixir -S mix`,
# PREFIX/usr/lib/elixir/bin goes before it: PREFIX/bin/mix is a wrapper). Jinterface comes too
# (PREFIX/share/java). Idempotent per prefix: PREFIX/.installed lists what was unpacked, and a
# prefix that lacks something this script now installs is rebuilt beside it (PREFIX.new) and
# swapped in whole, under a lock, so BEAM nodes started meanwhile from it keep working. Needs
# root (apt-get for patchelf).
set -euo pipefail
suite=${1:?usage: install-otp.sh SUITE PREFIX}
prefix=${2:?usage: install-otp.sh SUITE PREFIX}
case $prefix in
  /?*) prefix=${prefix%/} ;;
  *) echo "install-otp.sh: PREFIX must be an absolute path, not '$prefix'" >&2; exit 2 ;;
esac

erlang="erlang-base erlang-crypto erlang-syntax-tools erlang-asn1 erlang-public-key erlang-ssl
        erlang-inets erlang-parsetools erlang-tools erlang-runtime-tools erlang-eunit
        erlang-jinterface erlang-dev"
# the C library and what the emulator and its NIFs link against or dlopen, of the same suite
# (libsctp1: erlang-base depends on it; without it the emulator dlopens the host's libsctp)
libs="libc6 libssl3t64 libstdc++6 libtinfo6 libsystemd0 zlib1g libgcc-s1 libcap2 liblz4-1
      liblzma5 libzstd1 libgcrypt20 libgpg-error0 libsctp1"
# what an install holds: a prefix whose marker says otherwise is installed again
marker="$suite: "$(echo $erlang elixir $libs)

# one installer per prefix at a time; the others wait, then find it done
mkdir -p "$(dirname "$prefix")"
exec 9>"$prefix.lock"
flock 9
if [ -x "$prefix/bin/elixir" ] && [ "$(cat "$prefix/.installed" 2>/dev/null)" = "$marker" ] \
    && "$prefix/bin/erl" -noshell -eval 'halt().' >/dev/null 2>&1; then
  echo "$prefix/bin"; exit 0
fi

need=()
command -v patchelf >/dev/null || need+=(patchelf)
command -v file >/dev/null || need+=(file)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work" "$prefix.new"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"

# the Debian mirror this machine's apt already uses (deb822 .sources, or a one-line list)
mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; exit}}' \
    /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "install-otp.sh: no Debian mirror found in /etc/apt" >&2; exit 1; }

# a private apt state: the system's own package lists and sources stay untouched
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >"$work/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
apt-get "${apt_opts[@]}" update -qq >/dev/null 2>&1 || { echo "install-otp.sh: apt-get update for $suite failed" >&2; exit 1; }

cd "$work/debs"
for pkg in $erlang elixir $libs; do
  # a package missing from the suite (renamed library) is reported, not fatal
  apt-get "${apt_opts[@]}" download "$pkg" >/dev/null 2>&1 || echo "install-otp.sh: $suite has no $pkg" >&2
done
ls ./*.deb >/dev/null 2>&1 || { echo "install-otp.sh: nothing downloaded from $suite" >&2; exit 1; }

# Built beside the prefix and swapped in at the end, so a node that others start meanwhile
# finds the old install or the new one, whole. Paths written into the files are the final ones.
stage=$prefix.new
rm -rf "$stage"
mkdir -p "$stage/bin"
for deb in ./*.deb; do dpkg -x "$deb" "$stage"; done

lib=$prefix/usr/lib/x86_64-linux-gnu
root=$prefix/usr/lib/erlang
sroot=$stage/usr/lib/erlang
erts=$(cd "$sroot" && ls -d erts-* | head -n 1)
elf() { file "$1" | grep -q 'ELF.*\(executable\|pie\)'; }
for f in "$sroot/$erts/bin/"* "$sroot"/lib/erl_interface-*/bin/*; do
  [ -f "$f" ] && elf "$f" && patchelf --set-interpreter "$lib/ld-linux-x86-64.so.2" --set-rpath "$lib" "$f" 2>/dev/null || true
done
find "$sroot/lib" -name '*.so' -exec patchelf --set-rpath "$lib" {} \;

cat >"$stage/bin/erl" <<EOF
#!/bin/sh
ROOTDIR=$root
BINDIR=\$ROOTDIR/$erts/bin
EMU=beam
PROGNAME=erl
export EMU ROOTDIR BINDIR PROGNAME
exec "\$BINDIR/erlexec" \${1+"\$@"}
EOF
chmod +x "$stage/bin/erl"
for tool in elixir elixirc iex mix; do
  printf '#!/bin/sh\nPATH=%s:$PATH exec %s "$@"\n' "$prefix/bin" "$prefix/usr/lib/elixir/bin/$tool" >"$stage/bin/$tool"
  chmod +x "$stage/bin/$tool"
done
ln -sf "$root/$erts/bin/epmd" "$stage/bin/epmd"
call=$(cd "$sroot" && ls lib/erl_interface-*/bin/erl_call 2>/dev/null | head -n 1 || true)
[ -n "$call" ] && ln -sf "$root/$call" "$stage/bin/erl_call"
mkdir -p "$stage/share/java"
jar=$(cd "$sroot" && ls lib/jinterface-*/priv/OtpErlang.jar 2>/dev/null | head -n 1 || true)
[ -n "$jar" ] && ln -sf "$root/$jar" "$stage/share/java/OtpErlang.jar"

old=$prefix.old.$$
if [ -e "$prefix" ]; then mv "$prefix" "$old"; fi
mv "$stage" "$prefix"
rm -rf "$old"
"$prefix/bin/erl" -noshell -eval 'halt().' >/dev/null
echo "$marker" >"$prefix/.installed"
touch "$prefix/.suite-$suite"   # what older versions of this script check: they leave it alone
echo "$prefix/bin"

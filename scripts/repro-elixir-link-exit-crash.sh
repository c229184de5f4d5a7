#!/usr/bin/env bash
# A BEAM-only reproduction (no pykv) of the crash once blamed on Elixir 1.20's `-e TEXT`: two
# Elixir nodes. A script process that traps exits spawn_links a process on the peer node, which
# raises; the script receives the {:EXIT, pid, {%ArgumentError{...}, stack}} and makes one more
# call. Its node then dies with SIGSEGV (garbage collection walking a corrupted off-heap list,
# on a normal scheduler thread), with the script given as `-e TEXT` or through Code.eval_file.
# Seen with sid's OTP 29.1.2 + Elixir 1.20.4.
#
#   PATH=/opt/otp29/usr/lib/elixir/bin:/opt/otp29/bin:$PATH bash scripts/repro-elixir-link-exit-crash.sh [RUNS] [e|file]
#
# Prints each run's exit status (139 = SIGSEGV); exits 1 when any run crashed.
set -uo pipefail
runs=${1:-6}
how=${2:-file}
host=$(hostname -s)
tmp=$(mktemp -d)
peer=repro_peer$$
cookie=repro$$$RANDOM

cat >"$tmp/peer.exs" <<'EOF'
defmodule Hello do
  def fail(_value), do: raise(ArgumentError, "bad value")
end
Process.sleep(:infinity)
EOF
cat >"$tmp/script.exs" <<EOF
Process.flag(:trap_exit, true)
c = Node.spawn_link(:"$peer@$host", Hello, :fail, [:value])
receive do {:EXIT, ^c, {%ArgumentError{message: "bad value"}, _}} -> :ok after 5000 -> raise "no EXIT" end
{:error, {:erpc, :noconnection}} = try do :erpc.call(:"nobody@$host", Hello, :fail, [1]) catch k, r -> {k, r} end
IO.puts("ALL OK")
EOF

elixir --sname "$peer" --cookie "$cookie" -e "Code.eval_file(\"$tmp/peer.exs\")" >"$tmp/peer.out" 2>&1 &
ppid=$!
trap 'kill $ppid 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 2

crashed=0
statuses=""
for i in $(seq 1 "$runs"); do
  if [ "$how" = e ]; then
    timeout 60 elixir --sname "repro_s$$_$i" --cookie "$cookie" -e "$(cat "$tmp/script.exs")" >"$tmp/out" 2>&1
  else
    timeout 60 elixir --sname "repro_s$$_$i" --cookie "$cookie" -e "Code.eval_file(\"$tmp/script.exs\")" >"$tmp/out" 2>&1
  fi
  status=$?
  statuses="$statuses $status"
  [ $status -ge 128 ] && crashed=$((crashed + 1))
done 2>/dev/null
echo "exit statuses:$statuses ($crashed of $runs crashed)"
[ $crashed -eq 0 ]

#!/usr/bin/env bash
# A BEAM-only reproduction (no pykv, no Elixir) of the crash that took down OTP 29 test nodes in
# tests/test_node_dist.py: a process that is inside a dirty NIF, and that another node monitors
# or links, gets an exit signal whose reason is not an atom. The target node then dies with
# SIGSEGV in its off-heap cleanup, on a dirty IO scheduler thread (or spins there forever).
# Seen with Debian's OTP 25.2.3, trixie's OTP 27 and sid's OTP 29.1.2, natively and unpacked.
#
#   PATH=/opt/otp29/bin:$PATH bash scripts/repro-dirty-exit-crash.sh [ROUNDS] [REASON] [WHO]
#
# Two plain `erl` nodes: the target T, and a hidden client that repeats ROUNDS (default 500) times:
#   P = erpc:call(T, erlang, spawn, [prim_file, read_file, [BigFile]])  % P: a dirty-IO NIF
#   monitor(process, P)                       % WHO=monitor (default); WHO=link links instead
#   erpc:call(T, erlang, exit, [P, REASON])   % default {shutdown,<<"why">>}; an atom: no crash
# Exits 1 when the target died or hung (what it printed is shown), 0 when it survived.
# Without the remote monitor or link (WHO=none), or with all of it on one node, no crash.
set -uo pipefail
rounds=${1:-500}
reason=${2:-'{shutdown,<<"why">>}'}
who=${3:-monitor}
host=$(hostname -s)
tmp=$(mktemp -d)
target=repro_t$$
cookie=repro$$$RANDOM
head -c 3000000 /dev/urandom >"$tmp/big.bin"     # a read that takes a while

erl -noshell -sname "$target" -setcookie "$cookie" >"$tmp/target.out" 2>&1 &
tpid=$!
trap 'kill -9 $tpid 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 1

client=$(cat <<EOF
T = '$target@$host',
pong = net_adm:ping(T),
Linker = spawn(fun() -> process_flag(trap_exit, true),
                        (fun L() -> receive {link, P} -> link(P) end, L() end)() end),
Round = fun(I) ->
    P = erpc:call(T, erlang, spawn, [prim_file, read_file, ["$tmp/big.bin"]]),
    case '$who' of monitor -> monitor(process, P); link -> Linker ! {link, P}; none -> ok end,
    true = erpc:call(T, erlang, exit, [P, $reason]),
    I rem 100 =:= 0 andalso io:format("~p rounds~n", [I])
end,
Result = try lists:foreach(Round, lists:seq(1, $rounds)) catch C:E -> {C, E} end,
io:format("client: ~p~n", [Result]),
halt().
EOF
)
timeout 300 erl -noshell -hidden -sname "repro_c$$" -setcookie "$cookie" -eval "$client" 2>&1 | tail -n 3
sleep 0.5
if ! kill -0 $tpid 2>/dev/null; then
  wait $tpid; status=$?
  echo "target node died: exit status $status (139 = SIGSEGV)"; cat "$tmp/target.out"; exit 1
fi
if ! timeout 30 erl -noshell -hidden -sname "repro_p$$" -setcookie "$cookie" \
     -eval "pong = net_adm:ping('$target@$host'), halt()." >/dev/null 2>&1; then
  echo "target node hung (no answer to a ping): killed"; exit 1
fi
echo "target node survived $rounds rounds"

"""The atoms of OTP's vocabulary that several of pykv's modules speak, defined once.
(Atoms are interned, so these are the very objects any decoded `:ok` or `:DOWN` is.)"""

from .term import Atom

OK, ERROR = Atom("ok"), Atom("error")
# exit reasons
NORMAL, SHUTDOWN, KILL, KILLED = Atom("normal"), Atom("shutdown"), Atom("kill"), Atom("killed")
NOPROC, NOCONNECTION = Atom("noproc"), Atom("noconnection")
# message tags: {:EXIT, pid, reason}, {:DOWN, ref, :process, object, reason}
EXIT_TAG, DOWN_TAG, PROCESS = Atom("EXIT"), Atom("DOWN"), Atom("process")
# gen_server calls and casts: {:"$gen_call", {pid, [:alias | ref]}, request}
GEN_CALL, GEN_CAST, ALIAS = Atom("$gen_call"), Atom("$gen_cast"), Atom("alias")
# spawn options
LINK, MONITOR = Atom("link"), Atom("monitor")

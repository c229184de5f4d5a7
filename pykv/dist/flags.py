"""Distribution capability flags (OTP lib/kernel/include/dist.hrl; values in wire-notes)."""

PUBLISHED = 0x1
ATOM_CACHE = 0x2
EXTENDED_REFERENCES = 0x4
DIST_MONITOR = 0x8
FUN_TAGS = 0x10
DIST_MONITOR_NAME = 0x20
HIDDEN_ATOM_CACHE = 0x40
NEW_FUN_TAGS = 0x80
EXTENDED_PIDS_PORTS = 0x100
EXPORT_PTR_TAG = 0x200
BIT_BINARIES = 0x400
NEW_FLOATS = 0x800
UNICODE_IO = 0x1000
DIST_HDR_ATOM_CACHE = 0x2000
SMALL_ATOM_TAGS = 0x4000
UTF8_ATOMS = 0x10000
MAP_TAG = 0x20000
BIG_CREATION = 0x40000
SEND_SENDER = 0x80000
BIG_SEQTRACE_LABELS = 0x100000
EXIT_PAYLOAD = 0x400000
FRAGMENTS = 0x800000
HANDSHAKE_23 = 0x1000000
UNLINK_ID = 0x2000000
SPAWN = 1 << 32
NAME_ME = 1 << 33
V4_NC = 1 << 34
ALIAS = 1 << 35
ALTACT_SIG = 1 << 37  # OTP 28: op 37, priority messages, exit signals to aliases
NATIVE_RECORDS = 1 << 38  # OTP 29 RECORD_EXT; OTP 29 sends records even to peers without it

# What OTP 25 refuses to connect without, plus what OTP 26 adds (V4_NC, UNLINK_ID).
# A peer lacking any of these cannot talk to us either: we encode with all of them.
MANDATORY = (
    EXTENDED_REFERENCES | FUN_TAGS | NEW_FUN_TAGS | EXTENDED_PIDS_PORTS | EXPORT_PTR_TAG
    | BIT_BINARIES | NEW_FLOATS | UTF8_ATOMS | MAP_TAG | BIG_CREATION | HANDSHAKE_23
    | V4_NC | UNLINK_ID
)

# Everything we implement. Not offered: the atom cache (we read its references, but it costs
# pykv more CPU than it saves: bench.atom_cache; `node.flags |= DIST_HDR_ATOM_CACHE` turns it
# on), NAME_ME (we always have a name). What a peer lacking one of the others gets:
# dist/capabilities.py.
OURS = (
    MANDATORY | DIST_MONITOR | DIST_MONITOR_NAME | UNICODE_IO | SMALL_ATOM_TAGS
    | SEND_SENDER | BIG_SEQTRACE_LABELS | EXIT_PAYLOAD | SPAWN | ALIAS | ALTACT_SIG
    | FRAGMENTS  # the distribution header (dist/framing.py) and fragments (dist/fragments.py)
    | NATIVE_RECORDS
)

_NAMES = {v: k for k, v in list(globals().items()) if k.isupper() and isinstance(v, int)
          and v and (v & (v - 1)) == 0}


def describe(flags: int) -> list[str]:
    """Names of the single-bit flags set in `flags`, for log lines."""
    return [name for bit, name in sorted(_NAMES.items()) if flags & bit]

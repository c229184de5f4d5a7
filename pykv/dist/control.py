"""Control-message operation codes (OTP erts/doc "Distribution Protocol", "Protocol between
connected nodes"). Shapes seen on the wire are listed in wire-notes."""

LINK = 1
SEND = 2
EXIT = 3
UNLINK = 4
NODE_LINK = 5
REG_SEND = 6
GROUP_LEADER = 7
EXIT2 = 8
SEND_TT = 12
EXIT_TT = 13
REG_SEND_TT = 16
EXIT2_TT = 18
MONITOR_P = 19
DEMONITOR_P = 20
MONITOR_P_EXIT = 21
SEND_SENDER = 22
SEND_SENDER_TT = 23
PAYLOAD_EXIT = 24
PAYLOAD_EXIT_TT = 25
PAYLOAD_EXIT2 = 26
PAYLOAD_EXIT2_TT = 27
PAYLOAD_MONITOR_P_EXIT = 28
SPAWN_REQUEST = 29
SPAWN_REQUEST_TT = 30
SPAWN_REPLY = 31
SPAWN_REPLY_TT = 32
ALIAS_SEND = 33
ALIAS_SEND_TT = 34
UNLINK_ID = 35
UNLINK_ID_ACK = 36
# OTP 28: {37, Flags, From, To} or {37, Flags, From, To, Token}, then the message or the exit
# reason; Flags: capabilities.ALTACT_* (a priority, alias, name or exit signal)
ALTACT_SIG_SEND = 37

# Ops whose control message is followed by a second term (the message or the reason).
WITH_PAYLOAD = frozenset({
    SEND, REG_SEND, SEND_TT, REG_SEND_TT, SEND_SENDER, SEND_SENDER_TT, PAYLOAD_EXIT,
    PAYLOAD_EXIT_TT, PAYLOAD_EXIT2, PAYLOAD_EXIT2_TT, PAYLOAD_MONITOR_P_EXIT,
    SPAWN_REQUEST, SPAWN_REQUEST_TT, ALIAS_SEND, ALIAS_SEND_TT, ALTACT_SIG_SEND,
})

# SPAWN_REPLY flags
SPAWN_FLAG_LINK = 1
SPAWN_FLAG_MONITOR = 2

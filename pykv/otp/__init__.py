"""BEAM behaviours spoken on the wire: gen_server, Task.Supervisor, rpc/erpc, exports."""

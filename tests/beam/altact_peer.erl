%% The BEAM side of tests/test_altact_signals.py: alias replies, priority messages and exit
%% signals to aliases (OTP 28+, EEP 76) between a BEAM node of some generation and pykv.
%%
%%   erl -sname N -setcookie C -noshell -eval '<compile and load this file>,
%%       altact_peer:main(init:get_plain_arguments())' -extra PyNode
%%
%% Sends {hello, self(), OtpRelease} to {control, PyNode}, then serves what Python asks:
%%   {From, call_python}            gen_server:call({py_server, PyNode}, ping) -> From ! {called, R}
%%   {From, sequence, P, A, Target} the same signals from one process to Python's priority alias
%%                                  P, plain alias A and pid Target, and to a BEAM process's
%%                                  own; From ! {beam_order, Messages} (that process's queue)
%%   {From, receiver, Priority}     a process trapping exits with an alias (a priority alias if
%%                                  Priority) -> From ! {receiver, Pid, Alias}; once 'done' is
%%                                  in its queue it sends From {order, Pid, Messages}
%%   stop                           halts
%% and a gen_server registered as beam_server answers any call with {pong, Request}.
-module(altact_peer).
-behaviour(gen_server).
-export([main/1, init/1, handle_call/3, handle_cast/2]).

main([PyNode]) ->
    Py = list_to_atom(PyNode),
    {ok, _} = gen_server:start({local, beam_server}, ?MODULE, [], []),
    {control, Py} ! {hello, self(), list_to_integer(erlang:system_info(otp_release))},
    loop(Py).

loop(Py) ->
    receive
        {From, call_python} ->
            From ! {called, gen_server:call({py_server, Py}, ping, 10000)};
        {From, sequence, P, A, Target} ->
            Me = self(),
            Local = spawn(fun() -> process_flag(trap_exit, true),
                                   Me ! {aliases, alias([priority]), alias()},
                                   await_done(Me) end),
            receive {aliases, LP, LA} -> ok end,
            sequence(P, A, Target),
            sequence(LP, LA, Local),
            receive {order, Local, Order} -> From ! {beam_order, Order} end;
        {From, receiver, Priority} ->
            Me = self(),
            Pid = spawn(fun() -> process_flag(trap_exit, true),
                                 Alias = case Priority of true -> alias([priority]); false -> alias() end,
                                 Me ! {alias, Alias},
                                 await_done(From) end),
            receive {alias, Alias} -> From ! {receiver, Pid, Alias} end;
        stop ->
            halt()
    end,
    loop(Py).

%% What an OTP 29 node was seen to send as op 37 (flags in comments), in this order.
sequence(P, A, Target) ->
    Target ! first,
    Target ! second,
    erlang:send(P, urgent1, [priority]),         % 5: alias | priority
    erlang:send(A, not_a_priority_alias, [priority]),
    erlang:send(P, no_priority_option),          % 4: alias
    erlang:send(Target, to_a_pid, [priority]),   % 1: priority, to a pid
    erlang:send(P, urgent2, [priority]),
    erlang:exit_signal(P, urgent_exit, [priority]),  % 21: exit | alias | priority
    erlang:exit_signal(A, exit_through_alias),       % 20: exit | alias
    Target ! done.

await_done(Report) ->
    {messages, Messages} = process_info(self(), messages),
    case lists:member(done, Messages) of
        true -> Report ! {order, self(), [plain(M) || M <- Messages]};
        false -> timer:sleep(10), await_done(Report)
    end.

plain({'EXIT', _From, Reason}) -> {'EXIT', Reason};
plain(Message) -> Message.

init([]) -> {ok, nostate}.
handle_call(Request, _From, State) -> {reply, {pong, Request}, State}.
handle_cast(_, State) -> {noreply, State}.

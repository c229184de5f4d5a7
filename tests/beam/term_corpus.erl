%% Differential corpus for pykv's External Term Format codec (tests/test_term_differential.py).
%%
%% Run by the test with whatever `erl` is first on PATH:
%%   erl -noshell -eval '<compile and load this file>, term_corpus:main(init:get_plain_arguments())'
%%       -extra CorpusPath ResultPath
%% 1. Builds the corpus (hand-picked edge cases + seeded random terms), writes each term's
%%    term_to_binary (with varying options, some compressed) to CorpusPath as <<Len:32, Bin>>,
%%    and prints "CORPUS <count>".
%% 2. Waits for a line on stdin: Python has then written ResultPath, one record per term:
%%    <<0, Len:32, Bin>> (Python's re-encoding) or <<1, Len:32, Message>> (Python failed).
%% 3. Checks binary_to_term(Bin) =:= Original for each, prints one line per problem, then
%%    "RESULT <count> <problems>", and halts.
-module(term_corpus).
-export([main/1]).

main([CorpusPath, ResultPath]) ->
    Terms = edge_cases() ++ deep_terms() ++ colliding_maps() ++ records() ++ random_terms(),
    Encoded = [term_to_binary(T, options(I)) || {I, T} <- number(Terms)],
    ok = file:write_file(CorpusPath, [[<<(byte_size(B)):32>>, B] || B <- Encoded]),
    io:format("CORPUS ~b~n", [length(Terms)]),
    _ = io:get_line(""),
    {ok, Results} = file:read_file(ResultPath),
    Problems = check(number(Terms), Results, 0),
    io:format("RESULT ~b ~b~n", [length(Terms), Problems]),
    halt(0).

number(Terms) -> lists:zip(lists:seq(0, length(Terms) - 1), Terms).

%% Cycle through the encodings a peer may send: OTP 26+ defaults (UTF-8 atoms), the OTP 25
%% default (minor_version 1: ATOM_EXT), minor_version 0 (FLOAT_EXT text floats), compressed.
options(I) ->
    element(I rem 6 + 1, {[], [compressed], [{minor_version, 1}], [{minor_version, 2}],
                          [{minor_version, 0}], [{compressed, 9}, {minor_version, 1}]}).

check([], <<>>, Problems) ->
    Problems;
check([{I, Original} | Rest], <<0, Len:32, Bin:Len/binary, More/binary>>, Problems) ->
    try binary_to_term(Bin) of
        Original ->
            check(Rest, More, Problems);
        Other ->
            io:format("MISMATCH ~b~n  original: ~P~n  python:   ~P~n  bytes:    ~P~n",
                      [I, Original, 12, Other, 12, Bin, 40]),
            check(Rest, More, Problems + 1)
    catch
        Class:Reason ->
            io:format("MISMATCH ~b: binary_to_term ~p:~p~n  original: ~P~n  bytes:    ~P~n",
                      [I, Class, Reason, Original, 12, Bin, 40]),
            check(Rest, More, Problems + 1)
    end;
check([{I, Original} | Rest], <<1, Len:32, Message:Len/binary, More/binary>>, Problems) ->
    io:format("PYERROR ~b ~s~n  original: ~P~n", [I, Message, Original, 12]),
    check(Rest, More, Problems + 1);
check(Terms, _Results, Problems) ->
    io:format("MISMATCH results file ends early: ~b terms unchecked~n", [length(Terms)]),
    Problems + length(Terms).

edge_cases() ->
    Ref = make_ref(),
    Self = self(),
    Other = spawn(fun() -> receive stop -> ok end end),
    Port = hd(erlang:ports()),
    Env = {Self, Ref, [1, 2, 3]},
    Closure = fun(X) -> {X, Env} end,
    Nested = fun() -> fun(Y) -> {Y, Closure} end end,
    ForeignPid = binary_to_term(<<131, 88, 119, 10, "other@host", 0, 0, 1, 2, 0, 0, 0, 3,
                                  255, 0, 0, 7>>),
    ForeignRef = binary_to_term(<<131, 90, 0, 5, 119, 10, "other@host", 255, 255, 255, 255,
                                  1:32, 2:32, 3:32, 4:32, 5:32>>),
    ForeignPort = binary_to_term(<<131, 120, 119, 10, "other@host", 1:64, 42:32>>),
    NegativeZero = binary_to_term(<<131, 70, 128, 0, 0, 0, 0, 0, 0, 0>>),
    Big = 1 bsl 10000,
    Atoms = ['', a, ok, true, false, nil, undefined, 'Elixir.KV.Bucket', '$gen_call',
             'with space', 'quote\'s', 'é', 'Ünïcödé', '日本語', '🎉',
             list_to_atom(lists:duplicate(255, $a)),
             list_to_atom(lists:duplicate(255, 16#65E5)),  % 765 bytes: ATOM_UTF8_EXT
             list_to_atom(lists:duplicate(255, 16#E9)),   % Latin-1: ATOM_EXT on OTP 25
             list_to_atom(lists:duplicate(85, 16#1F389))],
    Integers = [0, 1, 255, 256, -1, -255, -256, 2147483647, 2147483648, -2147483648,
                -2147483649, 4294967295, 4294967296, 9223372036854775807,
                9223372036854775808, -9223372036854775808, -9223372036854775809,
                1 bsl 64, -(1 bsl 64), (1 bsl 2040) - 1, 1 bsl 2040, -(1 bsl 2040),
                pow10(1000), -pow10(1000), Big, -Big],
    Floats = [0.0, NegativeZero, 1.0, -1.0, 1.5, 0.1, -2.5e-3, 1.0e308, 1.7976931348623157e308,
              -1.7976931348623157e308, 5.0e-324, 2.2250738585072014e-308, math:pi(),
              123456789.123456789, 1.0e15 + 0.3],
    Binaries = [<<>>, <<"abc">>, <<"key">>, <<"é"/utf8>>, <<0, 255, 131>>,
                list_to_binary(lists:seq(0, 255)), binary:copy(<<"0123456789">>, 10000),
                <<1:1>>, <<255, 3:3>>, <<0:7>>, <<1, 2, 3, 4:4>>, <<16#FFFF:15>>],
    Lists = ["", "abc", [1, 2, 3], lists:seq(0, 255), lists:seq(1, 300),
             lists:duplicate(65535, 7), lists:duplicate(65536, 7), [256],
             [-1, 0, 1], [a | b], [1, 2 | 3], [[]], [[[[]]]], [alias | Ref],
             [<<"x">> | <<"y">>], [1.5 | 2.5], [{a} | #{}], ["nested", ["deeper", ["deepest"]]],
             lists:seq(1, 10000)],
    Tuples = [{}, {a}, {a, b}, list_to_tuple(lists:seq(1, 255)),
              list_to_tuple(lists:seq(1, 256)), {{{{{}}}}},
              {'$gen_call', {Self, [alias | Ref]}, {get, <<"key">>}},
              {'$gen_cast', {put, <<"bucket">>, binary:copy(<<1>>, 1024)}},
              {'EXIT', Self, {badarg, [{erlang, binary_to_integer, [<<"x">>], []}]}}],
    Maps = [#{}, #{a => 1}, #{<<"k">> => <<"v">>, k => v, 1 => one},
            maps:from_list([{I, I * I} || I <- lists:seq(1, 40)]),  % > 32 keys: a HAMT
            maps:from_list([{integer_to_binary(I), I} || I <- lists:seq(1, 100)]),
            #{[1] => 2, #{a => b} => c, {t} => d, [] => e, "str" => f},
            #{#{#{} => []} => #{[] => #{}}}, #{Self => Ref, Ref => Port},
            #{'__struct__' => 'Elixir.RuntimeError', '__exception__' => true,
              message => <<"msg">>},
            #{nil => nil, true => false}, #{[a | b] => [c | d]},
            #{[1] => list, {1} => tuple, <<1>> => binary, [[1]] => nested, [{1}] => mixed}],
    Identities = [Self, Other, Ref, Port, alias(), erlang:monitor(process, Other),
                  list_to_pid("<0.0.1>"), ForeignPid, ForeignRef, ForeignPort,
                  [Self || _ <- lists:seq(1, 200)]],
    Funs = [fun lists:map/2, fun erlang:'++'/2, fun 'Elixir.Enum':map/2, fun() -> ok end,
            Closure, Nested, Nested(), {Closure, [Closure]}],
    Compressible = [lists:duplicate(1000, hello), binary:copy(<<"abc">>, 5000),
                    {lists:seq(1, 1000), maps:from_list([{I, <<"v">>} || I <- lists:seq(1, 50)])}],
    Other ! stop,
    Atoms ++ Integers ++ Floats ++ Binaries ++ Lists ++ Tuples ++ Maps ++ Identities ++ Funs
        ++ Compressible.

%% The BEAM takes any nesting (binary_to_term and term_to_binary are iterative): lists,
%% tuples, maps, improper lists and closures nested past pykv's FAST_DEPTH (256), and deep.
deep_terms() ->
    Deep = nest(list, 100000),
    Chain = lists:foldl(fun(_, F) -> fun() -> F end end, fun() -> bottom end, lists:seq(1, 600)),
    [nest(Kind, N) || Kind <- [list, tuple, map_value, map_key, improper_head, improper_tail],
                      N <- [255, 256, 257, 511, 100000]]
        ++ [fun() -> Deep end, Chain, [Deep, {Deep}, #{Deep => Deep}]].

nest(Kind, N) -> nest(Kind, N, []).
nest(_, 0, Acc) -> Acc;
nest(list, N, Acc) -> nest(list, N - 1, [Acc]);
nest(tuple, N, Acc) -> nest(tuple, N - 1, {Acc, N});
nest(map_value, N, Acc) -> nest(map_value, N - 1, #{k => Acc, N => 1.5});
nest(map_key, N, Acc) -> nest(map_key, N - 1, #{Acc => N});
nest(improper_head, N, Acc) -> nest(improper_head, N - 1, [Acc | tail]);
nest(improper_tail, N, Acc) -> nest(improper_tail, N - 1, [N, {Acc} | tail]).

%% Maps whose keys the BEAM tells apart and a Python dict would merge.
colliding_maps() ->
    [#{1 => a, 1.0 => b}, #{true => 1, 1 => 2}, #{false => 0, 0 => 1, 0.0 => 2},
     #{0.0 => a, -0.0 => b}, #{{1} => a, {1.0} => b}, #{[1] => x, [1.0] => y},
     #{#{1 => a} => x, #{1.0 => a} => y}, #{#{1 => a, 1.0 => b} => c},
     #{[true | 1] => a, [1 | true] => b, [1 | 1] => c},
     maps:from_list([{I, I} || I <- lists:seq(1, 40)] ++ [{float(I), I} || I <- lists:seq(1, 40)]),
     [#{1 => a, 1.0 => b}, {#{true => 1, 1 => 2}}]].

%% OTP 29 native records (RECORD_EXT), made from their encoding so that this file compiles
%% on every release (earlier releases have none).
records() ->
    case list_to_integer(erlang:system_info(otp_release)) >= 29 of
        false ->
            [];
        true ->
            Point = record(nr, point, false, [{x, 1}, {y, 2}]),
            Deep = lists:foldl(fun(I, R) -> record(m, r, I rem 2 =:= 0, [{v, [R]}, {i, I}]) end,
                               Point, lists:seq(1, 1000)),
            [Point, record(nr, pub, true, [{a, <<"v">>}, {b, default}]), record(m, empty, false, []),
             record(nr, point, false, [{y, 1}, {x, 2}]), record('Elixir.KV.Rec', 'odd name', true,
                                                                [{'Ünïcödé', #{k => Point}}]),
             [Point, {Point}], #{Point => Point, record(nr, point, false, [{x, 1.0}, {y, 2}]) => 1},
             Deep]
    end.

record(Module, Name, Exported, Fields) ->
    Enc = fun(T) -> <<131, Bin/binary>> = term_to_binary(T), Bin end,
    Flags = case Exported of true -> 1; false -> 0 end,
    binary_to_term(iolist_to_binary([131, 67, <<(length(Fields)):32>>, Flags, Enc(Module), Enc(Name),
                                     [Enc(F) || {F, _} <- Fields], [Enc(V) || {_, V} <- Fields]])).

pow10(N) -> pow10(N, 1).
pow10(0, Acc) -> Acc;
pow10(N, Acc) -> pow10(N - 1, Acc * 10).

%% Seeded random nested terms. Map keys include floats and booleans: some maps hold keys
%% such as 1 and 1.0, or true and 1, which pykv decodes as a Map.
random_terms() ->
    _ = rand:seed(exsss, {20240611, 17, 42}),
    [random_term(4, any) || _ <- lists:seq(1, 320)].

random_term(0, Kind) ->
    scalar(Kind);
random_term(Depth, Kind) ->
    case rand:uniform(10) of
        N when N =< 4 -> scalar(Kind);
        5 -> list_to_tuple(random_terms(Depth - 1, Kind));
        6 -> random_terms(Depth - 1, Kind);
        7 -> improper(random_terms(Depth - 1, Kind), scalar(Kind));
        8 -> maps:from_list([{random_term(Depth - 1, key), random_term(Depth - 1, any)}
                             || _ <- lists:seq(1, rand:uniform(6) - 1)]);
        9 -> [rand:uniform(256) - 1 || _ <- lists:seq(1, rand:uniform(20))];
        10 -> {random_term(Depth - 1, Kind), random_term(Depth - 1, Kind)}
    end.

random_terms(Depth, Kind) -> [random_term(Depth, Kind) || _ <- lists:seq(1, rand:uniform(5) - 1)].

improper([], Tail) -> [x | Tail];
improper(Items, Tail) -> Items ++ Tail.

scalar(_Kind) ->
    case rand:uniform(12) of
        1 -> rand:uniform(256) - 1;
        2 -> rand:uniform(1 bsl 32) - (1 bsl 31);
        3 -> (rand:uniform(1 bsl 40) - (1 bsl 39)) * (1 bsl rand:uniform(200));
        4 -> random_atom();
        5 -> rand:bytes(rand:uniform(40) - 1);
        6 -> <<(rand:uniform(255)), (rand:uniform(127)):(rand:uniform(7))>>;
        7 -> unicode:characters_to_binary([rand:uniform(16#D7FF) || _ <- lists:seq(1, 5)]);
        8 -> self();
        9 -> make_ref();
        10 -> (rand:uniform() - 0.5) * math:pow(10, rand:uniform(600) - 300);
        11 -> lists:nth(rand:uniform(3), [true, false, nil]);
        12 -> rand:normal()
    end.

random_atom() ->
    Alphabet = "abcXYZ_@09" ++ [16#E9, 16#65E5, 16#1F600],
    list_to_atom([lists:nth(rand:uniform(length(Alphabet)), Alphabet)
                  || _ <- lists:seq(1, rand:uniform(12))]).

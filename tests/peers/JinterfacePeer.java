// A Jinterface node that tests drive line by line: OTP's own Java peer, which negotiates
// neither SEND_SENDER, DIST_MONITOR, EXIT_PAYLOAD, ALIAS, SPAWN nor UNICODE_IO.
//
//   java -cp DIR:OtpErlang.jar JinterfacePeer NAME COOKIE
//
// Commands on stdin, one per line, words separated by spaces; an argument is an integer,
// b:TEXT (a binary) or an atom. Each command prints one line "= ...", and what arrives by
// itself prints "! ..." lines:
//   ping NODE                  OtpNode.ping                        = ping true|false
//   call NAME NODE ARG         {Self, Arg} to {NAME, NODE}, await  = reply TERM | = reply timeout
//   hello NAME NODE            {hello, Watch, Echo, Gl} to it      = sent
//   rpc NODE MOD FUN ARG...    OtpConnection sendRPC/receiveRPC    = rpc TERM
//   glrpc NODE MOD FUN ARG...  {Self, {call, M, F, A, Gl}} to rex  = glrpc TERM
//   quit
// Mailboxes it serves: echo ({Pid, X} -> Pid ! {echo, X}), rex (gen_server calls and C-node
// {Pid, {call, M, F, A, GL}} for java:echo/1, java:node/0; anything else is undef), gl (a
// group leader: "! io REQUEST", answered ok), watch (prints "! exit REASON" and "! msg TERM").

import com.ericsson.otp.erlang.*;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.ArrayList;
import java.util.List;

public class JinterfacePeer {
    static OtpNode node;
    static String cookie;
    static OtpMbox echo, rex, gl, watch;

    static synchronized void say(String line) {
        System.out.println(line);
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        cookie = args[1];
        node = new OtpNode(args[0], cookie);
        echo = node.createMbox("echo");
        rex = node.createMbox("rex");
        gl = node.createMbox("gl");
        watch = node.createMbox("watch");
        serve(echo, JinterfacePeer::echo);
        serve(rex, JinterfacePeer::rex);
        serve(gl, JinterfacePeer::groupLeader);
        serve(watch, m -> say("! msg " + show(m)));
        say("= ready " + node.node());
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            String[] w = line.trim().split(" ");
            try {
                switch (w[0]) {
                    case "ping":
                        say("= ping " + node.ping(w[1], 5000));
                        break;
                    case "call": {
                        OtpMbox me = node.createMbox();
                        me.send(w[1], w[2], tuple(me.self(), arg(w[3])));
                        OtpErlangObject reply = me.receive(10000);
                        say("= reply " + (reply == null ? "timeout" : show(reply)));
                        node.closeMbox(me);
                        break;
                    }
                    case "hello":
                        watch.send(w[1], w[2], tuple(new OtpErlangAtom("hello"), watch.self(), echo.self(), gl.self()));
                        say("= sent");
                        break;
                    case "rpc": {
                        OtpSelf self = new OtpSelf("jc" + System.nanoTime() % 100000, cookie);
                        OtpConnection conn = self.connect(new OtpPeer(w[1]));
                        conn.sendRPC(w[2], w[3], new OtpErlangList(args(w, 4)));
                        say("= rpc " + show(conn.receiveRPC()));
                        conn.close();
                        break;
                    }
                    case "glrpc": {
                        OtpMbox me = node.createMbox();
                        OtpErlangObject call = tuple(new OtpErlangAtom("call"), new OtpErlangAtom(w[2]),
                                new OtpErlangAtom(w[3]), new OtpErlangList(args(w, 4)), gl.self());
                        me.send("rex", w[1], tuple(me.self(), call));
                        OtpErlangObject reply = me.receive(10000);
                        say("= glrpc " + (reply == null ? "timeout" : show(reply)));
                        node.closeMbox(me);
                        break;
                    }
                    case "quit":
                        node.close();
                        say("= bye");
                        System.exit(0);
                        break;
                    default:
                        say("= unknown command " + w[0]);
                }
            } catch (Exception e) {
                say("= error " + e);
            }
        }
        node.close();
    }

    interface Handler {
        void handle(OtpErlangObject message) throws Exception;
    }

    static void serve(OtpMbox mbox, Handler handler) {
        Thread t = new Thread(() -> {
            while (true) {
                try {
                    handler.handle(mbox.receive());
                } catch (OtpErlangExit e) {
                    say("! exit " + show(e.reason()) + " from " + show(e.pid()) + " to " + mbox.getName());
                } catch (Exception e) {
                    say("! error " + mbox.getName() + " " + e);
                    return;
                }
            }
        });
        t.setDaemon(true);
        t.start();
    }

    static void echo(OtpErlangObject m) {
        if (m instanceof OtpErlangTuple && ((OtpErlangTuple) m).arity() == 2
                && ((OtpErlangTuple) m).elementAt(0) instanceof OtpErlangPid) {
            OtpErlangTuple t = (OtpErlangTuple) m;
            echo.send((OtpErlangPid) t.elementAt(0), tuple(new OtpErlangAtom("echo"), t.elementAt(1)));
        } else {
            say("! echo ignored " + show(m));
        }
    }

    // The calls OTP's rpc sends to a rex: {'$gen_call', {Pid, Tag}, {call, M, F, A, GL}} (rpc:call
    // before OTP 25, rpc:block_call) and the C-node form {Pid, {call, M, F, A, GL}}.
    static void rex(OtpErlangObject m) {
        say("! rex " + show(m));
        if (!(m instanceof OtpErlangTuple)) return;
        OtpErlangTuple t = (OtpErlangTuple) m;
        if (t.arity() == 3 && t.elementAt(0).equals(new OtpErlangAtom("$gen_call"))) {
            OtpErlangTuple from = (OtpErlangTuple) t.elementAt(1);
            rex.send((OtpErlangPid) from.elementAt(0), tuple(from.elementAt(1), apply((OtpErlangTuple) t.elementAt(2))));
        } else if (t.arity() == 2 && t.elementAt(0) instanceof OtpErlangPid) {
            rex.send((OtpErlangPid) t.elementAt(0), tuple(new OtpErlangAtom("rex"), apply((OtpErlangTuple) t.elementAt(1))));
        }
    }

    static OtpErlangObject apply(OtpErlangTuple call) {
        OtpErlangAtom m = (OtpErlangAtom) call.elementAt(1), f = (OtpErlangAtom) call.elementAt(2);
        OtpErlangList a = (OtpErlangList) call.elementAt(3);
        if (m.atomValue().equals("java") && f.atomValue().equals("echo") && a.arity() == 1) return a.elementAt(0);
        if (m.atomValue().equals("java") && f.atomValue().equals("node") && a.arity() == 0) return new OtpErlangAtom(node.node());
        OtpErlangObject undef = tuple(new OtpErlangAtom("undef"),
                new OtpErlangList(tuple(m, f, a, new OtpErlangList())));
        return tuple(new OtpErlangAtom("badrpc"), tuple(new OtpErlangAtom("EXIT"), undef));
    }

    static void groupLeader(OtpErlangObject m) {
        OtpErlangTuple t = (OtpErlangTuple) m;  // {io_request, From, ReplyAs, Request}
        say("! io " + show(t.elementAt(3)));
        gl.send((OtpErlangPid) t.elementAt(1), tuple(new OtpErlangAtom("io_reply"), t.elementAt(2), new OtpErlangAtom("ok")));
    }

    static OtpErlangTuple tuple(OtpErlangObject... items) {
        return new OtpErlangTuple(items);
    }

    static OtpErlangObject[] args(String[] w, int from) {
        List<OtpErlangObject> out = new ArrayList<>();
        for (int i = from; i < w.length; i++) out.add(arg(w[i]));
        return out.toArray(new OtpErlangObject[0]);
    }

    static OtpErlangObject arg(String word) {
        if (word.matches("-?[0-9]+")) return new OtpErlangLong(Long.parseLong(word));
        if (word.startsWith("b:")) return new OtpErlangBinary(word.substring(2).getBytes());
        return new OtpErlangAtom(word);
    }

    // Erlang's own printing for what the tests compare (Jinterface prints binaries as #Bin<N>)
    static String show(OtpErlangObject o) {
        if (o instanceof OtpErlangBinary) {  // one line per event: newlines shown as \n
            return "<<\"" + new String(((OtpErlangBinary) o).binaryValue()).replace("\n", "\\n") + "\">>";
        }
        if (o instanceof OtpErlangTuple) {
            StringBuilder b = new StringBuilder("{");
            OtpErlangObject[] items = ((OtpErlangTuple) o).elements();
            for (int i = 0; i < items.length; i++) b.append(i > 0 ? "," : "").append(show(items[i]));
            return b.append("}").toString();
        }
        if (o instanceof OtpErlangList) {
            OtpErlangList l = (OtpErlangList) o;
            StringBuilder b = new StringBuilder("[");
            OtpErlangObject[] items = l.elements();
            for (int i = 0; i < items.length; i++) b.append(i > 0 ? "," : "").append(show(items[i]));
            if (!l.isProper()) b.append("|").append(show(l.getLastTail()));
            return b.append("]").toString();
        }
        if (o instanceof OtpErlangPid) return "#Pid<" + ((OtpErlangPid) o).node() + ">";
        if (o instanceof OtpErlangRef) return "#Ref<" + ((OtpErlangRef) o).node() + ">";
        return String.valueOf(o);
    }
}

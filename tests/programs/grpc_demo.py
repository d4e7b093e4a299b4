#!/usr/bin/env python3
"""gRPC server and client for the tracer integration tests.

Uses grpcio's generic handlers and stubs on raw bytes, so no generated code
(and no grpcio-tools) is needed. The service is ``demo.Greeter``:

    SayHello        unary: echoes the request.
    Fail            unary: aborts with the status named by the request bytes
                    (e.g. b"NOT_FOUND", b"INTERNAL").
    StreamHellos    server streaming: answers with 3 messages.
    CollectHellos   client streaming: joins the requests into one answer.
    Chat            bidirectional streaming: echoes every request.

Usage:
    grpc_demo.py server PORT
        Serve on 127.0.0.1:PORT; prints "listening PORT" when ready and runs
        until SIGTERM/SIGINT.
    grpc_demo.py client PORT SCENARIO N [SCENARIO N ...]
        On one channel, run N calls of each scenario in the order given.
        Scenarios: unary, notfound, internal, server_stream, client_stream,
        bidi. Prints one line per call:
            call SCENARIO INDEX CODE START_NS END_NS
        with CODE the gRPC status name and the times in wall-clock
        nanoseconds. Exits 1 if a call ended with an unexpected status.
    grpc_demo.py client PORT long INTERVAL_MS
        On one channel, call SayHello and CollectHellos (one message)
        alternately, one call every INTERVAL_MS, until a line arrives on
        stdin or stdin closes; prints the same per-call lines, then "done".

Environment:
    GRPC_DEMO_TRACEPARENT  when set, every client call carries it as
                           `traceparent` metadata.
"""

import os
import signal
import sys
import threading
import time

import grpc

SERVICE = "demo.Greeter"


def now_ns():
    return time.time_ns()


# ---------------------------------------------------------------------------
# server


def say_hello(request, context):
    return b"hello " + request


def fail(request, context):
    name = request.decode("ascii", "replace")
    code = getattr(grpc.StatusCode, name, grpc.StatusCode.INVALID_ARGUMENT)
    context.abort(code, "failing with %s as asked" % name)


def stream_hellos(request, context):
    for i in range(3):
        yield b"hello %d " % i + request


def collect_hellos(request_iterator, context):
    return b"|".join(request_iterator)


def chat(request_iterator, context):
    for msg in request_iterator:
        yield b"echo " + msg


def serve(port):
    from concurrent import futures

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "StreamHellos": grpc.unary_stream_rpc_method_handler(stream_hellos),
            "CollectHellos": grpc.stream_unary_rpc_method_handler(collect_hellos),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port("127.0.0.1:%d" % port)
    if bound != port:
        print("could not bind 127.0.0.1:%d" % port, file=sys.stderr, flush=True)
        sys.exit(1)
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("listening %d" % port, flush=True)
    while not stop.wait(0.2):
        pass
    server.stop(grace=None).wait()


# ---------------------------------------------------------------------------
# client


def open_channel(port):
    return grpc.insecure_channel(
        "127.0.0.1:%d" % port,
        options=[("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)],
    )


def metadata():
    tp = os.environ.get("GRPC_DEMO_TRACEPARENT")
    return [("traceparent", tp)] if tp else None


class Stubs:
    def __init__(self, channel):
        p = "/" + SERVICE + "/"
        self.say_hello = channel.unary_unary(p + "SayHello")
        self.fail = channel.unary_unary(p + "Fail")
        self.stream_hellos = channel.unary_stream(p + "StreamHellos")
        self.collect_hellos = channel.stream_unary(p + "CollectHellos")
        self.chat = channel.stream_stream(p + "Chat")


def run_call(stubs, scenario, i):
    """Runs one call; returns the status code name it ended with."""
    md = metadata()
    payload = b"call-%d" % i
    try:
        if scenario == "unary":
            reply = stubs.say_hello(payload, metadata=md, timeout=10)
            assert reply == b"hello " + payload, reply
        elif scenario == "notfound":
            stubs.fail(b"NOT_FOUND", metadata=md, timeout=10)
        elif scenario == "internal":
            stubs.fail(b"INTERNAL", metadata=md, timeout=10)
        elif scenario == "server_stream":
            replies = list(stubs.stream_hellos(payload, metadata=md, timeout=10))
            assert len(replies) == 3, replies
        elif scenario == "client_stream":
            parts = [payload + b"-%d" % k for k in range(3)]
            reply = stubs.collect_hellos(iter(parts), metadata=md, timeout=10)
            assert reply == b"|".join(parts), reply
        elif scenario == "bidi":
            parts = [payload + b"-%d" % k for k in range(3)]
            replies = list(stubs.chat(iter(parts), metadata=md, timeout=10))
            assert replies == [b"echo " + p for p in parts], replies
        else:
            raise SystemExit("unknown scenario %r" % scenario)
    except grpc.RpcError as e:
        return e.code().name
    return "OK"


EXPECTED = {"notfound": "NOT_FOUND", "internal": "INTERNAL"}


def run_client(port, plan):
    channel = open_channel(port)
    grpc.channel_ready_future(channel).result(timeout=10)
    stubs = Stubs(channel)
    ok = True
    for scenario, n in plan:
        for i in range(n):
            start = now_ns()
            code = run_call(stubs, scenario, i)
            end = now_ns()
            print("call %s %d %s %d %d" % (scenario, i, code, start, end), flush=True)
            if code != EXPECTED.get(scenario, "OK"):
                ok = False
    channel.close()
    sys.exit(0 if ok else 1)


def run_long(port, interval_ms):
    """Calls SayHello and CollectHellos alternately on one channel until
    stdin yields "stop" or closes. After a "phase2" line, every third call is
    StreamHellos, a method this connection has not used before."""
    channel = open_channel(port)
    grpc.channel_ready_future(channel).result(timeout=10)
    stubs = Stubs(channel)
    stop = threading.Event()
    phase2 = threading.Event()

    def watch_stdin():
        for line in sys.stdin:
            if line.strip() == "phase2":
                phase2.set()
            else:
                break
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    i = 0
    ok = True
    while not stop.is_set():
        if phase2.is_set() and i % 3 == 2:
            scenario = "server_stream"
        else:
            scenario = "unary" if i % 2 == 0 else "client_stream"
        start = now_ns()
        code = run_call(stubs, scenario, i)
        end = now_ns()
        print("call %s %d %s %d %d" % (scenario, i, code, start, end), flush=True)
        ok = ok and code == "OK"
        i += 1
        stop.wait(interval_ms / 1000.0)
    print("done", flush=True)
    channel.close()
    sys.exit(0 if ok else 1)


def main(argv):
    if len(argv) >= 3 and argv[1] == "server":
        serve(int(argv[2]))
    elif len(argv) == 5 and argv[1] == "client" and argv[3] == "long":
        run_long(int(argv[2]), int(argv[4]))
    elif len(argv) >= 5 and argv[1] == "client" and len(argv) % 2 == 1:
        plan = [(argv[k], int(argv[k + 1])) for k in range(3, len(argv), 2)]
        run_client(int(argv[2]), plan)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)

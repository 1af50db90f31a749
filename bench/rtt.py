#!/usr/bin/env python3
"""A TCP round trip between two processes, for comparing with the latency a
mirrored write adds at queue depth 1.

    rtt.py COUNT sleep|poll              # over loopback, to a child process
    rtt.py COUNT sleep|poll HOST:PORT    # to a server started as below
    rtt.py serve HOST PORT sleep|poll    # answers one client until it ends

The client sends a 4 KiB + 48-byte request (a replicated 4 KiB write's
size), the server answers with 48 bytes, COUNT times, one at a time. With
`sleep` both block in recv between messages, as a thread that goes idle
does; with `poll` both retry a non-blocking recv until data is there. Prints
the mean round trip in µs. The server form lets the two ends run in
different network namespaces (`ip netns exec`).
"""
import os
import socket
import sys
import time

REQUEST = 4096 + 48
ANSWER = 48


def recv_exact(s, n, poll):
    got = bytearray()
    while len(got) < n:
        try:
            chunk = s.recv(n - len(got), socket.MSG_DONTWAIT if poll else 0)
        except BlockingIOError:
            continue
        if not chunk:
            return None
        got += chunk
    return got


def answer(listener, poll):
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reply = b"a" * ANSWER
    while recv_exact(conn, REQUEST, poll) is not None:
        conn.sendall(reply)


def mode_of(arg):
    if arg not in ("sleep", "poll"):
        sys.exit("rtt.py: the mode is sleep or poll")
    return arg == "poll"


def main():
    if sys.argv[1] == "serve":
        host, port, poll = sys.argv[2], int(sys.argv[3]), mode_of(sys.argv[4])
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1)
        answer(listener, poll)
        return
    count, poll = int(sys.argv[1]), mode_of(sys.argv[2])
    child = None
    if len(sys.argv) > 3:
        host, port = sys.argv[3].rsplit(":", 1)
        for _ in range(100):  # the server may still be starting
            try:
                s = socket.create_connection((host, int(port)))
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        else:
            sys.exit(f"rtt.py: nothing answers at {sys.argv[3]}")
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        child = os.fork()
        if child == 0:
            answer(listener, poll)
            os._exit(0)
        s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"r" * REQUEST
    total = 0
    for _ in range(count):
        t = time.perf_counter_ns()
        s.sendall(request)
        recv_exact(s, ANSWER, poll)
        total += time.perf_counter_ns() - t
    s.close()
    if child is not None:
        os.waitpid(child, 0)
    print(f"{total / count / 1000:.1f}")


if __name__ == "__main__":
    main()

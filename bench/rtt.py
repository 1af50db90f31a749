#!/usr/bin/env python3
"""A loopback TCP round trip between two processes, for comparing with the
latency a mirrored write adds at queue depth 1.

    rtt.py COUNT sleep|poll

The parent sends a 4 KiB + 48-byte request (a replicated 4 KiB write's
size), the child answers with 48 bytes, COUNT times, one at a time. With
`sleep` both block in recv between messages, as a thread that goes idle
does; with `poll` both retry a non-blocking recv until data is there. Prints
the mean round trip in µs.
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


def main():
    count, mode = int(sys.argv[1]), sys.argv[2]
    if mode not in ("sleep", "poll"):
        sys.exit("rtt.py: the mode is sleep or poll")
    poll = mode == "poll"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        answer = b"a" * ANSWER
        while recv_exact(conn, REQUEST, poll) is not None:
            conn.sendall(answer)
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
    os.waitpid(child, 0)
    print(f"{total / count / 1000:.1f}")


if __name__ == "__main__":
    main()

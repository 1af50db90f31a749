#!/usr/bin/env python3
"""Queue-depth-1 latency probe over iSCSI using libiscsi's synchronous API.

    lat.py read|write URL SECONDS SPAN_BYTES

Issues 4 KiB READ(10) or WRITE(10) commands one at a time at uniformly random
4 KiB-aligned offsets within the first SPAN_BYTES of the LUN for SECONDS and
prints "count avg_us p50_us p99_us". Each sample is the wall time of one
iscsi_*_sync call, so it includes this client's own overhead (a few
microseconds of Python and libiscsi), the same for every target.
"""
import ctypes
import random
import re
import sys
import time

ISCSI_SESSION_NORMAL = 2
ISCSI_HEADER_DIGEST_NONE = 0
BLOCK = 512
IO = 4096


def main():
    op, url, seconds, span = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    m = re.match(r"iscsi://([^/]+)/([^/]+)/(\d+)$", url)
    if not m:
        sys.exit(f"lat.py: cannot parse {url}")
    portal, iqn, lun = m.group(1), m.group(2), int(m.group(3))

    lib = ctypes.CDLL("libiscsi.so.7")
    lib.iscsi_create_context.restype = ctypes.c_void_p
    lib.iscsi_create_context.argtypes = [ctypes.c_char_p]
    lib.iscsi_get_error.restype = ctypes.c_char_p
    lib.iscsi_get_error.argtypes = [ctypes.c_void_p]
    for f in ("iscsi_set_targetname",):
        getattr(lib, f).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.iscsi_set_session_type.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.iscsi_set_header_digest.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.iscsi_full_connect_sync.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.iscsi_logout_sync.argtypes = [ctypes.c_void_p]
    lib.iscsi_destroy_context.argtypes = [ctypes.c_void_p]
    lib.scsi_free_scsi_task.argtypes = [ctypes.c_void_p]
    ci = ctypes.c_int
    lib.iscsi_read10_sync.restype = ctypes.POINTER(ci)  # task->status is the first field
    lib.iscsi_read10_sync.argtypes = [ctypes.c_void_p, ci, ctypes.c_uint32, ctypes.c_uint32,
                                      ci, ci, ci, ci, ci, ci]
    lib.iscsi_write10_sync.restype = ctypes.POINTER(ci)
    lib.iscsi_write10_sync.argtypes = [ctypes.c_void_p, ci, ctypes.c_uint32, ctypes.c_char_p,
                                       ctypes.c_uint32, ci, ci, ci, ci, ci, ci]

    ctx = lib.iscsi_create_context(b"iqn.2026-11.io.tandem:bench-lat")
    lib.iscsi_set_targetname(ctx, iqn.encode())
    lib.iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL)
    lib.iscsi_set_header_digest(ctx, ISCSI_HEADER_DIGEST_NONE)
    if lib.iscsi_full_connect_sync(ctx, portal.encode(), lun) != 0:
        sys.exit("lat.py: login failed: " + lib.iscsi_get_error(ctx).decode(errors="replace"))

    data = bytes(random.getrandbits(8) for _ in range(IO))
    slots = span // IO
    rnd = random.Random(1)
    clock = time.perf_counter_ns
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(64):
            lba = rnd.randrange(slots) * (IO // BLOCK)
            t0 = clock()
            if op == "write":
                task = lib.iscsi_write10_sync(ctx, lun, lba, data, IO, BLOCK, 0, 0, 0, 0, 0)
            else:
                task = lib.iscsi_read10_sync(ctx, lun, lba, IO, BLOCK, 0, 0, 0, 0, 0)
            t1 = clock()
            if not task or task[0] != 0:
                sys.exit(f"lat.py: {op} at lba {lba} failed: "
                         + lib.iscsi_get_error(ctx).decode(errors="replace"))
            lib.scsi_free_scsi_task(task)
            samples.append(t1 - t0)
    lib.iscsi_logout_sync(ctx)
    lib.iscsi_destroy_context(ctx)

    samples.sort()
    n = len(samples)
    avg = sum(samples) / n / 1000
    p50 = samples[n // 2] / 1000
    p99 = samples[min(n - 1, (n * 99) // 100)] / 1000
    print(f"{n} {avg:.1f} {p50:.1f} {p99:.1f}")


if __name__ == "__main__":
    main()

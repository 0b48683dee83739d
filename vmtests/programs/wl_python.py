#!/usr/bin/python3
"""wl_python STATEDIR: a multi-threaded, stateful Python program with the vmtests workload
contract (STATEDIR/ready, an advancing STATEDIR/counter, and on SIGTERM a self-check whose
verdict goes to STATEDIR/result as PASS or FAIL: <what>).

State kept while it runs:
- 4 worker threads; worker k extends its own SHA-256 chain (h = sha256(h + k + i)) and appends
  each step's first byte to its own bytearray, under a shared lock it also adds 1 to a shared
  dict's total;
- a waiter thread blocked in a Condition until the main thread notifies it at the end;
- a 32 MiB bytearray filled with a position-dependent pattern once;
- STATEDIR/counter, open all along and rewritten in place.
At SIGTERM every chain is recomputed from its length and compared (the digest and every saved
byte), the shared total must equal the steps of all workers, the pattern must be intact, the
waiter must answer the notification, and the pid must be the one at start.
"""
import hashlib
import os
import signal
import sys
import threading
import time

WORKERS = 4
BIG = 32 << 20

state_dir = sys.argv[1]
stop = threading.Event()
lock = threading.Lock()
shared = {"total": 0}
chains = [{"h": b"seed", "steps": 0, "bytes": bytearray()} for _ in range(WORKERS)]
cond = threading.Condition()
answered = []
start_pid = os.getpid()
counter = 0


def write(name, text):
    # The pid as /proc shows it (the host's, also for a copy in a new pid namespace), so a copy
    # running beside its original never shares the temporary file.
    tmp = os.path.join(state_dir, f"{name}.{os.readlink('/proc/self')}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(state_dir, name))


def step(h, k, i):
    return hashlib.sha256(h + bytes([k]) + i.to_bytes(8, "little")).digest()


def worker(k):
    c = chains[k]
    while not stop.is_set():
        for _ in range(50):
            c["h"] = step(c["h"], k, c["steps"])
            c["bytes"].append(c["h"][0])
            c["steps"] += 1
            with lock:
                shared["total"] += 1
        time.sleep(0.002)


def waiter():
    with cond:
        while not stop.is_set():
            cond.wait()
    answered.append(True)


def pattern_byte(i):
    return (i * 2654435761 >> 7) & 0xFF


big = bytearray(pattern_byte(i) for i in range(256)) * (BIG // 256)


def verify():
    fails = []
    if os.getpid() != start_pid:
        fails.append(f"pid is {os.getpid()}, was {start_pid}")
    total = 0
    for k, c in enumerate(chains):
        h = b"seed"
        for i in range(c["steps"]):
            h = step(h, k, i)
            if c["bytes"][i] != h[0]:
                fails.append(f"worker {k} byte {i} is {c['bytes'][i]}, expected {h[0]}")
                break
        if h != c["h"]:
            fails.append(f"worker {k} chain digest differs after {c['steps']} steps")
        if c["steps"] == 0:
            fails.append(f"worker {k} never ran")
        total += c["steps"]
    if shared["total"] != total:
        fails.append(f"shared total {shared['total']} != {total} steps")
    for i in range(0, BIG, 4093):
        if big[i] != pattern_byte(i % 256):
            fails.append(f"pattern byte {i} is {big[i]}")
            break
    return fails


def on_term(signum, frame):
    stop.set()


signal.signal(signal.SIGTERM, on_term)
threads = [threading.Thread(target=worker, args=(k,)) for k in range(WORKERS)]
wait_thread = threading.Thread(target=waiter)
for t in threads + [wait_thread]:
    t.start()
# The counter file stays open and is rewritten in place (fixed width), so a dump never finds
# a temporary file half-way through a rename (with the GIL, that window is milliseconds).
counter_fd = os.open(os.path.join(state_dir, "counter"), os.O_WRONLY | os.O_CREAT, 0o644)


def publish():
    os.pwrite(counter_fd, f"{counter:020d}\n".encode(), 0)


publish()
write("ready", f"{start_pid}\n")
while not stop.is_set():
    counter += 1
    publish()
    stop.wait(0.05)
for t in threads:
    t.join()
with cond:
    cond.notify_all()
wait_thread.join(10)
fails = verify()
if not answered:
    fails.append("the waiter did not answer the notification")
write("result", "PASS\n" if not fails else "FAIL: " + "; ".join(fails) + "\n")
sys.exit(1 if fails else 0)

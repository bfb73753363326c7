"""A hostile neighbour: a temp DAG runs with honest workers while an unprivileged local
user attacks the manager, the workers and their files at the same time.

The DAG (``--tasks``, 500 by default): a fifth of the tasks make a temp each, the rest
each read two of them and print a digest. It runs once undisturbed (the baseline) and
once while a process running as ``nobody`` (``--user``) does all of this at once:

- holds hundreds of connections to the manager that never speak, and keeps opening more;
- sends oversized first frames and garbage;
- tries to join as a worker without the password, again and again (Hello then close);
- asks every transfer server (the manager's and the workers') for files, with no
  token and with forged ones;
- walks the workers' directories and tries to read every file in them.

Printed: whether the results equal the baseline's, how many bytes of any file the
attacker could read, how many of its requests were served, the manager's open
descriptors and memory before and after, and both makespans. Needs root (to run the
attacker as another user). ``python bench/bench_hostile.py [--tasks 500]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import struct
import subprocess
import sys
import tempfile
import time

import vinework as vine
from vinework.protocol import PROTOCOL_VERSION, GetFile, Hello, encode
from vinework.protocol.auth import make_token

ATTACKER = r'''
import json, os, socket, sys, time
cfg = json.loads(sys.argv[1])
frames = {k: bytes.fromhex(v) for k, v in cfg["frames"].items()}
gets = [bytes.fromhex(g) for g in cfg["gets"]]
held = []
stats = {"held": 0, "served": 0, "refused": 0, "read_bytes": 0, "read_tries": 0,
         "readable_files": 0, "rounds": 0}
def connect(port):
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return None
while True:
    for _ in range(20):  # connections that never speak
        s = connect(cfg["port"])
        if s is not None:
            held.append(s)
    while len(held) > 600:
        held.pop(0).close()
    for junk in frames.values():  # an oversized frame, garbage, a Hello without the password
        s = connect(cfg["port"])
        if s is not None:
            try:
                s.sendall(junk)
                s.recv(4096)
            except OSError:
                pass
            s.close()
    for port in cfg["transfer_ports"]:  # files asked for with no token or a forged one
        for g in gets:
            s = connect(port)
            if s is None:
                continue
            got = 0
            try:
                s.sendall(g)
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    got += len(b)
            except OSError:
                pass
            s.close()
            stats["served" if got > 1000 else "refused"] += 1
    for top in cfg["dirs"]:  # every file under the workers' and the run's directories
        for root, dirs, files in os.walk(top):
            for f in files:
                stats["read_tries"] += 1
                try:
                    with open(os.path.join(root, f), "rb") as fh:
                        n = len(fh.read())
                    stats["read_bytes"] += n
                    stats["readable_files"] += 1
                except OSError:
                    pass
    stats["held"] = len(held)
    stats["rounds"] += 1
    with open(cfg["stats"] + ".tmp", "w") as out:
        json.dump(stats, out)
    os.replace(cfg["stats"] + ".tmp", cfg["stats"])
'''


def _dag(m: vine.Manager, n: int) -> dict[int, str]:
    producers = max(2, n // 5)
    temps = []
    for i in range(producers):
        f = m.declare_temp()
        t = vine.Task(f"seq {i} {i + 20000} > out")
        t.set_cores(1)
        t.add_output(f, "out")
        m.submit(t)
        temps.append(f)
    want: dict[int, tuple[int, int]] = {}
    for j in range(n - producers):
        a, b = j % producers, (j * 7 + 3) % producers
        t = vine.Task("cat a b | md5sum")
        t.set_cores(1)
        t.add_input(temps[a], "a")
        t.add_input(temps[b], "b")
        want[m.submit(t)] = (a, b)
    got: dict[int, str] = {}
    back = 0
    while back < n:
        t = m.wait(60)
        if t is None:
            raise RuntimeError(f"only {back} of {n} tasks came back")
        back += 1
        if not t.successful():
            raise RuntimeError(f"task {t.id}: {t.result} {t.output!r}")
        if t.id in want:
            got[t.id] = t.output.split()[0]
    return {i: got[tid] for i, tid in enumerate(sorted(want))}


def _expected(n: int) -> dict[int, str]:
    producers = max(2, n // 5)

    def content(i: int) -> bytes:
        return "".join(f"{k}\n" for k in range(i, i + 20001)).encode()
    return {j: hashlib.md5(content(j % producers) + content((j * 7 + 3) % producers)
                           ).hexdigest() for j in range(n - producers)}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _run(n: int, base: str, attack_user: str | None) -> dict[str, object]:
    pw = os.path.join(base, "pw")
    with open(pw, "w") as f:
        f.write(os.urandom(16).hex())
    os.chmod(pw, 0o600)
    m = vine.Manager(port=0, run_info_path=os.path.join(base, "run"), shutdown=True)
    m.set_password_file(pw)
    dirs = [os.path.join(base, f"w{i}") for i in range(2)]
    workers = [subprocess.Popen([sys.executable, "-m", "vinework", "worker", "localhost",
                                 str(m.port), "--cores", "2", "--password", pw,
                                 "--workdir", d], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for d in dirs]
    attacker = None
    stats_file = f"/tmp/vinework-attack-{os.getpid()}-{int(time.time())}.json"
    try:
        while m.workers_connected < 2:
            time.sleep(0.05)
        fds0, rss0 = _fds(), _rss()
        if attack_user:
            ports = [w.transfer_port for w in m._state.workers.values()]
            hello = encode(Hello(version=PROTOCOL_VERSION, hostname="evil", cores=64,
                                 memory=64000, disk=64000, gpus=0, transfer_port=1,
                                 cached=[], nonce="ab" * 16))
            names = ["temp-0-1", "file-x", "buffer-y", "pyout-1-0"]
            gets = [encode(GetFile(name=nm, token=tok)).hex() for nm in names
                    for tok in ("", make_token(b"guessed", nm), "9999999999.00")]
            cfg = {"port": m.port, "transfer_ports": ports + [m._server.transfer.port],
                   "dirs": dirs + [os.path.join(base, "run")], "stats": stats_file,
                   "frames": {"big": (struct.pack(">I", 1 << 30) + b"x" * 64).hex(),
                              "http": b"GET / HTTP/1.0\r\n\r\n".hex(),
                              "hello": hello.hex()},
                   "gets": gets}
            u = pwd.getpwnam(attack_user)
            attacker = subprocess.Popen(
                ["/usr/bin/python3", "-c", ATTACKER, json.dumps(cfg)], user=u.pw_uid,
                group=u.pw_gid, extra_groups=[], stdout=subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin"}, cwd="/")
            time.sleep(2)  # let the attack start
        t0 = time.monotonic()
        results = _dag(m, n)
        secs = time.monotonic() - t0
        attack: dict[str, int] = {}
        if attack_user:
            with open(stats_file) as f:
                attack = json.load(f)
        out: dict[str, object] = {"results": results, "seconds": secs, "attack": attack,
                                  "fds_before": fds0,
                                  "fds_after": _fds(), "rss_before": rss0,
                                  "rss_after": _rss(), "rejected": m._server.rejected,
                                  "workers_joined": m.stats.workers_joined}
        return out
    finally:
        if attacker is not None:
            attacker.kill()
            attacker.wait()
        m.close()
        for w in workers:
            try:
                w.wait(10)
            except subprocess.TimeoutExpired:
                w.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--user", default="nobody")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_hostile.py needs root (it runs the attacker as another user)")
    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
        os.chmod(d2, 0o755)  # the attacker may look around, as any local user could
        clean = _run(a.tasks, d1, None)
        hostile = _run(a.tasks, d2, a.user)
    expected = _expected(a.tasks)
    print(f"results: clean run {'correct' if clean['results'] == expected else 'WRONG'}, "
          f"attacked run {'identical' if hostile['results'] == clean['results'] else 'DIFFERENT'}")
    print(f"makespan: clean {clean['seconds']:.1f} s, attacked {hostile['seconds']:.1f} s "
          f"({float(hostile['seconds']) / float(clean['seconds']):.2f}x)")  # type: ignore[arg-type]
    print(f"manager descriptors: {hostile['fds_before']} -> {hostile['fds_after']}; "
          f"memory {hostile['rss_before']:.0f} -> {hostile['rss_after']:.0f} MB; "
          f"connections rejected {hostile['rejected']}; workers joined "
          f"{hostile['workers_joined']} (2 honest)")
    at = hostile["attack"]
    print(f"attacker ({a.user}): {at['rounds']} rounds; transfer requests served "
          f"{at['served']} of {at['served'] + at['refused']}; files readable "
          f"{at['readable_files']} of {at['read_tries']} tries ({at['read_bytes']} bytes); "
          f"silent connections held {at['held']}")  # type: ignore[index]


if __name__ == "__main__":
    main()

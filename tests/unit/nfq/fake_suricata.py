"""A stand-in for ``suricata -c CONF -q N``: reads the unix-command socket and eve.json
paths from the rendered suricata.yaml, speaks the command protocol (version handshake,
``uptime``, ``version``, ``ruleset-stats``, ``dump-counters``, ``reload-rules``,
``shutdown``) and writes eve.json lines: a stats record
at start and an alert after each reload. ``FAKE_SURICATA_EXIT=N`` exits with N at once."""

import json
import os
import socket
import sys
import time

import yaml

if os.environ.get("FAKE_SURICATA_EXIT"):
    sys.exit(int(os.environ["FAKE_SURICATA_EXIT"]))
with open(sys.argv[sys.argv.index("-c") + 1]) as conf_file:
    conf = yaml.safe_load(conf_file)
queues = [int(sys.argv[i + 1]) for i, a in enumerate(sys.argv) if a == "-q"]
eve_path = conf["outputs"][0]["eve-log"]["filename"]
sock_path = conf["unix-command"]["filename"]
started = time.time()


def eve(rec: dict) -> None:
    with open(eve_path, "a") as fh:
        fh.write(json.dumps(rec) + "\n")


eve({"event_type": "stats", "stats": {"queues": queues}})
if os.path.exists(sock_path):
    os.unlink(sock_path)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sock_path)
srv.listen(4)
reloads = 0
while True:
    conn, _ = srv.accept()
    buf = b""
    with conn:
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if "version" in msg:
                    reply = {"return": "OK"}
                elif msg["command"] == "uptime":
                    reply = {"return": "OK", "message": int(time.time() - started)}
                elif msg["command"] == "version":
                    reply = {"return": "OK", "message": "7.0.10-fake"}
                elif msg["command"] == "ruleset-stats":
                    reply = {
                        "return": "OK",
                        "message": [{"id": 0, "rules_loaded": 3 + reloads, "rules_failed": 0}],
                    }
                elif msg["command"] == "dump-counters":
                    reply = {
                        "return": "OK",
                        "message": {
                            "decoder": {"pkts": 10, "bytes": 1000},
                            "ips": {"accepted": 9, "blocked": 1, "rejected": 0},
                            "detect": {"alert": reloads},
                        },
                    }
                elif msg["command"] == "reload-rules":
                    reloads += 1
                    eve(
                        {
                            "event_type": "alert",
                            "src_ip": "10.0.1.10",
                            "src_port": 1,
                            "dest_ip": "198.51.100.10",
                            "dest_port": 80,
                            "alert": {
                                "action": "blocked",
                                "signature_id": 100 + reloads,
                                "signature": "after reload",
                            },
                        }
                    )
                    reply = {"return": "OK", "message": "done"}
                elif msg["command"] == "shutdown":
                    conn.sendall(b'{"return": "OK", "message": "Closing Suricata"}')
                    sys.exit(0)
                else:
                    reply = {"return": "NOK", "message": "Unknown command"}
                conn.sendall(json.dumps(reply).encode())  # no newline, like old versions

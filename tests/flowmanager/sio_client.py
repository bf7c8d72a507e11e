"""A python-socketio client driven over stdin/stdout, for gantry's flowmanager tests.

Commands arrive as JSON lines on stdin:
  {"op": "connect", "url": ..., "transports": ["polling"] | ["websocket"] | null}
  {"op": "emit", "event": ..., "data": ...}
  {"op": "transport"}   -> {"event": "_transport", "data": "polling" | "websocket"}
  {"op": "disconnect"}
Every event the server sends is printed as a JSON line {"event", "data", "t"}; the client's
own happenings are events whose names start with "_".
"""

import json
import sys
import threading
import time

import socketio

out_lock = threading.Lock()


def say(event, data=None):
    line = json.dumps({"event": event, "data": data, "t": time.time()})
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


sio = socketio.Client(reconnection=False)


@sio.event
def connect():
    say("_connected", {"sid": sio.sid, "transport": sio.transport()})


@sio.event
def connect_error(data):
    say("_connect_error", str(data))


@sio.event
def disconnect(*_reason):
    say("_disconnected")


@sio.on("*")
def any_event(event, data=None):
    say(event, data)


def main():
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "connect":
                sio.connect(cmd["url"], transports=cmd.get("transports"), wait_timeout=10)
            elif op == "emit":
                sio.emit(cmd["event"], cmd.get("data"))
            elif op == "transport":
                say("_transport", sio.transport())
            elif op == "disconnect":
                sio.disconnect()
        except Exception as e:  # reported, the test decides
            say("_failed", f"{op}: {e}")
    if sio.connected:
        sio.disconnect()


main()

#!/usr/bin/env python3
"""A counting proxy for scripts/bench-reads: listens on a unix socket, forwards every
connection to dockerd's socket and counts the HTTP requests clients send (request heads;
bodies of Content-Length bytes are skipped, a chunked body ends counting on that
connection). The count is rewritten to a file after each request.

Usage: bench-reads-proxy.py LISTEN_SOCKET DOCKERD_SOCKET COUNT_FILE
"""
import asyncio
import os
import sys

listen, target, count_file = sys.argv[1:4]
count = 0


def note(n):
    global count
    count += n
    tmp = count_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(count))
    os.replace(tmp, count_file)


async def pipe(r, w, counting):
    buf, skip, lost = b"", 0, False
    try:
        while True:
            data = await r.read(65536)
            if not data:
                break
            w.write(data)
            await w.drain()
            if not counting or lost:
                continue
            cut = min(skip, len(data))
            skip -= cut
            buf += data[cut:]
            while b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                note(1)
                lower = head.lower()
                if b"transfer-encoding: chunked" in lower:
                    lost = True
                    break
                length = 0
                for line in lower.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                now = min(length, len(buf))
                buf, skip = buf[now:], length - now
    except (ConnectionError, OSError):
        pass
    finally:
        w.close()


async def serve(cr, cw):
    try:
        dr, dw = await asyncio.open_unix_connection(target)
    except OSError:
        cw.close()
        return
    await asyncio.gather(pipe(cr, dw, True), pipe(dr, cw, False))


async def main():
    note(0)
    server = await asyncio.start_unix_server(serve, path=listen)
    async with server:
        await server.serve_forever()


asyncio.run(main())

#!/usr/bin/env python3
"""bench/idle_clients.py HOST PORT COUNT [--cookie C] [--concurrency N]

The load of bench/run's idle phase: COUNT TLS connections (ALPN http/1.1) to
HOST:PORT, each sends one keep-alive `GET /` and reads the whole answer, then
stays open and silent. Prints `READY <served> <failed>` once all are done, then
holds them until stdin closes (or a line arrives), closes them and exits.
Standard library only (asyncio + ssl); raises its own open-file limit.
"""
import argparse
import asyncio
import resource
import ssl
import sys


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        sys.exit(f"idle_clients: the open-file limit ({want}) is below the {need} connections asked for")


async def one(host, port, ctx, request, gate, held):
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost"), 30)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            status = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(reader.readexactly(length), 30)
            if status != b"200" or b"connection: close" in head.lower():
                writer.close()
                return False
            held.append(writer)
            return True
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            return False


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("count", type=int)
    ap.add_argument("--cookie", default="")
    ap.add_argument("--concurrency", type=int, default=100)
    args = ap.parse_args()
    raise_nofile(args.count + 64)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    cookie = f"Cookie: {args.cookie}\r\n" if args.cookie else ""
    request = f"GET / HTTP/1.1\r\nHost: localhost:{args.port}\r\n{cookie}\r\n".encode()
    gate = asyncio.Semaphore(args.concurrency)
    held = []
    results = await asyncio.gather(*(one(args.host, args.port, ctx, request, gate, held)
                                     for _ in range(args.count)))
    served = sum(results)
    print(f"READY {served} {len(results) - served}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    for writer in held:
        writer.close()
    print("CLOSED", flush=True)


if __name__ == "__main__":
    asyncio.run(main())

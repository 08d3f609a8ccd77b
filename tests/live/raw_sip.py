"""Send one raw SIP message over UDP and print the status lines received.

Run inside a test namespace: `python3 raw_sip.py BIND HOST PORT FILE
[--padded-bye-first | --colonless-bye-first | --in-dialog-probes]`.
FILE contains the message bytes as they go on the wire (no line-end
conversion), so tests can send malformed and binary messages. It waits
up to 3 s for responses, and prints each status line. A 200 to an INVITE
is acknowledged and the call ended with BYE, so no call is left behind.
"""

from __future__ import annotations

import socket
import sys
import time


def headers_of(message: bytes) -> list[tuple[str, str]]:
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    result = []
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        result.append((name.strip().lower(), value.strip()))
    return result


def end_call(sock: socket.socket, invite: bytes, ok: bytes, edge: tuple[str, int],
             probes: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> None:
    """Send ACK and BYE for an answered INVITE, through its Record-Route.

    `probes` are (method, extra header lines) requests sent in between.
    With probes, the status line of each response after the ACK is printed.
    """
    request = dict(headers_of(invite))
    response = headers_of(ok)
    values = dict(response)
    routes = [value for name, value in response if name == "record-route"]
    contact = values.get("contact", "").strip("<>").split(">")[0]
    via_host = request["via"].split()[1].split(";")[0]
    steps = [("ACK", ()), *probes, ("BYE", ())]
    for cseq, (method, extra_lines) in enumerate(steps, start=1):
        lines = [f"{method} {contact} SIP/2.0",
                 f"Via: SIP/2.0/UDP {via_host};branch=z9hG4bK{method}{cseq}x",
                 "Max-Forwards: 70", f"From: {request['from']}",
                 f"To: {values['to']}", f"Call-ID: {request['call-id']}",
                 f"CSeq: {cseq} {method}"]
        lines += [f"Route: {route}" for route in routes]
        lines += extra_lines
        lines += ["Content-Length: 0", "", ""]
        sock.sendto("\r\n".join(lines).encode(), edge)
        if method == "ACK":
            continue
        sock.settimeout(2.0)
        try:
            reply, _ = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if probes:
            print(reply.split(b"\r\n", 1)[0].decode("utf-8", "replace"), flush=True)


PROBES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "--padded-bye-first": (
        ("BYE", tuple(f"X-Pad-{n}: {'x' * 70}" for n in range(70))),),
    "--colonless-bye-first": (("BYE", ("ThisHeaderLineHasNoColon",)),),
    "--in-dialog-probes": (("OPTIONS", ()), ("INFO", ())),
}


def main() -> int:
    bind, host, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    probes = PROBES[sys.argv[5]] if len(sys.argv) > 5 else ()
    with open(path, "rb") as handle:
        data = handle.read()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((bind, 0))
        local_port = sock.getsockname()[1]
        data = data.replace(b"@PORT@", str(local_port).encode())
        sock.sendto(data, (host, port))
        deadline = time.monotonic() + 3.0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                reply, _ = sock.recvfrom(65535)
            except TimeoutError:
                break
            first = reply.split(b"\r\n", 1)[0].decode("utf-8", "replace")
            print(first, flush=True)
            if first.startswith("SIP/2.0 ") and not first.startswith("SIP/2.0 1"):
                if first.startswith("SIP/2.0 200") and data.startswith(b"INVITE "):
                    end_call(sock, data, reply, (host, port), probes)
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Publishes one message to NATS as an nkey user, as `nats --nkey SEED pub SUBJECT BODY` would,
for machines without the nats CLI (the cluster test publishes its trigger with it).

    python3 deploy/docker/nats-pub.py --server 127.0.0.1:4222 --seed-file trigger-default.nk \
        baton.trigger.default.cli '{"text": "Fix drift on production web servers"}'

The seed is read from the file (or from stdin with --seed-file -). Speaks the NATS client
protocol directly: INFO (its nonce), CONNECT signed with the seed's Ed25519 key, PUB, then
PING; exits 1 with the server's -ERR (a permissions violation, an authorization failure) if it
answers with one instead of PONG. Needs the `cryptography` package.
"""

import argparse
import base64
import json
import socket
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PREFIX_SEED = 18 << 3
PREFIX_USER = 20 << 3


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum of nkey encodings."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def b32decode(s: str) -> bytes:
    return base64.b32decode(s + "=" * (-len(s) % 8))


def user_key(seed: str):
    """The Ed25519 private key and the public nkey (`U…`) of a user seed (`SU…`)."""
    raw = b32decode(seed.strip())
    body, checksum = raw[:-2], int.from_bytes(raw[-2:], "little")
    if crc16(body) != checksum:
        sys.exit("nats-pub: the seed's checksum is wrong: is it an nkey seed (SU…)?")
    if body[0] & 0xF8 != PREFIX_SEED or ((body[0] & 0x07) << 5 | body[1] >> 3) != PREFIX_USER:
        sys.exit("nats-pub: not a user seed (it must start with SU)")
    key = Ed25519PrivateKey.from_private_bytes(body[2:34])
    pub = bytes([PREFIX_USER]) + key.public_key().public_bytes_raw()
    pub += crc16(pub).to_bytes(2, "little")
    return key, base64.b32encode(pub).decode().rstrip("=")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="127.0.0.1:4222", help="host:port")
    ap.add_argument("--seed-file", required=True, help="nkey seed file, or - for stdin")
    ap.add_argument("--header", action="append", default=[], help="Name: value (repeat)")
    ap.add_argument("subject")
    ap.add_argument("body")
    a = ap.parse_args()
    seed = sys.stdin.read() if a.seed_file == "-" else open(a.seed_file).read()
    key, public = user_key(seed)
    host, port = a.server.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        f = sock.makefile("rb")
        line = f.readline().decode()
        if not line.startswith("INFO "):
            sys.exit(f"nats-pub: expected INFO, got {line!r}")
        nonce = json.loads(line[5:]).get("nonce", "")
        sig = base64.urlsafe_b64encode(key.sign(nonce.encode())).decode().rstrip("=")
        connect = {"verbose": False, "pedantic": False, "headers": True, "nkey": public,
                   "sig": sig, "name": "nats-pub", "lang": "python", "version": "1"}
        body = a.body.encode()
        if a.header:
            hdr = ("NATS/1.0\r\n" + "".join(h + "\r\n" for h in a.header) + "\r\n").encode()
            pub = f"HPUB {a.subject} {len(hdr)} {len(hdr) + len(body)}\r\n".encode() + hdr + body
        else:
            pub = f"PUB {a.subject} {len(body)}\r\n".encode() + body
        sock.sendall(f"CONNECT {json.dumps(connect)}\r\n".encode() + pub + b"\r\nPING\r\n")
        while True:
            line = f.readline().decode().strip()
            if line == "PONG":
                return
            if line.startswith("-ERR"):
                sys.exit(f"nats-pub: the server refused: {line}")
            if not line:
                sys.exit("nats-pub: the server closed the connection")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks Starling's origin signatures in Kafka, as a consumer would.

An independent checker (confluent-kafka and cryptography from PyPI, no
Starling code): it reads a topic written by a sink with
`kafka.origin_proof = true`, groups the messages by the batch header they
carry, rebuilds each batch's event list from the events' own bytes, and
checks the origin's signature with the certificate beside it
(docs/events.md, "Checking the origin"). Prints one JSON object:
messages read, batches and events verified, messages of batches only
partly in the topic (a batch answered RETRY after some of its events were
written; they were resent under another header), and every failure.

  verify_origin.py --bootstrap 127.0.0.1:9092 --topic starling.events \
      --expect 5000 [--timeout 60]
"""

import argparse
import hashlib
import itertools
import json
import sys
import time
from collections import defaultdict

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

DOMAIN = b"starling.v1.batch\x00"


def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def fields(buf):
    """The top-level fields of a protobuf message: number -> last value
    (an int for varints, bytes for length-delimited fields)."""
    out, i = {}, 0
    while i < len(buf):
        key, i = varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 2:
            n, i = varint(buf, i)
            value, i = bytes(buf[i:i + n]), i + n
        elif wire == 1:
            value, i = bytes(buf[i:i + 8]), i + 8
        elif wire == 5:
            value, i = bytes(buf[i:i + 4]), i + 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
        out[field] = value
    return out


def parse_header(buf):
    """The fields of a starling.v1.BatchHeader."""
    names = {1: "host_id", 2: "batch_id", 3: "first_seq", 4: "last_seq",
             5: "event_count", 6: "list_len", 7: "list_sha256", 8: "signed_at_unix_ms"}
    out = {"host_id": "", "batch_id": 0, "first_seq": 0, "last_seq": 0,
           "event_count": 0, "list_len": 0, "list_sha256": b"", "signed_at_unix_ms": 0}
    for field, value in fields(buf).items():
        if field in names:
            out[names[field]] = value.decode() if field == 1 else value
    return out


def event_host_and_seq(payload):
    """The host id and sequence number a starling.v1.Event states in its
    own header (field 1: host_id 1, seq 2): the signed bytes, not the
    message's headers, which no signature covers."""
    header = fields(fields(payload).get(1, b""))
    return header.get(1, b"").decode(), header.get(2, 0)


def frame(payload):
    """An event framed as field 1 of an EventList."""
    n, head = len(payload), bytearray([0x0A])
    while True:
        if n < 0x80:
            head.append(n)
            return bytes(head) + payload
        head.append((n & 0x7F) | 0x80)
        n >>= 7


def verify_signature(cert, header, signature):
    key = cert.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, DOMAIN + header)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, DOMAIN + header, ec.ECDSA(hashes.SHA256()))
    else:
        raise InvalidSignature("unsupported key type")


def certificate_host(cert):
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("starling://node/"):
            return uri[len("starling://node/"):]
    return None


def read(bootstrap, topic, expect, timeout):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "verify-origin",
                         "enable.auto.commit": False})
    meta = consumer.list_topics(topic, timeout=30)
    parts = meta.topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    messages, deadline = [], time.time() + timeout
    while len(messages) < expect and time.time() < deadline:
        m = consumer.poll(0.5)
        if m is None or m.error():
            continue
        messages.append((m.key().decode(), dict(m.headers() or []), m.value()))
    consumer.close()
    return messages


def check(messages):
    failures, batches = [], defaultdict(list)
    for key, headers, payload in messages:
        missing = [h for h in ("starling-batch-header", "starling-batch-signature",
                               "starling-origin-certificate")
                   if h not in headers]
        if missing:
            failures.append(f"{key}: message without {missing}")
            continue
        try:
            event_host, seq = event_host_and_seq(payload)
        except (IndexError, ValueError, UnicodeDecodeError) as e:
            failures.append(f"{key}: an event that does not decode ({e})")
            continue
        group = (headers["starling-batch-header"], headers["starling-batch-signature"],
                 headers["starling-origin-certificate"])
        batches[group].append((key, headers, event_host, seq, payload))
    verified_batches = verified_events = incomplete = 0
    for (header_bytes, signature, cert_der), members in batches.items():
        header = parse_header(header_bytes)
        host = header["host_id"]
        cert = x509.load_der_x509_certificate(cert_der)
        where = f"{host} batch {header['batch_id']} ({header['first_seq']}..{header['last_seq']})"
        if certificate_host(cert) != host:
            failures.append(f"{where}: the certificate names {certificate_host(cert)!r}")
            continue
        try:
            verify_signature(cert, header_bytes, signature)
        except InvalidSignature:
            failures.append(f"{where}: the signature does not verify")
            continue
        fingerprint = hashlib.sha256(cert_der).hexdigest()
        by_seq = defaultdict(set)
        for key, headers, event_host, seq, payload in members:
            # The routing headers (kafka.routing_headers) are optional and
            # unsigned: when present they must agree with the event.
            stated = {h: (headers[h] or b"").decode(errors="replace")
                      for h in ("starling-host", "starling-seq") if h in headers}
            if key != host or event_host != host or stated.get("starling-host", host) != host:
                failures.append(f"{where}: seq {seq} filed under {key!r}")
            elif stated.get("starling-seq", str(seq)) != str(seq):
                failures.append(f"{where}: seq {seq} headed as {stated['starling-seq']}")
            elif (headers.get("starling-origin") or b"").decode(errors="replace") != fingerprint:
                failures.append(f"{where}: seq {seq} names another certificate")
            elif not header["first_seq"] <= seq <= header["last_seq"]:
                failures.append(f"{where}: seq {seq} outside the signed range")
            else:
                by_seq[seq].add(payload)
        seqs = sorted(by_seq)
        if len(seqs) < header["event_count"]:
            # Part of a batch answered RETRY: its events were resent under
            # another header, where they can be checked.
            incomplete += len(members)
            continue
        # Resent copies of an event are the same bytes; a seq with two
        # payloads means one was not the origin's: find the one it signed.
        signed = None
        choices = [sorted(by_seq[s]) for s in seqs]
        for combo in itertools.islice(itertools.product(*choices), 64):
            listing = b"".join(frame(p) for p in combo)
            if (len(seqs) == header["event_count"] and len(listing) == header["list_len"]
                    and hashlib.sha256(listing).digest() == header["list_sha256"]):
                signed = dict(zip(seqs, combo))
                break
        if signed is None:
            failures.append(f"{where}: the events do not rebuild the signed list")
            continue
        verified_batches += 1
        for _, _, _, seq, payload in members:
            if signed.get(seq) == payload:
                verified_events += 1
            elif seq in signed:
                failures.append(f"{where}: seq {seq} is not the event the origin signed")
    return {"messages": len(messages), "batches": verified_batches,
            "verified_events": verified_events, "incomplete": incomplete,
            "failures": failures}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--expect", type=int, required=True, help="messages to read")
    p.add_argument("--timeout", type=float, default=60)
    a = p.parse_args()
    result = check(read(a.bootstrap, a.topic, a.expect, a.timeout))
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()

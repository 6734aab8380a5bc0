#!/usr/bin/env python3
"""Where a saga's latency goes: when each of its messages was stored.

Follows every stream of a running stack with ordered consumers (new messages only) for
SECONDS, then prints, per position in a saga's sequence of stored messages, the median
gap since the previous one (the broker's own store timestamps, so no clock but the
server's is involved). Run it beside a bench at concurrency 1:

    pip install nats-py
    target/release/sagactl dev --sagas-only --nats-port 4334 --data-dir /tmp/stack &
    python3 scripts/saga_timeline.py nats://127.0.0.1:4334 25 &
    target/release/sagactl bench --sagas 300 --concurrency 1

Inputs and commands are trimmed once settled, so the script must run while the
bench does.
"""
import asyncio
import collections
import re
import statistics
import sys

import nats
from nats.js.api import DeliverPolicy

STREAMS = ["KV_saga_requests", "SAGA_EVENTS", "SAGA_INBOX", "SAGA_COMMANDS",
           "SAGA_JOURNAL", "SAGA_OPEN", "ES_EVENTS"]
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


def label(stream, subject):
    p = subject.split(".")
    if stream == "SAGA_INBOX":
        return "input start" if p[1] == "in" else "reply from " + p[-1]
    if stream == "SAGA_COMMANDS":
        return "command " + p[3]
    if stream == "SAGA_EVENTS":
        return "event " + p[2]
    return stream


async def main(url, seconds):
    nc = await nats.connect(url)
    js = nc.jetstream()
    rows = []

    async def seen(msg):
        saga = (msg.headers or {}).get("Saga-Id")
        if not saga:
            m = ULID.search(msg.subject) or ULID.search(msg.data.decode("latin1"))
            saga = m.group(0) if m else None
        if saga:
            rows.append((saga, msg.metadata.timestamp, msg.metadata.stream, msg.subject))

    for stream in STREAMS:
        try:
            await js.subscribe(">", stream=stream, ordered_consumer=True,
                               deliver_policy=DeliverPolicy.NEW, cb=seen)
        except Exception as e:  # a stream the stack does not have
            print(f"skipping {stream}: {e}", file=sys.stderr)
    await asyncio.sleep(seconds)
    await nc.close()

    by_saga = collections.defaultdict(list)
    for saga, at, stream, subject in rows:
        by_saga[saga].append((at, stream, subject))
    gaps = collections.defaultdict(list)
    totals = []
    for events in by_saga.values():
        events.sort()
        if len(events) < 10:  # cut off by the window
            continue
        for i, (at, stream, subject) in enumerate(events):
            prev = events[i - 1][0] if i else at
            gaps[(i, label(stream, subject))].append((at - prev).total_seconds() * 1000)
        totals.append((events[-1][0] - events[0][0]).total_seconds() * 1000)
    if not totals:
        sys.exit("no saga seen whole: run a bench while this runs")
    print(f"{len(totals)} sagas; median first to last store {statistics.median(totals):.2f} ms")
    for (i, what), values in sorted(gaps.items()):
        if len(values) > len(totals) / 2:
            print(f"{i:2} {what:28} +{statistics.median(values):.2f} ms")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 25))

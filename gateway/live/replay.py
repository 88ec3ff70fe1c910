"""Where a stream's Server-Sent Events start for a client that reconnects (`Last-Event-ID`), and the `event: lost`
it gets where the log no longer has what it asked for.

A stream's events are numbered 1, 2, 3, ... in its log (gateway/work/board.py), across owners; each goes out with
`id: <number>`. A client that sends `Last-Event-ID: n` (the header, or `last_event_id` in the query) gets the events
after n that the log still keeps, then the live ones. An id the stream never gave (not a number, or above its last)
gets every kept event, after one `event: lost` naming the id; events dropped from the log before they were read
(an id older than what is kept, or a reader that fell that far behind) are named by an `event: lost` where they
were, with their count.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

MAX_ID_DIGITS = 18  # (a number of events no stream reaches; longer ids are not ours)


@dataclass(frozen=True)
class Start:
    """Events numbered above `after` are sent; `unknown`: the id asked for when the stream never gave it."""

    after: int
    unknown: str | None = None


def start(asked: str | None, last: int) -> Start:
    """Where to start for the `Last-Event-ID` `asked` (None or "": none sent), the stream's last event being `last`."""
    asked = (asked or "").strip()
    if not asked:
        return Start(last)  # live: the events from the next one on
    if asked.isascii() and asked.isdigit() and len(asked) <= MAX_ID_DIGITS and int(asked) <= last:  # ("²": no)
        return Start(int(asked))
    return Start(0, asked[:64])


def lost(after: int | None, next: int | None, unknown: str | None, kept: int) -> bytes:
    """An `event: lost`: the events between `after` and `next` (both sent, or to be) were dropped from the log
    before this client read them; or (`unknown`) the id asked for names no event of the stream."""
    if unknown is not None:
        message = (
            f"Last-Event-ID '{unknown}' names no event of this stream (its events are numbered from 1 up): "
            "every event still kept follows, from the oldest."
        )
        count = None
    else:
        assert after is not None and next is not None
        count = next - after - 1
        message = (
            f"{count} event(s) after {after} are no longer kept (a stream keeps its newest {kept}, "
            f"GATEWAY_STREAM_EVENTS_KEPT): the events go on from {next}."
        )
    data = {"after": after, "next": next, "lost": count, "message": message}
    return b"event: lost\ndata: " + orjson.dumps(data) + b"\n\n"

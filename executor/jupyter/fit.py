"""Make one outgoing Jupyter message fit a byte limit, never by dropping it silently.

Jupyter clients often cap a websocket message: Open WebUI's (``websockets``' default) refuses anything over
1 MiB and then fails the whole cell. So a message over the limit is made smaller: a PNG is decoded and re-encoded
smaller (fewer pixels, then fewer colours), any other oversized value is cut with a marker that says so, and
a value that cannot be cut (an image Pillow cannot shrink, a JSON tree) is replaced by a note in ``text/plain``.
Stream text is split into several messages instead (nothing lost), see :func:`split_stream`.

Every byte here comes from a sandbox: images are checked for their pixel count before they are decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import threading
from typing import Any

# A PNG of more pixels than this is not decoded (a small file can inflate to gigabytes): it is replaced by a note.
MAX_DECODE_PIXELS = 25_000_000
# Images decoded at once in the whole process: each may take 100 MB (25 Mpx RGBA) while it is re-encoded.
_DECODING = threading.BoundedSemaphore(2)
# Tries at re-encoding an image before giving up on it.
_IMAGE_TRIES = 6
_IMAGE_MIMES = ("image/png",)


def encode(message: dict[str, Any]) -> str:
    """The JSON text a message is sent as (one encoder, so sizes measured here are the sizes sent)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str)


def size(message: dict[str, Any]) -> int:
    """The message's size on the wire: UTF-8 bytes of its JSON text."""
    return len(encode(message).encode())


def marker(limit: int) -> str:
    return f"\n[output truncated: a Jupyter message is limited to {limit} bytes]\n"


def split_stream(message: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """A ``stream`` message as one or more messages under ``limit``, the text cut between them (lossless)."""
    text = message["content"].get("text", "")
    if size(message) <= limit or not isinstance(text, str) or not text:
        return [message]
    empty = {**message, "content": {**message["content"], "text": ""}}
    # Chunks of as many characters as the room has bytes (right for plain ASCII); one that JSON escapes (up to 6
    # bytes for \u001f) or UTF-8 (up to 4) make too big is halved until it fits.
    room = max(limit - size(empty), 64)
    pending = [text[i : i + room] for i in range(0, len(text), room)]
    parts: list[dict[str, Any]] = []
    while pending:
        chunk = pending.pop(0)
        part = {**message, "content": {**message["content"], "text": chunk}}
        if size(part) > limit and len(chunk) > 1:
            half = len(chunk) // 2
            pending[:0] = [chunk[:half], chunk[half:]]
            continue
        parts.append(part)
    return parts


def fit(message: dict[str, Any], limit: int) -> dict[str, Any]:
    """``message`` itself when it fits, else a copy made to fit (see the module docstring). CPU-bound (Pillow):
    call it in a thread for messages that do not fit."""
    if size(message) <= limit:
        return message
    content = dict(message.get("content") or {})
    out = {**message, "content": content}
    data = content.get("data")
    if isinstance(data, dict):
        bundle = dict(data)
        content["data"] = bundle
        for mime in _IMAGE_MIMES:
            if isinstance(bundle.get(mime), str) and size(out) > limit:
                _shrink_image(out, bundle, mime, limit)
        for mime, value in list(bundle.items()):
            if not isinstance(value, str) and mime != "text/plain" and size(out) > limit:
                # A JSON tree cannot be cut meaningfully: say what was left out.
                del bundle[mime]
                _note(bundle, f"[{mime} output left out: larger than {limit} bytes]")
    _cut_strings(out, limit)
    if size(out) > limit:
        _last_resort(out, limit)
    return out


def _last_resort(message: dict[str, Any], limit: int) -> None:
    """Content made of too many pieces to cut one by one (a traceback of 100 000 lines): keep what fits of the
    lists, else only a marker. The message itself always goes out, so the client sees why."""
    content = message["content"]
    note = marker(limit)
    for name, value in list(content.items()):
        if isinstance(value, list) and value:
            keep = len(value)
            while keep > 0 and size(message) > limit:
                keep //= 2
                content[name] = [*value[:keep], note]
    if size(message) > limit:
        kind = message.get("msg_type")
        if kind == "error":
            message["content"] = {"ename": str(content.get("ename", ""))[:200], "evalue": note, "traceback": [note]}
        elif kind == "stream":
            message["content"] = {"name": content.get("name", "stdout"), "text": note}
        else:
            message["content"] = {k: v for k, v in content.items() if k in ("execution_count",)}
            message["content"].update(data={"text/plain": note}, metadata={})


def _note(bundle: dict[str, Any], note: str) -> None:
    text = bundle.get("text/plain")
    bundle["text/plain"] = f"{text}\n{note}" if isinstance(text, str) and text else note


def _shrink_image(message: dict[str, Any], bundle: dict[str, Any], mime: str, limit: int) -> None:
    original = bundle[mime]
    bundle[mime] = ""
    room = limit - size(message) - 16  # what the base64 text of the image may take
    shrunk = None
    if room > 0:
        with _DECODING:
            shrunk = reencode_png(original, room * 3 // 4)
    if shrunk is None:
        del bundle[mime]
        _note(bundle, f"[{mime} output left out: larger than {limit} bytes and could not be made smaller]")
    else:
        bundle[mime] = shrunk


def reencode_png(b64: str, max_bytes: int) -> str | None:
    """The image re-encoded as a PNG of at most ``max_bytes`` bytes (base64), or None when it cannot be."""
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(b64.replace("\n", ""), validate=False)
    except (binascii.Error, ValueError):
        return None
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            width, height = probe.size
            if width * height > MAX_DECODE_PIXELS:
                return None
            probe.load()
            image = probe.convert("RGBA") if probe.mode not in ("RGB", "RGBA", "L", "LA") else probe.copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    current = len(raw)
    for attempt in range(_IMAGE_TRIES):
        # Bytes scale roughly with pixels: shrink both sides by the square root of the excess, with a margin.
        scale = min(math.sqrt(max_bytes / max(current, 1)) * 0.9, 0.9)
        width, height = max(int(image.width * scale), 1), max(int(image.height * scale), 1)
        image = image.resize((width, height), Image.Resampling.LANCZOS)
        candidate = image
        if attempt >= _IMAGE_TRIES // 2 and image.mode in ("RGB", "RGBA"):
            candidate = image.quantize(colors=256)  # fewer colours compress far better
        buffer = io.BytesIO()
        candidate.save(buffer, format="PNG", optimize=True)
        current = buffer.tell()
        if current <= max_bytes:
            return base64.b64encode(buffer.getvalue()).decode()
        if width == 1 and height == 1:
            break
    return None


def _cut_strings(message: dict[str, Any], limit: int) -> None:
    """Cut the longest strings of ``content`` (and its ``data``) until the message fits, each with a marker."""
    note = marker(limit)
    for _ in range(16):
        excess = size(message) - limit
        if excess <= 0:
            return
        holder, key, value = _longest(message["content"])
        if holder is None or not value:
            # Nothing left to cut: an envelope of its own over the limit (never, for limits of a few KiB).
            message["content"] = {"name": "stderr", "text": note} if "text" in message["content"] else {}
            return
        encoded = len(json.dumps(value, ensure_ascii=False).encode())
        keep = max(0, int(len(value) * (encoded - excess - len(note) - 64) / encoded))
        cut = value[:keep] + note if not value.endswith(note) else value[: max(keep - len(note), 0)] + note
        if isinstance(holder, list):
            holder[int(key)] = cut
        else:
            holder[key] = cut


def _longest(content: dict[str, Any]) -> tuple[dict[str, Any] | list[str] | None, str, str]:
    """The container, key and value of the longest string in content, its data bundle or its traceback."""
    best: tuple[dict[str, Any] | list[str] | None, str, str] = (None, "", "")
    places: list[dict[str, Any] | list[Any]] = [content]
    for name in ("data", "traceback"):
        nested = content.get(name)
        if isinstance(nested, dict | list):
            copy = dict(nested) if isinstance(nested, dict) else list(nested)
            content[name] = copy
            places.append(copy)
    for place in places:
        items = place.items() if isinstance(place, dict) else enumerate(place)
        for key, value in items:
            if isinstance(value, str) and len(value) > len(best[2]):
                best = (place, str(key), value)
    return best

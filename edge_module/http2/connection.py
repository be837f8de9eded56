"""One HTTP/2 server connection (RFC 9113): frames in, unary requests out to the application, responses back.

A request reaches the application once its stream has ended (the whole body is in); the application answers
with :meth:`Connection.respond` or gives the stream up with :meth:`Connection.abandon`, from any later point on
the event loop. What keeps a client from exhausting the device:
- at most ``max_streams`` requests per connection are open *or still being handled*, so resetting streams
  does not free a slot before its work is done (the "rapid reset" attack);
- request bodies are bounded (``max_body``) and so is what a connection may buffer: the connection window is
  only given back when a stream is finished, not when its bytes arrive;
- header blocks are bounded before HPACK decoding and as a decoded list;
- when the peer stops reading, the connection stops reading too, so control frames it answers (PING,
  SETTINGS) cannot pile up;
- a connection that has not sent its preface and settings within ``handshake_timeout`` is closed.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any, Protocol

from edge_module.http2 import frames as f
from edge_module.http2.hpack_decode import Decoder, HeaderBlockError, HeaderListTooLarge

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")
HEADER_TABLE = 4096
MAX_HEADER_LIST = 16 * 1024  # decoded; advertised as SETTINGS_MAX_HEADER_LIST_SIZE
MAX_HEADER_BLOCK = 64 * 1024  # encoded, across HEADERS and CONTINUATION, checked before decoding
HANDSHAKE_TIMEOUT_S = 10.0


class Application(Protocol):
    def request(self, connection: Connection, stream: Stream) -> None:
        """A complete request. Must lead to exactly one ``respond`` or ``abandon`` for ``stream``."""

    def too_large(self, connection: Connection, stream: Stream) -> None:
        """The body passed ``max_body`` before it ended: answer now (``respond``), the rest is refused."""


class Stream:
    __slots__ = (
        "answered",
        "chunks",
        "ended",
        "handed",
        "headers",
        "id",
        "on_reset",
        "pending",
        "pending_trailers",
        "received",
        "reset",
        "send_window",
        "size",
    )

    def __init__(self, stream_id: int, headers: Headers, send_window: int) -> None:
        self.id = stream_id
        self.headers = headers
        self.chunks: list[bytes] = []
        self.size = 0  # body bytes
        self.received = 0  # flow-controlled bytes (with padding), given back to the connection window at the end
        self.ended = False  # the client half-closed: the request is complete
        self.handed = False  # given to the application, which still owes respond or abandon
        self.answered = False  # the application responded or abandoned
        self.reset = False  # reset by either side: nothing more is sent
        self.send_window = send_window
        self.pending = b""  # response body not yet sent for lack of flow-control window
        self.pending_trailers: bytes | None = None
        self.on_reset: Callable[[], object] | None = None  # the application's cancel, when the client resets

    def body(self) -> bytes:
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Connection(asyncio.Protocol):
    def __init__(
        self,
        application: Application,
        max_body: int,
        max_streams: int = 128,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
        on_close: Callable[[Connection], None] | None = None,
        refuse: str | None = None,
    ) -> None:
        self.application = application
        self.refuse = refuse  # set: the connection is told to go away at once (the server is full)
        self.max_body = max_body
        self.max_streams = max_streams
        self.handshake_timeout = handshake_timeout
        self.on_close = on_close
        # One more byte than a body may have: a client that sends it has said too much, and is answered.
        self.stream_window = min(max_body + 1, f.MAX_WINDOW)
        self.connection_window = min(max(2 * self.stream_window, f.DEFAULT_WINDOW), f.MAX_WINDOW)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.open = 0  # streams open or still being handled: what max_streams bounds
        self.last_stream_id = 0
        self.closed = asyncio.Event()
        self._buffer = b""
        self._handshake = 0  # 0: waiting for the preface; 1: for the client's first SETTINGS; 2: done
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._decoder = Decoder(HEADER_TABLE, MAX_HEADER_LIST)
        self._continuing: tuple[int, int, list[bytes], int] | None = None  # stream, flags, fragments, size
        self._out: list[bytes] = []
        self._send_window = f.DEFAULT_WINDOW
        self._peer_window = f.DEFAULT_WINDOW  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self._peer_frame = f.DEFAULT_MAX_FRAME
        self._to_give_back = 0  # connection-window bytes consumed by finished streams, not yet updated
        self._blocked: dict[int, Stream] = {}  # streams with response bytes waiting for window
        self._going_away = False
        self._closing = False
        self._receiving = False

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        settings = {
            f.HEADER_TABLE_SIZE: HEADER_TABLE,
            f.ENABLE_PUSH: 0,
            f.MAX_CONCURRENT_STREAMS: self.max_streams,
            f.INITIAL_WINDOW_SIZE: self.stream_window,
            f.MAX_FRAME_SIZE: f.DEFAULT_MAX_FRAME,
            f.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        }
        first = f.settings_frame(settings)
        if self.connection_window > f.DEFAULT_WINDOW:
            first += f.window_update(0, self.connection_window - f.DEFAULT_WINDOW)
        if self.refuse is not None:
            log.warning("HTTP/2 connection refused: %s", self.refuse)
            transport.write(first + f.goaway(0, f.REFUSED_STREAM, self.refuse.encode()))
            self.close()
            return
        transport.write(first)
        loop = asyncio.get_running_loop()
        self._handshake_timer = loop.call_later(self.handshake_timeout, self._handshake_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        for stream in list(self.streams.values()):
            self._reset_by_peer(stream)
        self.streams.clear()
        self.closed.set()
        if self.on_close is not None:
            self.on_close(self)

    def pause_writing(self) -> None:
        # The client is not reading: stop reading its frames too, so our answers to them cannot pile up.
        if self.transport is not None and not self._closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        buffer = self._buffer + data if self._buffer else data
        self._receiving = True  # answers given meanwhile are written once, with everything else, at the end
        try:
            position = self._handshake_prefix(buffer) if self._handshake == 0 else 0
            if position < 0:
                return
            position = self._frames(buffer, position)
            self._buffer = buffer[position:]
        except f.ConnectionError_ as exc:
            log.info("HTTP/2 connection error %d: %s", exc.code, exc)
            self._fail(exc.code, str(exc))
            return
        except Exception:
            log.exception("HTTP/2 connection failed")
            self._fail(f.INTERNAL_ERROR, "internal error")
            return
        finally:
            self._receiving = False
        self._flush()

    # -- the application's side ---------------------------------------------------------------------

    def respond(self, stream: Stream, headers: bytes, body: bytes = b"", trailers: bytes | None = None) -> None:
        """Send a response: ``headers`` (an HPACK block), then ``body``, then ``trailers`` (a block) if any.

        With neither body nor trailers the headers end the stream. Body bytes beyond the client's
        flow-control window wait for its WINDOW_UPDATE."""
        if stream.answered:
            raise RuntimeError(f"stream {stream.id} was already answered")
        stream.answered = True
        if stream.reset or self._closing:
            self._finish(stream)
        elif (
            trailers is not None
            and 0 < len(body) <= min(self._send_window, stream.send_window, self._peer_frame)
            and len(headers) <= self._peer_frame
            and len(trailers) <= self._peer_frame
        ):
            # The usual answer, in one piece: headers, the whole body in one DATA frame, trailers.
            pack, sid = f.pack_head, stream.id
            self._out.append(
                b"".join(
                    (
                        pack(len(headers), f.HEADERS, f.END_HEADERS, sid),
                        headers,
                        pack(len(body), f.DATA, 0, sid),
                        body,
                        pack(len(trailers), f.HEADERS, f.END_HEADERS | f.END_STREAM, sid),
                        trailers,
                    )
                )
            )
            self._send_window -= len(body)
            stream.send_window -= len(body)
            self._sent(stream)
        else:
            self._headers_frames(stream.id, headers, end_stream=not body and trailers is None)
            stream.pending = body
            stream.pending_trailers = trailers
            if body or trailers is not None:
                self._send_pending(stream)
            else:
                self._sent(stream)
        if not self._receiving:
            self._flush()

    def abandon(self, stream: Stream) -> None:
        """No response will come (the request was cancelled): reset the stream if it is still open."""
        if stream.answered:
            return
        stream.answered = True
        if not stream.reset and not self._closing:
            stream.reset = True
            self._out.append(f.rst_stream(stream.id, f.CANCEL))
        self._finish(stream)
        if not self._receiving:
            self._flush()

    def shutdown(self) -> None:
        """Graceful: GOAWAY naming the last stream taken; streams in flight finish, then the connection closes."""
        if self._going_away or self._closing:
            return
        self._going_away = True
        self._out.append(f.goaway(self.last_stream_id, f.NO_ERROR))
        self._flush()
        self._close_if_done()

    def close(self) -> None:
        """At once: streams still in flight are cancelled."""
        if self.transport is not None and not self._closing:
            self._closing = True
            self.transport.close()

    # -- reading ------------------------------------------------------------------------------------

    def _handshake_prefix(self, buffer: bytes) -> int:
        if len(buffer) < len(f.PREFACE):
            if not f.PREFACE.startswith(buffer):
                raise f.ConnectionError_(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._buffer = buffer
            return -1
        if not buffer.startswith(f.PREFACE):
            raise f.ConnectionError_(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
        self._handshake = 1
        return len(f.PREFACE)

    def _frames(self, buffer: bytes, position: int) -> int:
        end_of_data = len(buffer)
        unpack = _U32.unpack_from
        while end_of_data - position >= f.HEADER_SIZE:
            head = unpack(buffer, position)[0]
            length, kind = head >> 8, head & 0xFF
            if length > f.DEFAULT_MAX_FRAME:
                raise f.ConnectionError_(f.FRAME_SIZE_ERROR, f"a frame of {length} bytes is over the maximum")
            end = position + f.HEADER_SIZE + length
            if end > end_of_data:
                break
            flags = buffer[position + 4]
            stream_id = unpack(buffer, position + 5)[0] & 0x7FFFFFFF
            payload = buffer[position + f.HEADER_SIZE : end]
            position = end
            if self._handshake == 1:
                if kind != f.SETTINGS or flags & f.ACK:
                    raise f.ConnectionError_(f.PROTOCOL_ERROR, "the client's first frame must be SETTINGS")
                self._handshake = 2
                if self._handshake_timer is not None:
                    self._handshake_timer.cancel()
                    self._handshake_timer = None
            if self._continuing is not None and kind != f.CONTINUATION:
                raise f.ConnectionError_(f.PROTOCOL_ERROR, "a header block was interrupted by another frame")
            try:
                if kind == f.DATA:
                    self._data(stream_id, flags, payload)
                elif kind == f.HEADERS:
                    self._headers(stream_id, flags, payload)
                elif kind == f.CONTINUATION:
                    self._continuation(stream_id, flags, payload)
                elif kind == f.WINDOW_UPDATE:
                    self._window_update(stream_id, payload)
                elif kind == f.RST_STREAM:
                    self._rst_stream(stream_id, payload)
                elif kind == f.SETTINGS:
                    self._settings(stream_id, flags, payload)
                elif kind == f.PING:
                    self._ping(stream_id, flags, payload)
                elif kind == f.GOAWAY:
                    self._goaway(stream_id)
                elif kind == f.PRIORITY:
                    if stream_id == 0:
                        raise f.ConnectionError_(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
                    if length != 5:
                        raise f.StreamError(stream_id, f.FRAME_SIZE_ERROR, "PRIORITY must be 5 bytes")
                elif kind == f.PUSH_PROMISE:
                    raise f.ConnectionError_(f.PROTOCOL_ERROR, "a client cannot push")
                # Unknown frame types are ignored (section 4.1).
            except f.StreamError as exc:
                self._reset_stream(exc.stream_id, exc.code, str(exc))
        return position

    def _data(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0:
            raise f.ConnectionError_(f.PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended:
            self._to_give_back += length  # the window is the connection's, whatever became of the stream
            if stream_id > self.last_stream_id:
                raise f.ConnectionError_(f.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            if stream is not None and not stream.reset:
                raise f.StreamError(stream_id, f.STREAM_CLOSED, "DATA after the end of the stream")
            return  # a stream we reset or finished: its frames may still be in flight
        stream.received += length
        if flags & f.PADDED:
            payload = _unpad(payload, stream_id)
        if stream.received > self.stream_window:
            raise f.ConnectionError_(f.FLOW_CONTROL_ERROR, f"stream {stream_id} overran its flow-control window")
        if stream.answered:  # answered early (too large): the rest is read and dropped
            stream.ended = bool(flags & f.END_STREAM)
            return
        if payload:
            stream.chunks.append(payload)
            stream.size += len(payload)
            if stream.size > self.max_body:
                stream.chunks = []
                stream.handed = True
                self.application.too_large(self, stream)
                return
        if flags & f.END_STREAM:
            self._request_complete(stream)

    def _headers(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id == 0 or not stream_id & 1:
            raise f.ConnectionError_(f.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}: clients use odd stream ids")
        if flags & f.PADDED:
            payload = _unpad(payload, stream_id)
        if flags & f.PRIORITY_FLAG:
            if len(payload) < 5:
                raise f.ConnectionError_(f.FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
            payload = payload[5:]
        if flags & f.END_HEADERS:
            self._header_block(stream_id, flags, payload)
        else:
            self._continuing = (stream_id, flags, [payload], len(payload))

    def _continuation(self, stream_id: int, flags: int, payload: bytes) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise f.ConnectionError_(f.PROTOCOL_ERROR, "CONTINUATION without a header block in progress")
        _, first_flags, fragments, size = self._continuing
        size += len(payload)
        if size > MAX_HEADER_BLOCK:
            raise f.ConnectionError_(f.ENHANCE_YOUR_CALM, f"a header block of more than {MAX_HEADER_BLOCK} bytes")
        fragments.append(payload)
        if flags & f.END_HEADERS:
            self._continuing = None
            self._header_block(stream_id, first_flags, b"".join(fragments))
        else:
            self._continuing = (stream_id, first_flags, fragments, size)

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        # Decoded whatever becomes of the stream: the HPACK table is the connection's.
        try:
            headers = self._decoder.decode(block)
        except HeaderListTooLarge as exc:
            raise f.ConnectionError_(f.ENHANCE_YOUR_CALM, f"header list too large: {exc}") from exc
        except HeaderBlockError as exc:
            raise f.ConnectionError_(f.COMPRESSION_ERROR, f"header block does not decode: {exc}") from exc
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers: allowed only as the end of the request
            if stream.ended or not flags & f.END_STREAM:
                raise f.StreamError(stream_id, f.PROTOCOL_ERROR, "a second header block that does not end the stream")
            if not stream.answered:
                self._request_complete(stream)
            else:
                stream.ended = True
            return
        if stream_id <= self.last_stream_id:
            raise f.ConnectionError_(f.STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
        self.last_stream_id = stream_id
        if self._going_away:
            return  # after our GOAWAY: not processed; the client may retry it elsewhere
        if self.open >= self.max_streams:
            self._out.append(f.rst_stream(stream_id, f.REFUSED_STREAM))
            return
        opened = Stream(stream_id, headers, self._peer_window)
        self.streams[stream_id] = opened
        self.open += 1
        if flags & f.END_STREAM:
            self._request_complete(opened)

    def _request_complete(self, stream: Stream) -> None:
        stream.ended = True
        stream.handed = True
        self.application.request(self, stream)

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise f.ConnectionError_(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE must be 4 bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise f.ConnectionError_(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self._send_window += increment
            if self._send_window > f.MAX_WINDOW:
                raise f.ConnectionError_(f.FLOW_CONTROL_ERROR, "the connection window overflowed")
            for blocked in list(self._blocked.values()):
                self._send_pending(blocked)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise f.ConnectionError_(f.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return
        if increment == 0:
            raise f.StreamError(stream_id, f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        stream.send_window += increment
        if stream.send_window > f.MAX_WINDOW:
            raise f.StreamError(stream_id, f.FLOW_CONTROL_ERROR, "the stream window overflowed")
        if stream.id in self._blocked:
            self._send_pending(stream)

    def _rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise f.ConnectionError_(f.FRAME_SIZE_ERROR, "RST_STREAM must be 4 bytes")
        if stream_id == 0 or stream_id > self.last_stream_id:
            raise f.ConnectionError_(f.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._reset_by_peer(stream)

    def _settings(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id != 0:
            raise f.ConnectionError_(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise f.ConnectionError_(f.FRAME_SIZE_ERROR, "a SETTINGS acknowledgement carries no settings")
            return
        if len(payload) % 6:
            raise f.ConnectionError_(f.FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise f.ConnectionError_(f.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                delta, self._peer_window = value - self._peer_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > f.MAX_WINDOW:
                        raise f.ConnectionError_(f.FLOW_CONTROL_ERROR, f"stream {stream.id}'s window overflowed")
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= f.MAX_FRAME_LIMIT:
                    raise f.ConnectionError_(f.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self._peer_frame = value
            elif key == f.ENABLE_PUSH and value > 1:
                raise f.ConnectionError_(f.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
            # HEADER_TABLE_SIZE: our encoder never uses the dynamic table; the rest are advisory to a server.
        self._out.append(f.frame(f.SETTINGS, f.ACK, 0))
        for stream in list(self._blocked.values()):
            self._send_pending(stream)

    def _ping(self, stream_id: int, flags: int, payload: bytes) -> None:
        if stream_id != 0:
            raise f.ConnectionError_(f.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise f.ConnectionError_(f.FRAME_SIZE_ERROR, "PING must be 8 bytes")
        if not flags & f.ACK:
            self._out.append(f.frame(f.PING, f.ACK, 0, payload))

    def _goaway(self, stream_id: int) -> None:
        if stream_id != 0:
            raise f.ConnectionError_(f.PROTOCOL_ERROR, "GOAWAY on a stream")
        # The client is leaving: take no new streams, finish the ones in flight.
        self._going_away = True
        self._close_if_done()

    # -- writing ------------------------------------------------------------------------------------

    def _headers_frames(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        limit = self._peer_frame
        flags = f.END_STREAM if end_stream else 0
        if len(block) <= limit:
            self._out.append(f.frame(f.HEADERS, flags | f.END_HEADERS, stream_id, block))
            return
        self._out.append(f.frame(f.HEADERS, flags, stream_id, block[:limit]))
        for start in range(limit, len(block), limit):
            last = start + limit >= len(block)
            piece = block[start : start + limit]
            self._out.append(f.frame(f.CONTINUATION, f.END_HEADERS if last else 0, stream_id, piece))

    def _send_pending(self, stream: Stream) -> None:
        pending = stream.pending
        while pending:
            room = min(len(pending), self._send_window, stream.send_window, self._peer_frame)
            if room <= 0:
                self._blocked[stream.id] = stream
                stream.pending = pending
                return
            last = room == len(pending) and stream.pending_trailers is None
            self._out.append(f.frame(f.DATA, f.END_STREAM if last else 0, stream.id, pending[:room]))
            pending = pending[room:]
            self._send_window -= room
            stream.send_window -= room
        stream.pending = b""
        self._blocked.pop(stream.id, None)
        if stream.pending_trailers is not None:
            self._headers_frames(stream.id, stream.pending_trailers, end_stream=True)
            stream.pending_trailers = None
        self._sent(stream)

    def _sent(self, stream: Stream) -> None:
        """The whole response is out."""
        if not stream.ended:
            # Answered before the request ended (section 8.1): the rest of it is not wanted.
            stream.reset = True
            self._out.append(f.rst_stream(stream.id, f.NO_ERROR))
        self._finish(stream)

    def _finish(self, stream: Stream) -> None:
        """Forget a stream whose exchange is over on our side; its buffered bytes go back to the window."""
        if self.streams.pop(stream.id, None) is None:
            return
        self._blocked.pop(stream.id, None)
        self.open -= 1
        self._to_give_back += stream.received
        stream.received = 0
        stream.chunks = []
        self._close_if_done()

    def _reset_stream(self, stream_id: int, code: int, reason: str) -> None:
        log.debug("HTTP/2 stream %d reset (%d): %s", stream_id, code, reason)
        self._out.append(f.rst_stream(stream_id, code))
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.reset = True
            if stream.handed and not stream.answered:
                self._cancel(stream)
            else:
                self._finish(stream)

    def _reset_by_peer(self, stream: Stream) -> None:
        stream.reset = True
        self._blocked.pop(stream.id, None)
        if stream.handed and not stream.answered:
            self._cancel(stream)  # the slot stays taken until the application gives the stream up
        else:
            self._finish(stream)

    def _cancel(self, stream: Stream) -> None:
        callback, stream.on_reset = stream.on_reset, None
        if callback is not None:
            callback()

    def _flush(self) -> None:
        if self._to_give_back >= self.connection_window // 4 or (self._to_give_back and not self.streams):
            self._out.append(f.window_update(0, self._to_give_back))
            self._to_give_back = 0
        if self._out and not self._closing and self.transport is not None:
            self.transport.write(b"".join(self._out) if len(self._out) > 1 else self._out[0])
        self._out.clear()

    def _close_if_done(self) -> None:
        if self._going_away and not self.streams and self.transport is not None and not self._closing:
            self._flush()
            self._closing = True
            self.transport.close()

    def _fail(self, code: int, reason: str) -> None:
        self._out.append(f.goaway(self.last_stream_id, code, reason.encode()[:256]))
        self._flush()
        self.close()

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self._handshake < 2:
            log.info("HTTP/2 client sent no preface and settings in %.0f s: closing", self.handshake_timeout)
            self._fail(f.SETTINGS_TIMEOUT, "no preface and settings in time")


def _unpad(payload: bytes, stream_id: int) -> bytes:
    if not payload:
        raise f.ConnectionError_(f.PROTOCOL_ERROR, f"a padded frame on stream {stream_id} without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise f.ConnectionError_(f.PROTOCOL_ERROR, f"padding on stream {stream_id} exceeds the frame")
    return payload[1 : len(payload) - pad]

"""A small HTTP/2 server (RFC 9113) for unary request/response exchanges, written for gRPC's hot path.

It implements the framing, stream states, flow control, settings, ping and goaway that a server needs, and the
limits that keep one client from exhausting the device. HPACK decoding is the ``hpack`` package; responses
are encoded without the dynamic table, so no encoder state is kept. No server push, no priorities.
"""

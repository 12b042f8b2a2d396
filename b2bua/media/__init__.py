"""Media plumbing between the wire formats and the codecs: per-call state machines with time
passed in (jitter buffer, RTP sessions), PyAV transcoding, UDP sockets and the node's single
20 ms media clock (DESIGN.md §4)."""

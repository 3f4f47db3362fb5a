// Package p2p builds the libp2p host a p2pkey node runs on.
//
// It owns the node's persisted Ed25519 identity, the transports (TCP and QUIC
// on IPv4 and IPv6), the security handshakes (Noise and TLS), the resource
// manager, and the connection manager that protects cluster members from
// trimming. It owns NAT traversal (rules N1, N2): AutoNAT, hole punching, the
// relay client with static relays, the members-only relay service, port
// mapping, mDNS, and the helpers that report reachability and how each peer
// is connected (see docs/NAT.md). It provides the gossipsub setup that keeps a
// topic to members (MembersOnly) and the bounded per-peer and per-IP rate
// limiters (ConnLimiter, PeerLimiter) for handlers a stranger can reach. It also routes go-libp2p's slog output into go-log/v2, so the
// GOLOG_* environment variables govern every log line the process writes.
//
// New listens on every listen address or fails with ErrListen naming the
// one it cannot (a port held by another process, TCP or QUIC); the default
// port is DefaultPort (4766), not kubo's 4001. CountConns counts
// connections by type (direct, hole-punched, relayed) for metrics, and
// WithMetricsRegisterer puts go-libp2p's own metrics in a caller's
// Prometheus registry. go-libp2p's routine identify failures are logged at
// DEBUG, not WARN.
//
// It must not know about Raft, the custody ledger or shares: those packages
// take the host.Host this package returns and register their own protocols.
package p2p

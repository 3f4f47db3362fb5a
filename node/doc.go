// Package node is the embeddable p2pkey node. It wires the libp2p host
// (package p2p), Raft (package consensus) and the custody ledger (package
// generations) into one process, and gives Go programs the same abilities as
// the p2pkey CLI: start, invite, status, remove, leave, and a stream of
// events.
//
// It owns the join protocol (/p2pkey/join/1.0.0), invite tokens, the leader's
// reconciler that keeps the Raft configuration in step with the ledger's
// members, the local peer address book, and the control API that the CLI
// reaches over a unix socket in the data directory (rule S5).
//
// Logic about who may do what lives in the ledger, not here: the node turns
// requests into ledger commands, applies them through Raft, and reads the
// ledger back.
package node

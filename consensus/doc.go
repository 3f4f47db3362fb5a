// Package consensus runs hashicorp/raft over libp2p streams.
//
// It owns the Raft instance and everything Raft needs: the raft-boltdb log
// and stable stores and the file snapshot store in the data directory; a
// stream layer on a versioned libp2p protocol that works over relayed
// connections (rule N1), with a gate that admits only peers in the Raft
// configuration (rule S1) and a guard that checks every RPC before Raft reads
// it: it must name its authenticated sender, and only voters may send it
// (rule S8); the FSM bridge, with the leader's clock stamped into every entry
// (rule S7); forwarding of commands from followers to the leader, retried
// through leader changes; read-index reads (Fresh, rule S9); the
// membership primitives (add a non-voter, promote, remove); and Raft's
// timing (Timing, LANTiming, WANTiming). The leader tells its followers at
// once what it has committed (nudges), so CommitTimeout can be seconds and an
// idle cluster costs its heartbeats and little else. Raft's state is read
// typed (RaftState), and every line consensus logs, Raft's own included, goes
// through one go-log logger (Config.Logger), below WARN for what happens in
// normal operation; the leader logs once when it loses contact with a member
// and once when the member is back. The forward protocol runs on package
// wire, as every p2pkey request-response protocol does.
//
// It does not know what a command means. Every log entry is a versioned
// envelope (the leader's time stamp, then opaque bytes) that the StateMachine
// decodes; the logic, including the checks of signed commands, lives in
// package generations. It must not trust a proposer for anything but the
// command's bytes. DESIGN.md in this directory says why the transport is our
// own rather than go-libp2p-raft's, who may speak Raft to a node, and what
// Raft, being crash-tolerant rather than Byzantine, leaves open.
package consensus

// Package consensus runs hashicorp/raft over libp2p streams.
//
// It owns the Raft instance and everything Raft needs: the raft-boltdb log
// and stable stores and the file snapshot store in the data directory; a
// stream layer on a versioned libp2p protocol with a gate that admits only
// peers in the Raft configuration (rule S1) and that works over relayed
// connections (rule N1); the FSM bridge; forwarding of commands from
// followers to the leader; and the membership primitives (add a non-voter,
// promote, remove).
//
// It does not know what a command means. Every log entry is a one-byte
// envelope version followed by opaque bytes that the StateMachine decodes;
// the logic lives in package generations. See DESIGN.md in this directory
// for why the transport is our own rather than go-libp2p-raft's.
package consensus

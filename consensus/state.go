package consensus

import (
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Role is a server's role in Raft.
type Role uint8

// The roles of a Raft server.
const (
	RoleFollower Role = iota
	RoleCandidate
	RoleLeader
	RoleShutdown
)

// String returns "follower", "candidate", "leader" or "shutdown".
func (r Role) String() string {
	switch r {
	case RoleFollower:
		return "follower"
	case RoleCandidate:
		return "candidate"
	case RoleLeader:
		return "leader"
	case RoleShutdown:
		return "shutdown"
	}
	return "role(" + strconv.Itoa(int(r)) + ")"
}

func roleOf(s raft.RaftState) Role {
	switch s {
	case raft.Candidate:
		return RoleCandidate
	case raft.Leader:
		return RoleLeader
	case raft.Shutdown:
		return RoleShutdown
	}
	return RoleFollower
}

// RaftState is this server's view of Raft. Each field is read on its own,
// from Raft's typed accessors, so the whole is not one atomic snapshot: read
// it again rather than compare fields across a change.
type RaftState struct {
	// Role is this server's role.
	Role Role
	// Term is the current term.
	Term uint64
	// LastLogIndex is the index of the last entry in the log or the last
	// snapshot, whichever is newer.
	LastLogIndex uint64
	// CommitIndex is the highest index this server knows to be committed.
	CommitIndex uint64
	// AppliedIndex is the highest index Raft has handed to the state
	// machine (see WaitApplied for the exact test of what it applied).
	AppliedIndex uint64
	// LastSnapshotIndex is the index the newest snapshot covers, taken here
	// or installed from the leader; 0 if none.
	LastSnapshotIndex uint64
	// LastContact is when this server last heard from a leader: meaningful
	// on a follower; zero if it never has.
	LastContact time.Time
	// Leader is the leader this server knows, or "".
	Leader peer.ID
}

// RaftState returns this server's view of Raft, typed: the term and indexes
// that Stats returns as strings.
func (c *Consensus) RaftState() RaftState {
	return RaftState{
		Role:              roleOf(c.raft.State()),
		Term:              c.raft.CurrentTerm(),
		LastLogIndex:      c.raft.LastIndex(),
		CommitIndex:       c.raft.CommitIndex(),
		AppliedIndex:      c.raft.AppliedIndex(),
		LastSnapshotIndex: c.lastSnapshotIndex(),
		LastContact:       c.raft.LastContact(),
		Leader:            c.Leader(),
	}
}

// lastSnapshotIndex is the index of Raft's newest snapshot. Raft has no typed
// accessor for it, so this is the one place its Stats string is parsed.
func (c *Consensus) lastSnapshotIndex() uint64 {
	n, _ := strconv.ParseUint(c.raft.Stats()["last_snapshot_index"], 10, 64)
	return n
}

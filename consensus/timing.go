package consensus

import (
	"fmt"
	"time"
)

// Timing is Raft's timing. A zero field takes its value from LANTiming.
//
// Idle, a leader sends each follower a heartbeat every HeartbeatTimeout/10
// to HeartbeatTimeout/5 (hashicorp/raft's fixed ratio), and an AppendEntries
// every CommitTimeout to 2×CommitTimeout. Heartbeats are what an idle
// cluster costs; CommitTimeout only paces the AppendEntries that tell
// followers the commit index when nothing else does, because Consensus tells
// them at once after every command it commits (see Nudge), so it can be as
// long as the heartbeat interval or longer.
type Timing struct {
	// HeartbeatTimeout is how long a follower goes without hearing from the
	// leader (a random 1-2× this) before it calls an election.
	HeartbeatTimeout time.Duration
	// ElectionTimeout is how long a candidate waits for votes (a random
	// 1-2× this) before it tries again. At least HeartbeatTimeout; zero
	// takes LANTiming's, or HeartbeatTimeout if that is longer.
	ElectionTimeout time.Duration
	// LeaderLeaseTimeout is how long a leader keeps leading without hearing
	// from a quorum. At most HeartbeatTimeout; zero takes half of it.
	LeaderLeaseTimeout time.Duration
	// CommitTimeout paces the AppendEntries that carry the commit index to
	// followers when no new entry does.
	CommitTimeout time.Duration
}

// Bounds on Timing. The floor is far below anything useful outside tests;
// the ceiling keeps a typo in a unit from disabling failure detection.
const (
	MinRaftTimeout = 5 * time.Millisecond
	MaxRaftTimeout = 5 * time.Minute
	// MinCommitTimeout is hashicorp/raft's own floor.
	MinCommitTimeout = time.Millisecond
)

// LANTiming is the default, for members on one LAN: a 3 s HeartbeatTimeout
// (three times hashicorp/raft's), so a dead leader is replaced within about
// 3-6 s, and a 3 s CommitTimeout. Idle, the leader sends each follower 1.7
// to 3.3 heartbeats and 0.17 to 0.33 AppendEntries a second. A key custody
// ledger commits a few entries a minute and nothing waits on a failover but
// joins and removals (unlock reads no leader), so the heartbeat is set for
// an idle cluster's cost: on 5 daemons (bench/idle) the heartbeats are
// nearly all of an idle node's traffic, and at 2 s they came to 2.1 kB/s per
// node, over issue 13's 2 KiB/s.
func LANTiming() Timing {
	return Timing{
		HeartbeatTimeout:   3 * time.Second,
		ElectionTimeout:    3 * time.Second,
		LeaderLeaseTimeout: 1500 * time.Millisecond,
		CommitTimeout:      3 * time.Second,
	}
}

// WANTiming is for members that are tens to hundreds of milliseconds apart,
// or on links that drop packets or cost money: a 5 s HeartbeatTimeout, so a
// slow round trip or a lost packet is not taken for a dead leader (a dead
// one is replaced within about 5-10 s), at 60% of LANTiming's heartbeats.
func WANTiming() Timing {
	return Timing{
		HeartbeatTimeout:   5 * time.Second,
		ElectionTimeout:    5 * time.Second,
		LeaderLeaseTimeout: 2500 * time.Millisecond,
		CommitTimeout:      5 * time.Second,
	}
}

// withDefaults fills the zero fields from LANTiming.
func (t Timing) withDefaults() Timing {
	d := LANTiming()
	if t.HeartbeatTimeout == 0 {
		t.HeartbeatTimeout = d.HeartbeatTimeout
	}
	if t.ElectionTimeout == 0 {
		t.ElectionTimeout = max(d.ElectionTimeout, t.HeartbeatTimeout)
	}
	if t.LeaderLeaseTimeout == 0 {
		t.LeaderLeaseTimeout = t.HeartbeatTimeout / 2
	}
	if t.CommitTimeout == 0 {
		t.CommitTimeout = d.CommitTimeout
	}
	return t
}

// Validate reports the first problem with t, after zero fields take their
// defaults: a timeout out of bounds, an ElectionTimeout shorter than the
// HeartbeatTimeout, or a LeaderLeaseTimeout longer than it.
func (t Timing) Validate() error {
	for name, d := range map[string]time.Duration{
		"HeartbeatTimeout": t.HeartbeatTimeout, "ElectionTimeout": t.ElectionTimeout,
		"LeaderLeaseTimeout": t.LeaderLeaseTimeout, "CommitTimeout": t.CommitTimeout,
	} {
		if d < 0 {
			return fmt.Errorf("consensus: %s %v is negative", name, d)
		}
	}
	t = t.withDefaults()
	for name, d := range map[string]time.Duration{
		"HeartbeatTimeout": t.HeartbeatTimeout, "ElectionTimeout": t.ElectionTimeout, "LeaderLeaseTimeout": t.LeaderLeaseTimeout,
	} {
		if d < MinRaftTimeout || d > MaxRaftTimeout {
			return fmt.Errorf("consensus: %s %v: want %v to %v", name, d, MinRaftTimeout, MaxRaftTimeout)
		}
	}
	if t.CommitTimeout < MinCommitTimeout || t.CommitTimeout > MaxRaftTimeout {
		return fmt.Errorf("consensus: CommitTimeout %v: want %v to %v", t.CommitTimeout, MinCommitTimeout, MaxRaftTimeout)
	}
	if t.ElectionTimeout < t.HeartbeatTimeout {
		return fmt.Errorf("consensus: ElectionTimeout %v is shorter than HeartbeatTimeout %v", t.ElectionTimeout, t.HeartbeatTimeout)
	}
	if t.LeaderLeaseTimeout > t.HeartbeatTimeout {
		return fmt.Errorf("consensus: LeaderLeaseTimeout %v is longer than HeartbeatTimeout %v", t.LeaderLeaseTimeout, t.HeartbeatTimeout)
	}
	return nil
}

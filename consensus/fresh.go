package consensus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Fresh returns nil once this node's state machine has applied every command
// up to the commit index that a leader confirmed, after Fresh was called, to
// be its commit index while it was still the leader (Raft's read index, §6.4
// of the Raft thesis). Everything committed before the call is then visible
// in View, so a holder can serve from its ledger knowing that it did not miss
// a removal (rule S9).
//
// On the leader it records the last command at or below its commit index,
// confirms its leadership with a round of heartbeats (raft.VerifyLeader) and
// waits for its own FSM. On a
// follower it asks the leader over the forward protocol, which does the same
// there and returns the index, then waits until it has applied that index
// (WaitApplied). Concurrent callers share one round, but never one that
// started before they called. It retries with the leader of the moment until
// ctx ends.
//
// The error wraps ErrNoLeader when no leader confirmed an index before ctx
// ended, and ErrBehind when one did but this node had not applied it by then.
// Fresh trusts the leader's answer: Raft is crash-tolerant, not Byzantine.
func (c *Consensus) Fresh(ctx context.Context) error {
	var last error
	for {
		rounds := c.remoteReads
		if c.IsLeader() {
			rounds = c.localReads
		}
		idx, err := rounds.do(ctx)
		if err == nil {
			if err := c.WaitApplied(ctx, idx); err != nil {
				return fmt.Errorf("%w: applied %d of the leader's commit index %d: %w", ErrBehind, c.fsm.lastIndex.Load(), idx, err)
			}
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			if errors.Is(last, ErrNoLeader) {
				return fmt.Errorf("%w: %w", last, ctx.Err())
			}
			return fmt.Errorf("%w: %v: %w", ErrNoLeader, last, ctx.Err())
		case <-time.After(retryInterval):
		}
	}
}

// readIndexLocal is one read-index round on the leader. It reads the commit
// index first, then confirms leadership: any entry committed before the round
// started is at or below the index, and no other leader can have committed
// anything newer unless this one has lost a quorum, which VerifyLeader would
// have seen.
func (c *Consensus) readIndexLocal(timeout time.Duration) (uint64, error) {
	deadline := time.Now().Add(timeout)
	if c.raft.State() != raft.Leader {
		return 0, ErrNotLeader
	}
	idx, term := c.raft.CommitIndex(), c.raft.CurrentTerm()
	if !c.committedInTerm(idx, term) {
		// A new leader learns the cluster's commit index only when an entry
		// of its own term commits (Raft §5.4.2): until then its own commit
		// index can lag what its predecessor committed. Commit one.
		if err := c.raft.Barrier(time.Until(deadline)).Error(); err != nil {
			return 0, c.leaderErr(err)
		}
		idx = c.raft.CommitIndex()
	}
	idx = c.lastCommand(idx)
	f := c.raft.VerifyLeader()
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			return 0, c.leaderErr(err)
		}
		return idx, nil
	case <-t.C:
		return 0, fmt.Errorf("%w: leadership not confirmed within %v", ErrNoLeader, timeout)
	}
}

// readIndexScan bounds how far back lastCommand looks for a command. Idle
// clusters append barriers without commands (a nudge when a member
// connects, an election's no-op): 64 was passed after a few restarts, the
// read index then named a barrier, and holders' Fresh waited for its
// commit until they gave up (BenchmarkUnlock -unlock.leader: 3 to 6
// restarts in 20 took 3-5 s at a 3 s CommitTimeout). The last 256 entries
// are in the log cache; older ones are a bbolt read each, microseconds.
const readIndexScan = 1024

// lastCommand returns the index of the last command entry at or below idx,
// 0 if there is none, or idx itself if it cannot tell (the entries were
// compacted into a snapshot, or more than readIndexScan in a row are not
// commands). A follower must apply everything committed before a read, but
// only commands change what it reads; a barrier, a no-op or a configuration
// entry does not. The entry at the commit index is often the barrier of a
// nudge, whose own commit the followers learn only with the next
// AppendEntries, up to 2×CommitTimeout later: a read index that named it
// would have a follower's Fresh wait that long for nothing.
func (c *Consensus) lastCommand(idx uint64) uint64 {
	for i := idx; i > 0; i-- {
		if idx-i >= readIndexScan {
			return idx
		}
		var l raft.Log
		if err := c.logs.GetLog(i, &l); err != nil {
			return idx
		}
		if l.Type == raft.LogCommand {
			return i
		}
	}
	return 0
}

// committedInTerm reports whether the entry at idx, the commit index, is of
// the current term, which is true once this leader has committed any entry.
func (c *Consensus) committedInTerm(idx, term uint64) bool {
	if idx == 0 {
		return false
	}
	var l raft.Log
	if err := c.logs.GetLog(idx, &l); err != nil {
		return false
	}
	return l.Term == term
}

// readIndexRemote is one read-index round on a follower: it asks the leader.
func (c *Consensus) readIndexRemote(timeout time.Duration) (uint64, error) {
	if c.IsLeader() {
		return c.readIndexLocal(timeout)
	}
	leader := c.forwardTo()
	if leader == "" || leader == c.ID() {
		return 0, ErrNoLeader
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.forward.readIndex(ctx, leader)
}

// readRounds coalesces read-index requests. A caller joins the round that has
// not started yet, creating it if there is none; a single goroutine runs the
// rounds one after another. A round therefore starts only after every caller
// that joined it had called, so its answer is never older than any of its
// callers, while a flood of callers costs one round at a time.
type readRounds struct {
	run func(timeout time.Duration) (uint64, error)
	// timeout bounds one round.
	timeout time.Duration

	mu      sync.Mutex
	next    *readRound
	running bool
}

type readRound struct {
	done   chan struct{}
	joined int // callers waiting on it
	index  uint64
	err    error
}

func newReadRounds(run func(time.Duration) (uint64, error), timeout time.Duration) *readRounds {
	return &readRounds{run: run, timeout: timeout}
}

// do joins the next round and waits for it, bounded by ctx.
func (rr *readRounds) do(ctx context.Context) (uint64, error) {
	rr.mu.Lock()
	if rr.next == nil {
		rr.next = &readRound{done: make(chan struct{})}
	}
	r := rr.next
	r.joined++
	if !rr.running {
		rr.running = true
		go rr.loop()
	}
	rr.mu.Unlock()
	select {
	case <-r.done:
		return r.index, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (rr *readRounds) loop() {
	for {
		rr.mu.Lock()
		r := rr.next
		rr.next = nil
		if r == nil {
			rr.running = false
			rr.mu.Unlock()
			return
		}
		rr.mu.Unlock()
		r.index, r.err = rr.run(rr.timeout)
		close(r.done)
	}
}

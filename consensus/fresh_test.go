package consensus

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// Rule S9: a follower cut off from the leader cannot confirm that it is
// fresh, and says so within its context; a connected follower and the leader
// can.
func TestFreshFailsWhenCutOff(t *testing.T) {
	cl := newCluster(t, 3)
	leaderID := cl.waitLeader(cl.nodes)
	leader := cl.byID(leaderID)
	f := cl.followers(leaderID)
	cut, connected := f[0], f[1]
	cl.block(cut, leader)
	cl.block(leader, cut)
	apply(t, leader.c, "while cut off")

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err := cut.c.Fresh(ctx)
	if !errors.Is(err, ErrNoLeader) {
		t.Fatalf("Fresh on a follower cut off from the leader: %v, want ErrNoLeader", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Fresh took %v, past its 1 s context", d)
	}
	if cut.sm.Len() != 0 {
		t.Fatal("the cut-off follower applied the entry; the test shows nothing")
	}

	for _, nd := range []*testNode{connected, leader} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := nd.c.Fresh(ctx); err != nil {
			t.Fatalf("Fresh on connected node %s: %v", nd.host.ID(), err)
		}
		cancel()
		if nd.sm.Len() != 1 {
			t.Fatalf("Fresh returned on %s before it applied the committed entry", nd.host.ID())
		}
	}
}

// A follower that can reach the leader but has not applied an entry the
// leader committed waits for it: it errs (ErrBehind) while it cannot apply
// it, and returns nil only once it has.
func TestFreshWaitsForCommittedEntry(t *testing.T) {
	cl := newCluster(t, 3)
	leaderID := cl.waitLeader(cl.nodes)
	leader := cl.byID(leaderID)
	behind := cl.followers(leaderID)[0]
	// The follower refuses the leader's Raft RPCs, but the leader still
	// answers its read-index requests; the hint keeps it asking the leader
	// once its own Raft gives up on it.
	behind.c.SetLeaderHint(leaderID)
	cl.block(behind, leader)
	apply(t, leader.c, "committed without the follower")

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := behind.c.Fresh(ctx); !errors.Is(err, ErrBehind) {
		t.Fatalf("Fresh on a follower that cannot apply the commit index: %v, want ErrBehind", err)
	}
	if behind.sm.Len() != 0 {
		t.Fatal("the follower applied the entry; the test shows nothing")
	}

	cl.heal()
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := behind.c.Fresh(ctx); err != nil {
		t.Fatalf("Fresh after healing: %v", err)
	}
	if behind.sm.Len() != 1 {
		t.Fatal("Fresh returned before the follower applied the committed entry")
	}
}

// The leader only learns what its followers already know of the commit
// index at the next AppendEntries (up to 2×CommitTimeout later). A follower's
// Fresh must wait for that, not return on the strength of its own old index.
func TestFreshWaitsForCommitIndexToArrive(t *testing.T) {
	const commitTimeout = 1500 * time.Millisecond
	cl := newClusterWith(t, 3, func(c *Config) {
		c.CommitTimeout = commitTimeout
		c.noAutoNudge = true // the leader would tell the follower at once
	})
	leaderID := cl.waitLeader(cl.nodes)
	leader := cl.byID(leaderID)
	f := cl.followers(leaderID)[0]
	waitFor(t, "the follower to settle", 3*commitTimeout, func() bool { return f.c.AppliedIndex() == leader.c.AppliedIndex() })
	apply(t, leader.c, "one")
	if f.sm.Len() != 0 {
		t.Skip("the commit index reached the follower before the test could look; nothing to show")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*commitTimeout)
	defer cancel()
	if err := f.c.Fresh(ctx); err != nil {
		t.Fatal(err)
	}
	if f.sm.Len() != 1 {
		t.Fatal("Fresh returned before the follower applied what the leader had committed")
	}
}

// Concurrent callers share a round, but only one that starts after they
// called: a caller that arrives while a round is running waits for the next
// one and never gets the older answer.
func TestReadRoundsNeverShareAnOlderRound(t *testing.T) {
	release := make(chan struct{})
	started := make(chan uint64, 10)
	var mu sync.Mutex
	var rounds uint64
	rr := newReadRounds(func(time.Duration) (uint64, error) {
		mu.Lock()
		rounds++
		n := rounds
		mu.Unlock()
		started <- n
		<-release
		return n, nil
	}, time.Second)

	ctx := context.Background()
	first := make(chan uint64)
	go func() { n, _ := rr.do(ctx); first <- n }()
	if n := <-started; n != 1 {
		t.Fatalf("round %d started first", n)
	}
	// Round 1 is running; these callers arrive after it started.
	var wg sync.WaitGroup
	got := make(chan uint64, 8)
	for range 8 {
		wg.Go(func() { n, _ := rr.do(ctx); got <- n })
	}
	waitFor(t, "the callers to join the next round", 5*time.Second, func() bool {
		rr.mu.Lock()
		defer rr.mu.Unlock()
		return rr.next != nil && rr.next.joined == 8
	})
	release <- struct{}{}
	if n := <-first; n != 1 {
		t.Fatalf("the first caller got round %d", n)
	}
	if n := <-started; n != 2 {
		t.Fatalf("round %d started second", n)
	}
	release <- struct{}{}
	wg.Wait()
	close(got)
	for n := range got {
		if n != 2 {
			t.Fatalf("a caller that arrived during round 1 got round %d's answer", n)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if rounds != 2 {
		t.Fatalf("%d rounds ran for 9 callers, want 2", rounds)
	}
}

// After a command, an idle cluster appends barriers and no-ops (a nudge per
// member that connects, an election's no-op) that change nothing a reader
// sees. The read index names the last command, however many of those follow
// it (100 here, past the old scan of 64): a follower that applied the
// command is fresh at once, instead of waiting up to 2×CommitTimeout (4 s
// here) to learn that the last barrier committed.
func TestReadIndexSkipsManyBarriers(t *testing.T) {
	cl := newClusterWith(t, 3, func(c *Config) { c.CommitTimeout = 2 * time.Second })
	leaderID := cl.waitLeader(cl.nodes)
	leader := cl.byID(leaderID)
	fol := cl.byID(cl.followers(leaderID)[0].host.ID())
	apply(t, leader.c, "the last command")
	waitFor(t, "the follower to apply the command", 10*time.Second, func() bool { return fol.sm.Len() == 1 })
	for range 100 {
		if err := leader.c.raft.Barrier(5 * time.Second).Error(); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := leader.c.readIndexLocal(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if last := leader.c.fsm.lastIndex.Load(); idx != last {
		t.Fatalf("read index %d, want the last command's index %d", idx, last)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := fol.c.Fresh(ctx); err != nil {
		t.Fatalf("Fresh on a follower that applied the last command: %v", err)
	}
}

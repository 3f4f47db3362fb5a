package consensus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// A member the leader's state knows, but that is not (yet) a Raft server,
// forwards through its leader hint: a joiner records its receipts before it
// is added to Raft. Before the leader's state knows it, it is refused.
func TestMemberOutsideConfigurationForwardsThroughHint(t *testing.T) {
	cl := newCluster(t, 3)
	leader := cl.waitLeader(cl.nodes)

	nc := &testNode{dir: t.TempDir(), host: newHost(t), sm: &listSM{}, allow: cl.isNode}
	t.Cleanup(func() { nc.host.Close() })
	for _, nd := range cl.nodes {
		nc.host.Peerstore().AddAddrs(nd.host.ID(), nd.host.Addrs(), time.Hour)
	}
	c, err := New(fastConfig(nc))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := c.Apply(ctx, []byte("early")); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("apply with no leader and no hint: %v, want ErrNoLeader", err)
	}
	c.SetLeaderHint(leader)
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Apply(ctx, []byte("stranger")); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("apply before the leader knows the peer as a member: %v, want ErrNotAllowed", err)
	}

	cl.addMember(nc.host.ID())
	res := apply(t, c, "joiner")
	if len(res) == 0 {
		t.Fatal("forwarded apply returned no state-machine result")
	}
	waitFor(t, "every server to apply the forwarded command", 5*time.Second, func() bool {
		for _, nd := range cl.nodes {
			if nd.sm.Len() != 1 {
				return false
			}
		}
		return true
	})
	if c.InConfiguration(nc.host.ID()) || nc.sm.Len() != 0 {
		t.Fatal("the forwarding peer became a server; the test no longer shows forwarding from outside the configuration")
	}
}

// nudgeCommitTimeout is long enough that a follower applying a command
// within nudgeProof of its commit cannot owe it to the CommitTimeout tick:
// the leader re-arms that timer (a random 1-2× CommitTimeout) whenever it
// sends an AppendEntries, so the next tick is at least CommitTimeout after
// the entry went out.
const (
	nudgeCommitTimeout = time.Second
	nudgeProof         = nudgeCommitTimeout / 2
	// nudgeTarget is the latency the nudge is for: a round trip and a
	// follower's fsync, on a loaded machine. Medians are held to it.
	nudgeTarget = 50 * time.Millisecond
)

// followersOf returns the nodes other than leader.
func followersOf(cl *cluster, leader *testNode) []*testNode {
	var out []*testNode
	for _, nd := range cl.live() {
		if nd != leader {
			out = append(out, nd)
		}
	}
	return out
}

// waitAllApplied waits, on each node's apply events rather than by polling,
// until every node's state machine holds n commands; it returns how long
// that took, or fails the test after timeout.
func waitAllApplied(t *testing.T, nodes []*testNode, n int, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for _, nd := range nodes {
		for {
			ch := nd.c.AppliedChan()
			if nd.sm.Len() >= n {
				break
			}
			select {
			case <-ch:
			case <-deadline.C:
				t.Fatalf("node %s holds %d commands after %v, want %d; Raft %+v", nd.host.ID(), nd.sm.Len(), timeout, n, nd.c.RaftState())
			}
		}
	}
	return time.Since(start)
}

func medianDuration(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// With CommitTimeout at 1 s and no automatic nudges, followers learn of a
// command only at the leader's next AppendEntries, a second or more later;
// Nudge sends one at once, and they apply within a round trip.
func TestNudgeCarriesCommitToFollowers(t *testing.T) {
	cl := newClusterWith(t, 3, func(c *Config) {
		c.CommitTimeout = nudgeCommitTimeout
		c.noAutoNudge = true
	})
	leader := cl.byID(cl.waitLeader(cl.nodes))
	followers := followersOf(cl, leader)
	var lat []time.Duration
	for i := range 5 {
		apply(t, leader.c, fmt.Sprintf("cmd-%d", i))
		for _, f := range followers {
			if f.sm.Len() != i {
				t.Fatalf("follower %s applied command %d before a nudge; the test cannot tell a nudge from the timer", f.host.ID(), i)
			}
		}
		leader.c.Nudge()
		lat = append(lat, waitAllApplied(t, followers, i+1, nudgeProof))
	}
	med := medianDuration(lat)
	t.Logf("followers applied %v after a nudge (median %v; CommitTimeout %v)", lat, med, nudgeCommitTimeout)
	if med > nudgeTarget {
		t.Errorf("median %v from a nudge to the followers applying, want at most %v", med, nudgeTarget)
	}
}

// Without any call to Nudge, the leader nudges after every command it
// commits, its own or forwarded: with CommitTimeout at 1 s, followers still
// apply within a round trip of the commit.
func TestLeaderNudgesAfterEveryCommit(t *testing.T) {
	cl := newClusterWith(t, 3, func(c *Config) { c.CommitTimeout = nudgeCommitTimeout })
	leader := cl.byID(cl.waitLeader(cl.nodes))
	followers := followersOf(cl, leader)
	var lat []time.Duration
	for i := range 6 {
		proposer := leader
		if i%2 == 1 {
			proposer = followers[0] // forwarded to the leader
		}
		apply(t, proposer.c, fmt.Sprintf("cmd-%d", i))
		lat = append(lat, waitAllApplied(t, cl.nodes, i+1, nudgeProof))
	}
	med := medianDuration(lat)
	t.Logf("every node applied %v after Apply returned (median %v; CommitTimeout %v)", lat, med, nudgeCommitTimeout)
	if med > nudgeTarget {
		t.Errorf("median %v from a commit to every node applying it, want at most %v", med, nudgeTarget)
	}
}

// A nudge leaves its barrier at the leader's commit index, and the followers
// learn that the barrier committed only at the next CommitTimeout tick. A
// follower's Fresh must not wait for that: only commands change the state.
func TestFreshIgnoresTrailingBarrier(t *testing.T) {
	const commitTimeout = 2 * time.Second
	cl := newClusterWith(t, 3, func(c *Config) { c.CommitTimeout = commitTimeout })
	leader := cl.byID(cl.waitLeader(cl.nodes))
	f := followersOf(cl, leader)[0]
	apply(t, leader.c, "one")
	waitAllApplied(t, cl.nodes, 1, commitTimeout/2)
	cmd := leader.c.fsm.lastIndex.Load()
	waitFor(t, "the nudge's barrier to commit on the leader", commitTimeout/2, func() bool {
		return !leader.c.nudging() && leader.c.raft.CommitIndex() > cmd
	})
	if f.c.raft.CommitIndex() >= leader.c.raft.CommitIndex() {
		t.Fatal("the follower already knows the barrier committed; the test cannot show that Fresh does not wait for it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*commitTimeout)
	defer cancel()
	start := time.Now()
	if err := f.c.Fresh(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("a follower's Fresh took %v with a barrier at the leader's commit index (CommitTimeout %v)", took, commitTimeout)
	if took > commitTimeout/2 {
		t.Fatalf("Fresh took %v: it waited for the barrier's commit to reach the follower", took)
	}
}

// A new leader nudges twice once it is elected: its followers learn at once
// that the entries of the previous term it committed are committed. Here the
// old leader commits a command and dies before any follower hears that it
// did.
func TestNewLeaderNudges(t *testing.T) {
	const commitTimeout = 2 * time.Second
	cl := newClusterWith(t, 3, func(c *Config) {
		c.CommitTimeout = commitTimeout
		c.noAutoNudge = true
	})
	old := cl.byID(cl.waitLeader(cl.nodes))
	apply(t, old.c, "one")
	for _, f := range followersOf(cl, old) {
		if f.sm.Len() != 0 {
			t.Fatalf("follower %s applied before the leader died; the test cannot show the new leader's nudge", f.host.ID())
		}
	}
	cl.kill(slices.Index(cl.nodes, old))
	var leader *testNode
	waitFor(t, "a new leader", 10*time.Second, func() bool {
		for _, nd := range cl.live() {
			if nd.c.IsLeader() {
				leader = nd
				return true
			}
		}
		return false
	})
	took := waitAllApplied(t, cl.live(), 1, commitTimeout/2)
	t.Logf("every live node applied the old leader's last command %v after %s was seen leading (CommitTimeout %v)", took, leader.host.ID(), commitTimeout)
}

// A follower that restarts applies nothing past its snapshot until an
// AppendEntries tells it the commit index. The leader nudges when the
// follower connects or answers heartbeats again, so it catches up at once,
// not at the next CommitTimeout tick.
func TestRestartedFollowerCatchesUpAtOnce(t *testing.T) {
	// A long CommitTimeout, and bounds well under it but loose enough for
	// two busy cores under -race: catching up within commitTimeout/4 can
	// only be the nudge.
	const commitTimeout = 20 * time.Second
	cl := newClusterWith(t, 3, func(c *Config) { c.CommitTimeout = commitTimeout })
	leader := cl.byID(cl.waitLeader(cl.nodes))
	f := followersOf(cl, leader)[0]
	apply(t, leader.c, "before")
	waitAllApplied(t, cl.nodes, 1, commitTimeout/4)

	idx := slices.Index(cl.nodes, f)
	priv := f.host.Peerstore().PrivKey(f.host.ID())
	cl.kill(idx)
	apply(t, leader.c, "while down")

	f.host = newHostWithKey(t, priv)
	for _, nd := range cl.live() {
		f.host.Peerstore().AddAddrs(nd.host.ID(), nd.host.Addrs(), time.Hour)
		nd.host.Peerstore().AddAddrs(f.host.ID(), f.host.Addrs(), time.Hour)
	}
	f.sm = &listSM{}
	start := time.Now()
	cl.start(f)
	// A restarted node dials the members it knows, as the node does.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.host.Connect(ctx, peer.AddrInfo{ID: leader.host.ID(), Addrs: leader.host.Addrs()}); err != nil {
		t.Fatal(err)
	}
	// Raft's own commit tick comes 1-2 CommitTimeouts after the restart;
	// anything well before it is the nudge.
	waitAllApplied(t, []*testNode{f}, 2, commitTimeout*3/4)
	t.Logf("the restarted follower applied its log and the command it missed %v after it started (CommitTimeout %v)", time.Since(start).Round(time.Millisecond), commitTimeout)
}

// connOf is a connection from p, all connected reads of it.
type connOf struct {
	network.Conn
	p peer.ID
}

func (c connOf) RemotePeer() peer.ID { return c.p }

// The leader nudges when a server connects at most once per heartbeat
// timeout per server, by the node's clock (Config.Now), which the test moves;
// connections inside that window share one nudge at its end, so the latest
// is never left without one.
func TestConnectNudgePacedByClock(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	cl := newClusterWith(t, 3, func(cfg *Config) { cfg.Now = now })
	leaderID := cl.waitLeader(cl.nodes)
	leader := cl.byID(leaderID)
	f := cl.followers(leaderID)[0].host.ID()
	hb := leader.c.heartbeat
	// connect reports the barriers that n connections from f make the
	// leader append at once (due reports whether one more is due at the
	// end of the window), and then the barriers appended when it ends.
	connect := func(n int) (now uint64, due bool, later uint64) {
		t.Helper()
		cl.quiesce()
		before := leader.c.raft.LastIndex()
		for range n {
			leader.c.connected(nil, connOf{p: f})
		}
		due = leader.c.connectNudgeDue(f)
		cl.quiesce()
		now = leader.c.raft.LastIndex() - before
		waitFor(t, "the due nudge", 10*time.Second, func() bool { return !leader.c.connectNudgeDue(f) })
		cl.quiesce()
		later = leader.c.raft.LastIndex() - before - now
		if l := cl.waitLeader(cl.live()); l != leaderID {
			t.Skipf("leadership moved to %s on a loaded machine; the pacing is the leader's", l)
		}
		return now, due, later
	}

	clock.Add(int64(2 * hb)) // past the nudges of the cluster's formation
	if n, due, later := connect(1); n != 1 || due || later != 0 {
		t.Fatalf("first connection: %d barriers at once, one due %v, %d later; want 1, false, 0", n, due, later)
	}
	// Inside the window: the nudge is due at its end (1 ms later by the
	// moved clock), one for both connections.
	clock.Add(int64(hb - time.Millisecond))
	if n, due, later := connect(2); !due || n+later != 1 {
		t.Fatalf("two connections within the heartbeat timeout of the last nudge: one due %v, %d barriers in all; want one due and 1 barrier", due, n+later)
	}
	clock.Add(int64(hb))
	if n, due, later := connect(1); n != 1 || due || later != 0 {
		t.Fatalf("a connection a heartbeat timeout after the last nudge: %d barriers at once, one due %v, %d later; want 1, false, 0", n, due, later)
	}
}

package consensus

import (
	"context"
	"errors"
	"testing"
	"time"
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

// With a CommitTimeout of seconds, followers learn of a command only at the
// leader's next AppendEntries; Nudge sends one at once.
func TestNudgeCarriesCommitToFollowers(t *testing.T) {
	const commitTimeout = 3 * time.Second
	cl := newClusterWith(t, 3, func(c *Config) { c.CommitTimeout = commitTimeout })
	leader := cl.byID(cl.waitLeader(cl.nodes))
	var followers []*testNode
	for _, nd := range cl.nodes {
		if nd != leader {
			followers = append(followers, nd)
		}
	}
	waitFor(t, "followers to settle", 3*commitTimeout, func() bool {
		return followers[0].c.AppliedIndex() == leader.c.AppliedIndex() && followers[1].c.AppliedIndex() == leader.c.AppliedIndex()
	})

	apply(t, leader.c, "one")
	for _, f := range followers {
		if f.sm.Len() != 0 {
			t.Fatalf("follower %s applied before any commit index reached it; the test cannot tell a nudge from the timer", f.host.ID())
		}
	}
	start := time.Now()
	leader.c.Nudge()
	waitFor(t, "followers to apply after a nudge", commitTimeout/2, func() bool {
		return followers[0].sm.Len() == 1 && followers[1].sm.Len() == 1
	})
	t.Logf("followers applied %v after the nudge (CommitTimeout %v)", time.Since(start).Round(time.Millisecond), commitTimeout)
}

package node

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
)

// A joiner whose invite names first a member that has not applied the
// invite yet (here: cut off from Raft when it was issued) is told "unknown
// invite" by it, and asks the next member named instead of giving up: the
// join goes through. Seen in a benchmark build: "join refused:
// generations: unknown invite". Members still answer from their own ledger,
// so made-up invites cost no read index (TestJoinFlood).
func TestInviteNotYetAppliedIsNotFinal(t *testing.T) {
	var cut atomic.Value
	cut.Store(peer.ID(""))
	nodes := cuttableCluster(t, 3, cuttable(t, &cut, nil))
	leader := leaderOf(t, nodes)
	lag := followers(nodes, leader)[0]
	cut.Store(lag.ID())
	recheckAll(nodes...)

	now := time.Now()
	addrs := append(append([]string(nil), lag.inviteAddrs()...), leader.inviteAddrs()...)
	inv, err := newInvite(leader.ClusterID(), time.Hour, addrs, now)
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _ := inv.Key()
	if err := leader.apply(ctxT(t, 10*time.Second), generations.NewAddInvite(inv.Hash(), pub, inv.ExpiresAt, leader.ID(), now)); err != nil {
		t.Fatal(err)
	}
	known := false
	lag.view(func(l *generations.Ledger) { _, known = l.Invite(inv.Hash()) })
	if known {
		t.Fatal("the cut-off member knows the invite: the test shows nothing")
	}
	cfg := testConfig(t)
	cfg.Join = inv.Encode()
	j := startNode(t, cfg)
	waitFor(t, "the joiner to be active", 30*time.Second, func() bool {
		return leader.memberStatus(j.ID()) == generations.StatusActive
	})
}

package node

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
)

// The long chaos run (seed 193249143, open-generation-restart): a slow
// joiner's log had reached only the point where the member now leading was
// itself still joining. The joiner's admission refused the leader's
// AppendEntries ("outside the Raft configuration") though its join response
// named the leader a member, because allowMember consulted that response
// only for peers the ledger did not know at all; the joiner knew no leader
// for good. A peer the joiner's lagging ledger calls joining (or rejected,
// or lapsed) is admitted when the join response vouched for it; a removed
// peer never is, and without the response's word a joining peer is not.
func TestAllowMemberFollowsTheJoinResponseWhileTheLedgerLags(t *testing.T) {
	nodes := testCluster(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]

	// J stays joining: its pushes are all dropped.
	issued, err := a.Invite(ctxT(t, 10*time.Second), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	jcfg := testConfig(t)
	jcfg.Join = issued.Token
	jcfg.JoinTimeout = 20 * time.Second
	jcfg.setHooks(&testHooks{dropPush: func(peer.ID) bool { return true }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	jid := jcfg.identityPeer(t)
	go func() {
		if j, err := Start(ctx, jcfg); err == nil {
			j.Close()
		}
	}()
	waitFor(t, "J to be joining in b's ledger", 20*time.Second, func() bool {
		return b.memberStatus(jid) == generations.StatusJoining
	})
	if b.allowMember(jid) {
		t.Fatal("a joining peer no join response vouched for was admitted to Raft")
	}
	b.admitted.add(jid)
	if !b.allowMember(jid) {
		t.Fatal("a peer the join response named, still joining in the lagging ledger, was refused")
	}
	cancel()

	removeByMajority(t, c.ID(), a, b)
	waitFor(t, "c removed in b's ledger", 20*time.Second, func() bool {
		return b.memberStatus(c.ID()) == generations.StatusRemoved
	})
	b.admitted.add(c.ID())
	if b.allowMember(c.ID()) {
		t.Fatal("a removed peer was admitted to Raft because a join response named it")
	}
	if !b.allowMember(a.ID()) {
		t.Fatal("an active member was refused")
	}
}

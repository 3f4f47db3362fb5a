package node

import (
	"testing"
	"time"

	"github.com/p2pkey/p2pkey/generations"
)

// A member down while another joined restarts on a ledger that does not
// know the newcomer, and the newcomer leads now: its Raft refuses the
// leader's AppendEntries (rules S1, S8), so without help it would know no
// leader and never catch up. It asks an active member of its own ledger,
// which names the current members from a confirmed ledger; the restarted
// member then follows the newcomer and learns it is active.
func TestStaleMemberFollowsALeaderItsLedgerDoesNotKnow(t *testing.T) {
	nodes := testCluster(t, 4)
	waitUnlocked(t, nodes...)
	d := nodes[3]
	dcfg := d.cfg
	dcfg.Bootstrap, dcfg.Join = false, ""
	d.Close()

	j := joinNode(t, nodes[0])
	up := []*Node{nodes[0], nodes[1], nodes[2], j}
	waitFor(t, "J to be an active voter", 30*time.Second, func() bool {
		return nodes[0].memberStatus(j.ID()) == generations.StatusActive && j.isVoter()
	})
	leader := leaderOf(t, up)
	if leader != j {
		if err := leader.cons.TransferLeadershipTo(j.ID(), 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "J to lead", 20*time.Second, func() bool { return j.cons.IsLeader() })

	d2 := startNode(t, dcfg)
	if st := d2.memberStatus(j.ID()); st == generations.StatusActive {
		t.Fatalf("the restarted member's ledger already knows J (%v): the test needs it stale", st)
	}
	defer func() {
		if t.Failed() {
			d2.catchUp.vouch.mu.Lock()
			t.Logf("restarted member: leader %q, refused streams %d, vouched %v, J status %v, J is %s", d2.cons.Leader(), d2.cons.RefusedStreams(), d2.catchUp.vouch.until, d2.memberStatus(j.ID()), j.ID())
			d2.catchUp.vouch.mu.Unlock()
		}
	}()
	waitFor(t, "the restarted member to follow J and learn it is active", 30*time.Second, func() bool {
		return d2.cons.Leader() == j.ID() && d2.memberStatus(j.ID()) == generations.StatusActive
	})
}

// The long chaos run (seed 581884051, churn) crashed a restarting member:
// its Raft refused a stream from inside consensus.New, and the catch-up
// round read the ledger through a consensus not yet assigned. A refusal
// before the node is ready starts nothing.
func TestRefusalWhileStartingAsksNothing(t *testing.T) {
	n := &Node{} // no consensus, no ledger, no host: what a starting node has
	n.onRaftRefused("12D3KooWStranger")
	if n.catchUp.vouch.running {
		t.Fatal("a refusal before the node was ready started a catch-up round")
	}
}

package node

import (
	"testing"

	"github.com/p2pkey/p2pkey/generations"
)

// A node that stops leaves a Raft snapshot of its ledger behind, so its next
// start restores the ledger in one step instead of replaying, and checking
// the signatures of, every entry since the last snapshot: that replay was
// most of the restart-to-unlocked tail at 15 nodes (issue 13).
func TestStopLeavesSnapshot(t *testing.T) {
	nodes := testCluster(t, 3)
	waitUnlocked(t, nodes...)
	waitFullCoverage(t, nodes)
	var gen uint64
	nodes[1].view(func(l *generations.Ledger) {
		if g, ok := l.Current(); ok {
			gen = g.Number
		}
	})
	applied := nodes[1].cons.RaftState().AppliedIndex
	again := restart(t, nodes[1])
	if st := again.cons.RaftState(); st.LastSnapshotIndex < applied {
		t.Fatalf("restarted with a snapshot at index %d; the node had applied %d when it stopped", st.LastSnapshotIndex, applied)
	}
	// The ledger is there as Start returns, before a leader is heard from.
	var got uint64
	again.view(func(l *generations.Ledger) {
		if g, ok := l.Current(); ok {
			got = g.Number
		}
	})
	if got != gen {
		t.Fatalf("restarted ledger's current generation is %d, want %d", got, gen)
	}
	waitUnlocked(t, again)
}

package node

import (
	"errors"
	"testing"
	"time"

	"github.com/p2pkey/p2pkey/generations"
)

// Issue 16: a locked node that cannot reach its peers shows its cluster,
// its holders and k of t from what it knows on disk, not a blank cluster and
// an empty member table.
func TestLockedAloneStatusFromDisk(t *testing.T) {
	nodes := testCluster(t, 3)
	waitUnlocked(t, nodes...)
	waitFullCoverage(t, nodes)
	x := nodes[2]
	cluster := x.ClusterID()
	cfg := x.cfg
	cfg.Bootstrap, cfg.Join = false, ""
	for _, n := range nodes {
		n.Close()
	}
	alone := startNode(t, cfg)
	var st Status
	waitFor(t, "the lone node's status to name its holders", 10*time.Second, func() bool {
		st = alone.Status()
		return len(st.Members) == 3 && st.Unlock.Need == 2 && len(st.Unlock.Awaiting) > 0
	})
	if st.Lock == LockUnlocked {
		t.Fatalf("a node with no holders reachable is %s", st.Lock)
	}
	if st.ClusterID != cluster {
		t.Fatalf("cluster %q, want %q from its disk", st.ClusterID, cluster)
	}
	if st.Unlock.Have >= st.Unlock.Need || len(st.Unlock.Answered)+len(st.Unlock.Awaiting) != 3 {
		t.Errorf("unlock progress does not account for its 3 holders: %+v", st.Unlock)
	}
	t.Logf("lone node: %s, %+v", st.Lock, st.Unlock)
}

// The node reads time through Config.Clock: a joiner whose clock is two
// hours ahead sees a one-hour invite as expired, without anyone waiting.
func TestClockInjected(t *testing.T) {
	nodes := testCluster(t, 1)
	issued, err := nodes[0].Invite(ctxT(t, 10*time.Second), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Join = issued.Token
	cfg.Clock = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if _, err := Start(ctxT(t, 10*time.Second), cfg); !errors.Is(err, generations.ErrInviteExpired) {
		t.Fatalf("a joiner two hours ahead started with a one-hour invite: %v", err)
	}
}

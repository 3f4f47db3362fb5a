package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/p2pkey/p2pkey/internal/testkit"
)

// TestLockedFromDisk: a node restarted alone (its peers down) is locked and
// cannot reach anyone, yet status shows its cluster ID, the holders it
// waits on and k of t, from what it knows on disk, not blanks; and its
// warning names the member it cannot reach.
func TestLockedFromDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two daemons")
	}
	n1, n2, d1, d2 := twoNodes(t, nil)
	var before struct {
		ClusterID string `json:"cluster_id"`
	}
	if err := json.Unmarshal([]byte(must(t, n1, "status", "--json")), &before); err != nil || before.ClusterID == "" {
		t.Fatalf("status --json before: %v", err)
	}
	id2 := status(t, n2).PeerID
	d2.stop(t)
	d1.stop(t)
	d1 = startDaemon(t, n1, nil)
	var out string
	if err := testkit.Poll(20*time.Second, func() (bool, string) {
		r := cli(t, n1, nil, "status")
		out = r.stdout
		return r.code == 0 && strings.Contains(out, "waiting on"), fmt.Sprint(r)
	}); err != nil {
		t.Fatalf("no locked status naming the awaited holder: %v", err)
	}
	t.Logf("status:\n%s", out)
	for _, want := range []string{
		"cluster:     " + before.ClusterID + "\n",
		"lock:        locked: 1 of 2 shares",
		"holders:     answered ", "waiting on " + short(id2),
		"warning:     there is no Raft leader, so the cluster cannot commit anything: this node reaches 1 of 2 voting members and a leader needs 2",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("locked status lacks %q", want)
		}
	}
	if r := row(out, id2); !strings.Contains(r, "none") {
		t.Errorf("the awaited holder's row: %q", r)
	}
	if !strings.Contains(d1.log(), "running in cluster "+before.ClusterID) {
		t.Errorf("the daemon's start line lacks the cluster:\n%s", d1.log())
	}
	if r := cli(t, n1, nil, "key", "--wait", "--timeout", "1s"); r.code != exitLocked || !strings.Contains(r.stderr, "still locked after 1s: 1 of 2 shares") {
		t.Errorf("key --wait on the locked node: %v", r)
	}
}

package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/p2pkey/p2pkey/internal/testkit"
)

// TestRoughLive runs the rough edges that need real daemons on one
// two-node cluster:
//   - --bootstrap and --join on a node that is already a member: exit 2,
//     naming its cluster;
//   - members names the leader and each member's Raft role;
//   - invite without a Raft leader fails within seconds and says why, not
//     `Post "http://p2pkey/v1/invite": context deadline exceeded` after 30 s;
//   - remove takes the short ID the tables print;
//   - key --wait --timeout 3s on a removed node exits 3 saying it was
//     removed.
func TestRoughLive(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two daemons")
	}
	n1, n2, d1, d2 := twoNodes(t, nil)
	id1, id2 := status(t, n1).PeerID, status(t, n2).PeerID

	for _, args := range [][]string{{"--bootstrap"}, {"--join", "-"}} {
		r := cli(t, n1, strings.NewReader(invite(t, n1)+"\n"), append([]string{"daemon", "--no-mdns"}, args...)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, "this node is already a member of cluster ") || !strings.Contains(r.stderr, "without --bootstrap or --join") {
			t.Errorf("daemon %s on a member: %v", strings.Join(args, " "), r)
		}
	}

	out := must(t, n1, "members")
	if !strings.HasPrefix(out, "leader: ") {
		t.Errorf("members does not name the leader:\n%s", out)
	}
	t.Logf("members:\n%s", out)
	roles := row(out, id1) + row(out, id2)
	if !strings.Contains(roles, "leader") || !strings.Contains(roles, "follower") {
		t.Errorf("members does not show a leader and a follower:\n%s", out)
	}

	// Without node 2 there is no quorum: invite says so, quickly.
	d2.stop(t)
	testkit.WaitFor(t, "node 1 to lose its leader after node 2 stopped", 30*time.Second, func() bool { return leaderOf(t, n1) == "" })
	start := time.Now()
	r := cli(t, n1, nil, "invite")
	if r.code != 1 || !strings.Contains(r.stderr, "cannot issue an invite: there is no Raft leader") || !strings.Contains(r.stderr, id2) || strings.Contains(r.stderr, "http://") {
		t.Errorf("invite without quorum: %v", r)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("invite without quorum took %v", d)
	}
	t.Logf("invite without quorum: %s", r.stderr)
	t.Logf("status without quorum:\n%s", must(t, n1, "status"))
	startDaemon(t, n2, nil) // stopped by the test's cleanup
	if r := cli(t, n2, nil, "wait", "--members", "2", "--unlocked", "--timeout", "60s"); r.code != 0 {
		t.Fatalf("node 2 back: %v", r)
	}

	// remove by the short form the tables print.
	r = cli(t, n1, nil, "remove", "--yes", short(id2))
	if r.code != 0 || !strings.HasPrefix(r.stdout, id2+": removed (final)") {
		t.Fatalf("remove %s: %v", short(id2), r)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r = cli(t, n2, nil, "key", "--wait", "--timeout", "3s")
		if r.code == exitLocked && strings.Contains(r.stderr, "removed") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("key --wait on a removed node: %v", r)
		}
	}
	t.Logf("key --wait on a removed node: %s", r.stderr)
	t.Logf("generations:\n%s", must(t, n1, "generations"))
	if strings.Contains(r.stderr, "http://") || strings.Contains(r.stderr, "deadline exceeded") || strings.Contains(r.stderr, "locked: locked") {
		t.Errorf("key --wait on a removed node: %v", r)
	}
	_ = d1
}

// leaderOf is the leader node data's daemon knows, or "".
func leaderOf(t *testing.T, data string) string {
	t.Helper()
	var st struct {
		Raft struct {
			Leader string `json:"leader"`
		} `json:"raft"`
	}
	out := must(t, data, "status", "--json")
	if err := jsonUnmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	return st.Raft.Leader
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

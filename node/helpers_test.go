package node

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/internal/testkit"
)

func testConfig(t testing.TB) Config {
	t.Helper()
	dir, err := os.MkdirTemp("", "p2pk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := DefaultConfig(dir)
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.MDNS = false // loopback only: mDNS would multicast on the host's interfaces
	cfg.HeartbeatTimeout = 300 * time.Millisecond
	cfg.ElectionTimeout = 300 * time.Millisecond
	cfg.LeaderLeaseTimeout = 150 * time.Millisecond
	cfg.CommitTimeout = 5 * time.Millisecond
	cfg.JoinTimeout = 30 * time.Second
	return cfg
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func startNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	n, err := Start(ctxT(t, 60*time.Second), cfg)
	if err != nil {
		t.Fatalf("start node: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// testCluster bootstraps nodes[0] and joins the rest by invite.
func testCluster(t testing.TB, size int) []*Node {
	t.Helper()
	cfg := testConfig(t)
	cfg.Bootstrap = true
	nodes := []*Node{startNode(t, cfg)}
	for i := 1; i < size; i++ {
		nodes = append(nodes, joinNode(t, nodes[0]))
	}
	waitAgree(t, nodes, size)
	return nodes
}

func joinNode(t testing.TB, via *Node) *Node {
	t.Helper()
	issued, err := via.Invite(ctxT(t, 10*time.Second), time.Hour)
	tok := issued.Token
	if err != nil {
		t.Fatalf("invite: %v", err)
	}
	cfg := testConfig(t)
	cfg.Join = tok
	return startNode(t, cfg)
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, what, timeout, cond)
}

// waitAgree waits until every node sees want active voting members and the
// same leader.
func waitAgree(t testing.TB, nodes []*Node, want int) {
	t.Helper()
	waitFor(t, "all nodes to agree on members and leader", 30*time.Second, func() bool {
		var leader string
		for _, n := range nodes {
			st := n.Status()
			if st.Raft.Leader == "" || (leader != "" && st.Raft.Leader != leader) {
				return false
			}
			leader = st.Raft.Leader
			active := 0
			for _, m := range st.Members {
				if m.Status == "active" && m.Voter {
					active++
				}
			}
			if active != want {
				return false
			}
		}
		return true
	})
}

func activeIDs(n *Node) []peer.ID {
	var out []peer.ID
	n.view(func(l *generations.Ledger) { out = l.Active() })
	return out
}

// removeByMajority has voters vote to remove victim until the removal is
// final (rule R2: a majority of the other members).
func removeByMajority(t testing.TB, victim peer.ID, voters ...*Node) {
	t.Helper()
	for _, v := range voters {
		vr, err := v.Remove(ctxT(t, 20*time.Second), victim)
		if err != nil {
			t.Fatalf("%s votes to remove %s: %v", v.ID(), victim, err)
		}
		if vr.Final {
			return
		}
	}
	t.Fatalf("%d votes did not remove %s", len(voters), victim)
}

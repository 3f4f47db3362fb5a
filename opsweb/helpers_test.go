package opsweb_test

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/p2pkey/p2pkey/internal/testkit"
	"github.com/p2pkey/p2pkey/node"
	"github.com/p2pkey/p2pkey/opsweb"
)

// member is one real node of a test cluster with its own opsweb server, so
// a test can close it and start it again from its data directory while the
// same URL keeps answering.
type member struct {
	cfg node.Config
	n   *node.Node
	web *opsweb.Server
	srv *httptest.Server
}

func testConfig(t *testing.T) node.Config {
	t.Helper()
	cfg := node.DefaultConfig(t.TempDir())
	cfg.ListenAddrs = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.MDNS = false // loopback only
	cfg.HeartbeatTimeout = 300 * time.Millisecond
	cfg.ElectionTimeout = 300 * time.Millisecond
	cfg.LeaderLeaseTimeout = 150 * time.Millisecond
	cfg.CommitTimeout = 5 * time.Millisecond
	cfg.JoinTimeout = 30 * time.Second
	return cfg
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func (m *member) start(t *testing.T) {
	t.Helper()
	n, err := node.Start(ctxT(t, time.Minute), m.cfg)
	if err != nil {
		t.Fatalf("start node: %v", err)
	}
	m.n = n
	m.web.Attach(n)
	m.cfg.Bootstrap, m.cfg.Join = false, "" // a restart resumes from disk
}

// stop closes the node and detaches it; its server stays up.
func (m *member) stop() {
	m.web.Attach(nil)
	m.n.Close()
}

func newMember(t *testing.T, cfg node.Config) *member {
	t.Helper()
	m := &member{cfg: cfg, web: opsweb.New(opsweb.WithGatherer(nil))}
	m.cfg.Observer = m.web // the daemon's wiring: the server counts what the node sees
	m.srv = httptest.NewServer(m.web)
	t.Cleanup(m.srv.Close)
	m.start(t)
	t.Cleanup(func() { m.n.Close() })
	return m
}

// testCluster bootstraps the first node, joins the rest by invite and
// waits until every member is escrowed with full coverage, unlocked, and
// reports its coverage in the current generation.
func testCluster(t *testing.T, size int) []*member {
	t.Helper()
	cfg := testConfig(t)
	cfg.Bootstrap = true
	ms := []*member{newMember(t, cfg)}
	for i := 1; i < size; i++ {
		issued, err := ms[0].n.Invite(ctxT(t, 10*time.Second), time.Hour)
		tok := issued.Token
		if err != nil {
			t.Fatalf("invite: %v", err)
		}
		cfg := testConfig(t)
		cfg.Join = tok
		ms = append(ms, newMember(t, cfg))
	}
	waitFor(t, "every node unlocked with full coverage", 60*time.Second, func() bool {
		for _, m := range ms {
			st := m.n.Status()
			if st.Lock != node.LockUnlocked || len(st.Members) != size || st.Generation.Current == nil {
				return false
			}
			// The key loop reports the node's own coverage a moment after
			// the commit.
			if st.Unlock.Generation != *st.Generation.Current || st.Unlock.Have != size {
				return false
			}
			for _, mm := range st.Members {
				if mm.Status != "active" || mm.SharesHeld != size || mm.Connection == "none" {
					return false
				}
			}
		}
		return true
	})
	return ms
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, what, timeout, cond)
}

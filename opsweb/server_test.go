package opsweb_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/node"
	"github.com/p2pkey/p2pkey/opsweb"
	"github.com/p2pkey/p2pkey/p2p"
	"github.com/p2pkey/p2pkey/shares"
)

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// Before a node is attached the page and the metrics answer, the status
// JSON says the node is starting, and the Observer's series count.
func TestServerBeforeAttach(t *testing.T) {
	s := opsweb.New(opsweb.WithGatherer(nil))
	srv := httptest.NewServer(s)
	defer srv.Close()

	if resp, body := get(t, srv.URL+opsweb.PathStatus); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status before attach: %s %q, want 503", resp.Status, body)
	}
	resp, body := get(t, srv.URL+"/")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(body, `src="app.js"`) {
		t.Fatalf("page: %s %s %.80q", resp.Status, resp.Header.Get("Content-Type"), body)
	}
	for _, f := range []string{"app.js", "style.css"} {
		if resp, _ := get(t, srv.URL+"/"+f); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s", f, resp.Status)
		}
	}
	m := getMetrics(t, srv.URL)
	if _, ok := m.value("p2pkey_lock_state", "state", "locked"); ok {
		t.Fatal("lock_state served with no node attached")
	}
	s.HolderEvent(shares.Event{Kind: shares.EventServed, Op: "fetch"})
	s.HolderEvent(shares.Event{Kind: shares.EventServed, Op: "fetch"})
	s.HolderEvent(shares.Event{Kind: shares.EventRefused, Op: "fetch"})
	s.HolderEvent(shares.Event{Kind: shares.EventRefused, Op: "push", Reason: "FORBIDDEN"}) // not a fetch: not counted
	s.OwnerRequest("push", "", time.Second, context.DeadlineExceeded)
	s.OwnerRequest("fetch", "", time.Second, nil) // not a push: not counted
	s.Unlocked(2 * time.Second)
	m = getMetrics(t, srv.URL)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"p2pkey_share_fetches_served_total", nil, 2},
		{"p2pkey_share_fetches_refused_total", []string{"reason", "unknown"}, 1},
		{"p2pkey_share_push_duration_seconds", []string{"result", "error"}, 1},
		{"p2pkey_unlock_duration_seconds", nil, 1},
	} {
		if got := m.must(t, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// fakeSource is a node in states a short test cannot reach with a real
// cluster: unescrowed, with a generation open.
type fakeSource struct{}

func (fakeSource) Status() node.Status {
	cur := uint64(4)
	return node.Status{
		PeerID: "self", ClusterID: "c1", Lock: node.LockUnescrowed,
		Unlock: node.UnlockProgress{Generation: 4, Have: 1, Need: 2},
		Raft:   node.RaftStatus{State: "candidate", Term: 9, AppliedIndex: 77},
		Generation: node.GenerationStatus{Current: &cur, Open: &node.OpenGeneration{
			Number: 5, Members: 3, Threshold: 2, Deadline: time.Unix(1700000000, 0)}},
		Members: []node.MemberInfo{
			{PeerID: "self", Status: "active", Connection: "self", SharesHeld: 1, Threshold: 2, EscrowGeneration: &cur},
			{PeerID: "gone", Status: "active", Connection: "none", Behind: 2},
		},
	}
}

func (fakeSource) Generations() []node.GenerationInfo {
	return []node.GenerationInfo{
		{Number: 3, State: "retired", Members: []string{"self", "gone"}, Threshold: 2, Matrix: [][]bool{{false, false}, {false, false}}, Held: []int{0, 0}},
		{Number: 4, State: "committed", Current: true, Members: []string{"self", "gone"}, Threshold: 2, Escrowed: 1,
			Matrix: [][]bool{{true, false}, {false, false}}, Held: []int{1, 0}},
		{Number: 5, State: "open", Members: []string{"self", "gone", "new"}, Threshold: 2},
	}
}

func TestMetricsFromStatus(t *testing.T) {
	s := opsweb.New(opsweb.WithGatherer(nil))
	s.Attach(fakeSource{})
	srv := httptest.NewServer(s)
	defer srv.Close()
	m := getMetrics(t, srv.URL)
	if got := m.lockOf(t); got != "unescrowed" {
		t.Fatalf("lock %s", got)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"p2pkey_node_info", []string{"peer_id", "self", "cluster_id", "c1"}, 1},
		{"p2pkey_unlock_shares_gathered", nil, 1},
		{"p2pkey_unlock_shares_needed", nil, 2},
		{"p2pkey_generation_current", nil, 4},
		{"p2pkey_generation_open", nil, 5},
		{"p2pkey_generation_open_deadline_seconds", nil, 1700000000},
		{"p2pkey_generations", []string{"state", "retired"}, 1},
		{"p2pkey_generations", []string{"state", "aborted"}, 0},
		{"p2pkey_generation_shares_held", []string{"generation", "4", "owner", "self"}, 1},
		{"p2pkey_generation_escrowed", []string{"generation", "4"}, 1},
		{"p2pkey_member_connected", []string{"peer_id", "self"}, 1},
		{"p2pkey_member_connected", []string{"peer_id", "gone"}, 0},
		{"p2pkey_member_covered", []string{"peer_id", "self"}, 0},
		{"p2pkey_member_escrow_generation", []string{"peer_id", "gone"}, 0},
		{"p2pkey_member_behind_generations", []string{"peer_id", "gone"}, 2},
		{"p2pkey_members", []string{"status", "active"}, 2},
		{"p2pkey_raft_state", []string{"state", "candidate"}, 1},
		{"p2pkey_raft_state", []string{"state", "leader"}, 0},
		{"p2pkey_raft_term", nil, 9},
		{"p2pkey_raft_leader_known", nil, 0},
	} {
		if got := m.must(t, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// A retired generation's empty matrix is not exported.
	if _, ok := m.value("p2pkey_generation_shares_held", "generation", "3"); ok {
		t.Error("shares held exported for a retired generation")
	}

	resp, body := get(t, srv.URL+opsweb.PathStatus)
	var d opsweb.PageData
	if err := json.Unmarshal([]byte(body), &d); err != nil || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status JSON: %v (%s)", err, resp.Header.Get("Content-Type"))
	}
	if d.Status.Lock != node.LockUnescrowed || len(d.Generations) != 3 || d.Time.IsZero() {
		t.Fatalf("status JSON: %+v", d)
	}
}

// Start fails at once on a port in use and stops serving when its context
// ends.
func TestStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := opsweb.Start(ctx, "127.0.0.1:0", opsweb.New(opsweb.WithGatherer(nil)))
	if err != nil {
		t.Fatal(err)
	}
	if resp, _ := get(t, "http://"+addr.String()+"/metrics"); resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %s", resp.Status)
	}
	if _, err := opsweb.Start(ctx, addr.String(), http.NotFoundHandler()); err == nil {
		t.Fatal("a second listener on a port in use started")
	}
	cancel()
	waitFor(t, "the listener to close", 5*time.Second, func() bool {
		resp, err := http.Get("http://" + addr.String() + "/metrics")
		if err == nil {
			resp.Body.Close()
		}
		return err != nil
	})
}

// With go-libp2p's metrics on (p2p.WithMetrics), the default handler serves
// them after p2pkey's own.
func TestLibp2pMetricsServed(t *testing.T) {
	var hosts []interface{ Close() error }
	defer func() {
		for _, h := range hosts {
			h.Close()
		}
	}()
	var infos []peer.AddrInfo
	for range 2 {
		priv, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			t.Fatal(err)
		}
		h, err := p2p.New(priv, p2p.WithListenAddrs("/ip4/127.0.0.1/tcp/0"), p2p.WithMetrics(true))
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
		infos = append(infos, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
		if len(infos) == 2 {
			if err := h.Connect(ctxT(t, 10*time.Second), infos[0]); err != nil {
				t.Fatal(err)
			}
		}
	}
	srv := httptest.NewServer(opsweb.New())
	defer srv.Close()
	m := getMetrics(t, srv.URL)
	var libp2p, goRuntime bool
	for name := range m {
		libp2p = libp2p || strings.HasPrefix(name, "libp2p_")
		goRuntime = goRuntime || strings.HasPrefix(name, "go_")
	}
	if !libp2p || !goRuntime {
		t.Fatalf("default gatherer: libp2p metrics %v, Go runtime metrics %v", libp2p, goRuntime)
	}
}

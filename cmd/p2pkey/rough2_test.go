package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/node"
)

// roughStatus is a status of a node self, locked with 1 of 2 shares, in a
// cluster where a leads and b is a non-voter.
func roughStatus(self, a, b peer.ID) node.Status {
	g4 := uint64(4)
	return node.Status{PeerID: self.String(), ClusterID: "c1", Lock: "locked", Reachability: "unknown",
		Unlock: node.UnlockProgress{Generation: 4, Have: 1, Need: 2, Reason: "locked: 1 of 2 shares gathered for generation 4"},
		Raft:   node.RaftStatus{State: "Follower", Leader: a.String(), Term: 7, Voter: true},
		Members: []node.MemberInfo{
			{PeerID: self.String(), Status: "active", Voter: true, Connection: "self", EscrowGeneration: &g4, SharesHeld: 1, Threshold: 2, Addrs: []string{"/ip4/10.0.0.1/tcp/1"}},
			{PeerID: a.String(), Status: "active", Voter: true, Connection: "direct", EscrowGeneration: &g4, SharesHeld: 3, Threshold: 2, Addrs: []string{"/ip4/10.0.0.2/tcp/1", "/ip4/10.0.0.2/udp/1/quic-v1", "/ip6/::1/tcp/1"}},
			{PeerID: b.String(), Status: "joining", Voter: false, Connection: "relayed", CatchingUp: true, Behind: 1},
		}}
}

func roughGenerations(self, a, b peer.ID) []node.GenerationInfo {
	members := []string{self.String(), a.String(), b.String()}
	return []node.GenerationInfo{
		{Number: 2, State: "retired", Members: members, Threshold: 2, Matrix: [][]bool{{false, false, false}, {false, false, false}, {false, false, false}}, Held: []int{0, 0, 0}},
		{Number: 3, State: "aborted", Members: members, Threshold: 2},
		{Number: 4, State: "committed", Current: true, Members: members, Threshold: 2, Escrowed: 2,
			Matrix: [][]bool{{true, true, false}, {true, true, true}, {false, true, false}}, Held: []int{2, 3, 1}},
	}
}

// TestTextOutput: status and generations say each thing once and in
// English: no "locked (locked: ...", "1 shares" or bare "5/3"; reachable
// unknown is explained; a retired or aborted generation prints no all-dot
// matrix and no "0 escrowed"; members names the leader, each member's Raft
// role and its addresses.
func TestTextOutput(t *testing.T) {
	self, a, b := randID(t), randID(t), randID(t)
	mux := http.NewServeMux()
	mux.Handle("GET /v1/status", reply(http.StatusOK, roughStatus(self, a, b)))
	mux.Handle("GET /v1/generations", reply(http.StatusOK, roughGenerations(self, a, b)))
	data := fakeDaemon(t, mux)

	out := must(t, data, "status")
	for _, bad := range []string{"locked (locked", "locked: locked", "1 shares", "1 generations"} {
		if strings.Contains(out, bad) {
			t.Errorf("status says %q:\n%s", bad, out)
		}
	}
	for _, want := range []string{
		"lock:        locked: 1 of 2 shares gathered for generation 4\n",
		"reachable:   unknown (AutoNAT has not decided yet",
		"catching up (1 generation behind)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if r := row(out, a.String()); !strings.Contains(r, "leader") || !strings.Contains(r, "3, threshold 2") {
		t.Errorf("status row of the leader: %q", r)
	}

	out = must(t, data, "members")
	if !strings.HasPrefix(out, "leader: "+a.String()+", term 7\n") {
		t.Errorf("members does not name the leader first:\n%s", out)
	}
	for id, want := range map[peer.ID][]string{
		self: {"follower", "/ip4/10.0.0.1/tcp/1"},
		a:    {"leader", "/ip4/10.0.0.2/tcp/1,/ip4/10.0.0.2/udp/1/quic-v1 (+1 more)"},
		b:    {"non-voter", "relayed"},
	} {
		r := row(out, id.String())
		for _, w := range want {
			if !strings.Contains(r, w) {
				t.Errorf("members row of %s lacks %q: %q", id, w, r)
			}
		}
	}

	out = must(t, data, "generations")
	for _, want := range []string{
		"generation 2: retired, 3 members, threshold 2; its envelopes are deleted\n",
		"generation 3: aborted, 3 members, threshold 2; it never committed and its envelopes are deleted\n",
		"generation 4: committed (current), 3 members, threshold 2, 2 of 3 owners escrowed\n",
		"SHARES HELD", "1, threshold 2 (not escrowed)", "3, threshold 2",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("generations lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "0 escrowed") || strings.Contains(out, "/2\n") || strings.Count(out, "OWNER") != 1 {
		t.Errorf("generations prints a dead generation's matrix or a bare ratio:\n%s", out)
	}
}

// TestJSONObjects: every --json is an object with named fields, and one
// idea has one name: shares_held and threshold (never have/need or
// held[]), owners_escrowed.
func TestJSONObjects(t *testing.T) {
	self, a, b := randID(t), randID(t), randID(t)
	st := roughStatus(self, a, b)
	mux := http.NewServeMux()
	mux.Handle("GET /v1/status", reply(http.StatusOK, st))
	mux.Handle("GET /v1/generations", reply(http.StatusOK, roughGenerations(self, a, b)))
	mux.Handle("POST /v1/key", reply(http.StatusOK, node.KeyResponse{Purpose: "disk", Key: bytes.Repeat([]byte{0xab}, 32)}))
	mux.Handle("POST /v1/leave", reply(http.StatusOK, map[string]string{"left": self.String()}))
	data := fakeDaemon(t, mux)

	object := func(args ...string) map[string]any {
		t.Helper()
		out := must(t, data, args...)
		var m map[string]any
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("%s: not a JSON object: %v\n%s", strings.Join(args, " "), err, out)
		}
		if bad := oldNames(m, ""); len(bad) > 0 {
			t.Errorf("%s uses old names %v:\n%s", strings.Join(args, " "), bad, out)
		}
		return m
	}

	m := object("status", "--json")
	u := m["unlock"].(map[string]any)
	if u["shares_held"] != 1.0 || u["threshold"] != 2.0 {
		t.Errorf("status --json unlock: %v", u)
	}

	m = object("members", "--json")
	ms := m["members"].([]any)
	if m["leader"] != a.String() || m["self"] != self.String() || len(ms) != 3 {
		t.Fatalf("members --json: %v", m)
	}
	if r := ms[1].(map[string]any); r["role"] != "leader" || r["peer_id"] != a.String() || r["shares_held"] != 3.0 || r["addrs"] == nil {
		t.Errorf("members --json leader row: %v", r)
	}

	m = object("generations", "--json")
	gs := m["generations"].([]any)
	cur := gs[2].(map[string]any)
	owners := cur["owners"].([]any)
	if len(gs) != 3 || cur["owners_escrowed"] != 2.0 || len(owners) != 3 || gs[0].(map[string]any)["owners"] != nil {
		t.Fatalf("generations --json: %v", m)
	}
	if o := owners[2].(map[string]any); o["peer_id"] != b.String() || o["shares_held"] != 1.0 || o["escrowed"] != false ||
		len(o["holders"].([]any)) != 1 || o["holders"].([]any)[0] != a.String() {
		t.Errorf("generations --json owner row: %v", o)
	}

	m = object("key", "--purpose", "disk", "--json")
	if m["purpose"] != "disk" || m["format"] != "hex" || m["key"] != hex.EncodeToString(bytes.Repeat([]byte{0xab}, 32)) {
		t.Errorf("key --json: %v", m)
	}
	if r := cli(t, data, nil, "key", "--json", "--format", "raw"); r.code != exitUsage {
		t.Errorf("key --json --format raw: %v", r)
	}
	m = object("leave", "--yes", "--json")
	if m["left"] != self.String() || m["cluster_id"] != "c1" {
		t.Errorf("leave --json: %v", m)
	}

	// wait --json when healthy: self must be an active voter that knows
	// the leader.
	mux2 := http.NewServeMux()
	st.Lock = "unlocked"
	mux2.Handle("GET /v1/status", reply(http.StatusOK, st))
	data2 := fakeDaemon(t, mux2)
	var w waitJSON
	if err := json.Unmarshal([]byte(must(t, data2, "wait", "--json", "--timeout", "5s")), &w); err != nil || !w.Healthy || w.Leader != a.String() || w.ActiveMembers != 2 {
		t.Errorf("wait --json: %+v, %v", w, err)
	}
}

// oldNames lists the keys in v that name an idea the CLI's JSON calls
// otherwise: have, need, held and matrix (shares_held, threshold,
// owners[].holders), and a numeric escrowed (owners_escrowed).
func oldNames(v any, path string) []string {
	var bad []string
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			_, isBool := x.(bool)
			switch {
			case k == "have" || k == "need" || k == "held" || k == "matrix", k == "escrowed" && !isBool:
				bad = append(bad, path+"."+k)
			}
			bad = append(bad, oldNames(x, path+"."+k)...)
		}
	case []any:
		for _, x := range v {
			bad = append(bad, oldNames(x, path+"[]")...)
		}
	}
	return bad
}

// TestShortIDs: remove and reinstate take a member's ID whole, its start,
// or the short form the tables print; an ambiguous or unknown one is a
// usage error that says which, and nothing reaches the daemon.
func TestShortIDs(t *testing.T) {
	self, a, b := randID(t), randID(t), randID(t)
	var mu sync.Mutex
	var asked []string
	mux := http.NewServeMux()
	mux.Handle("GET /v1/status", reply(http.StatusOK, statusJSON(t, self, a, b, true)))
	for _, path := range []string{"remove", "reinstate"} {
		mux.HandleFunc("POST /v1/"+path, func(w http.ResponseWriter, r *http.Request) {
			var req struct {
				PeerID string `json:"peer_id"`
			}
			json.NewDecoder(r.Body).Decode(&req)
			mu.Lock()
			asked = append(asked, req.PeerID)
			mu.Unlock()
			id, _ := peer.Decode(req.PeerID)
			reply(http.StatusOK, node.VoteResult{Target: id, Kind: path, Votes: 1, Needed: 2, Status: "suspended"})(w, r)
		})
	}
	data := fakeDaemon(t, mux)
	bs := b.String()
	// The unique start of b: one character past what it shares with the
	// others.
	n := 0
	for _, o := range []string{self.String(), a.String()} {
		for n < len(o) && o[n] == bs[n] {
			n++
		}
	}
	prefix := bs[:max(n+1, 10)]
	for _, arg := range []string{bs, prefix, short(bs), bs[:8] + "..." + bs[len(bs)-6:]} {
		for _, cmd := range []string{"remove", "reinstate"} {
			args := []string{cmd, arg}
			if cmd == "remove" {
				args = append(args, "--yes")
			}
			out := must(t, data, args...)
			if !strings.HasPrefix(out, bs+": suspended") {
				t.Errorf("%s %s printed %q", cmd, arg, out)
			}
		}
	}
	mu.Lock()
	if len(asked) != 8 || strings.Count(strings.Join(asked, ","), bs) != 8 {
		t.Errorf("the daemon was asked about %v", asked)
	}
	asked = nil
	mu.Unlock()
	for _, tc := range []struct{ arg, want string }{
		{"12D3KooW", "matches 3 members"},
		{"12D3KooWnobodyhasthis", "is not a peer ID, nor the start or short form of a member"},
		{"12D3KooW…zzzzzz", "is not a peer ID"},
	} {
		for _, cmd := range []string{"remove", "reinstate"} {
			r := cli(t, data, nil, cmd, tc.arg, "--yes")
			if cmd == "reinstate" {
				r = cli(t, data, nil, cmd, tc.arg)
			}
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("%s %s: want exit 2 and %q; got %v", cmd, tc.arg, tc.want, r)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 0 {
		t.Errorf("a refused ID reached the daemon: %v", asked)
	}
	// The generations table's short IDs are the ones accepted.
	if got := short(bs); !strings.Contains(got, "…") {
		t.Fatalf("short form %q", got)
	}
	_ = os.Getpid
	_ = filepath.Join
	_ = time.Second
}

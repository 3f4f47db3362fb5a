package main

import (
	"crypto/rand"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/node"
)

// fakeDaemon serves mux on a data directory's control socket, so the real
// binary can be run against answers a live cluster gives only in rare
// states (unescrowed, a vote half-way).
func fakeDaemon(t *testing.T, mux *http.ServeMux) string {
	t.Helper()
	data := dataDir(t)
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", node.SocketPath(data))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return data
}

func reply(status int, body any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(body)
	}
}

func randID(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestLockedExit3: key, encrypt, decrypt and audit exit 3 when the node's
// error wraps ErrLocked, and print the node's words as they are, once.
func TestLockedExit3(t *testing.T) {
	for _, tc := range []struct {
		code, msg string
	}{
		{"unescrowed", node.ErrUnescrowed.Error()},
		{"locked", "the node is locked: waiting for shares (1 of 2)"},
	} {
		mux := http.NewServeMux()
		body := map[string]string{"error": tc.msg, "code": tc.code}
		mux.Handle("POST /v1/key", reply(http.StatusLocked, body))
		mux.Handle("POST /v1/audit", reply(http.StatusLocked, body))
		data := fakeDaemon(t, mux)
		for _, args := range [][]string{{"key"}, {"key", "--purpose", "disk", "--format", "raw"}, {"encrypt"}, {"decrypt"}, {"audit"}} {
			r := cli(t, data, strings.NewReader("plaintext"), args...)
			if want := "p2pkey: " + tc.msg + "\n"; r.code != exitLocked || r.stderr != want || r.stdout != "" {
				t.Errorf("%s with %s: want exit 3 and %q; got %v", args[0], tc.code, want, r)
			}
		}
	}
	if !strings.Contains(node.ErrUnescrowed.Error(), "a cluster of one cannot protect K: invite a second node") {
		t.Fatalf("ErrUnescrowed says %q", node.ErrUnescrowed)
	}
}

// statusJSON is a status with self and a active, b suspended by self's
// vote, and the vote fields of rule R2 when votes is true.
func statusJSON(t *testing.T, self, a, b peer.ID, votes bool) map[string]any {
	t.Helper()
	st := node.Status{PeerID: self.String(), ClusterID: "c1", Lock: "unlocked", Members: []node.MemberInfo{
		{PeerID: self.String(), Status: "active", Voter: true, Connection: "self"},
		{PeerID: a.String(), Status: "active", Voter: true, Connection: "direct"},
		{PeerID: b.String(), Status: "suspended", Voter: true, Connection: "direct"},
	}}
	raw, _ := json.Marshal(st)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	// The daemon sends the vote fields of suspended members only, with the
	// voters' IDs.
	if votes {
		row := m["members"].([]any)[2].(map[string]any)
		row["remove_votes"], row["votes_needed"] = []string{self.String()}, 2
	}
	return m
}

func row(out, id string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, id) {
			return l
		}
	}
	return ""
}

// TestStatusVotes: status and members show a suspended member's votes when
// the daemon sends them, nothing extra when it does not, and status warns
// with 2 active members. --json passes the daemon's fields through.
func TestStatusVotes(t *testing.T) {
	self, a, b := randID(t), randID(t), randID(t)
	for _, votes := range []bool{true, false} {
		mux := http.NewServeMux()
		mux.Handle("GET /v1/status", reply(http.StatusOK, statusJSON(t, self, a, b, votes)))
		data := fakeDaemon(t, mux)
		for _, cmd := range []string{"status", "members"} {
			out := must(t, data, cmd)
			line := row(out, b.String())
			if !strings.Contains(line, "suspended") {
				t.Fatalf("%s: no suspended row for b:\n%s", cmd, out)
			}
			hasVotes := strings.Contains(line, "remove votes 1 of 2, reinstate votes 0 of 2")
			if hasVotes != votes || strings.Contains(row(out, a.String()), "votes") {
				t.Fatalf("%s (vote fields sent: %v):\n%s", cmd, votes, out)
			}
			if cmd == "status" && clusterLine(out) != "only 2 members: one node down blocks the other's unlock" {
				t.Fatalf("status with 2 active members:\n%s", out)
			}
		}
		if votes {
			out := must(t, data, "status", "--json")
			if !strings.Contains(out, `"remove_votes": [`) {
				t.Fatalf("status --json dropped the daemon's vote fields:\n%s", out)
			}
			out = must(t, data, "members", "--json")
			if !strings.Contains(out, `"votes_needed": 2`) {
				t.Fatalf("members --json dropped the daemon's vote fields:\n%s", out)
			}
		}
	}
}

// TestVoteOutput: remove and reinstate print the daemon's vote result.
func TestVoteOutput(t *testing.T) {
	self, a, b := randID(t), randID(t), randID(t)
	for _, tc := range []struct {
		path string
		res  node.VoteResult
		want string
	}{
		{"remove", node.VoteResult{Target: b, Kind: "remove", Votes: 1, Needed: 3, Status: "suspended"}, b.String() + ": suspended (remove votes: 1 of 3 needed)"},
		{"remove", node.VoteResult{Target: b, Kind: "remove", Votes: 3, Needed: 3, Final: true, Status: "removed"}, b.String() + ": removed (final)"},
		{"reinstate", node.VoteResult{Target: b, Kind: "reinstate", Votes: 1, Needed: 2, Status: "suspended"}, b.String() + ": suspended (reinstate votes: 1 of 2 needed)"},
		{"reinstate", node.VoteResult{Target: b, Kind: "reinstate", Votes: 2, Needed: 2, Final: true, Status: "active"}, b.String() + ": reinstated (active)"},
	} {
		var mu sync.Mutex
		var asked string
		mux := http.NewServeMux()
		mux.Handle("GET /v1/status", reply(http.StatusOK, statusJSON(t, self, a, b, true)))
		mux.HandleFunc("POST /v1/"+tc.path, func(w http.ResponseWriter, r *http.Request) {
			var req struct {
				PeerID string `json:"peer_id"`
			}
			json.NewDecoder(r.Body).Decode(&req)
			mu.Lock()
			asked = req.PeerID
			mu.Unlock()
			reply(http.StatusOK, tc.res)(w, r)
		})
		data := fakeDaemon(t, mux)
		args := []string{tc.path, b.String()}
		if tc.path == "remove" {
			args = append(args, "--yes")
		}
		out := must(t, data, args...)
		if strings.TrimSpace(out) != tc.want {
			t.Errorf("%s printed %q, want %q", tc.path, out, tc.want)
		}
		mu.Lock()
		if asked != b.String() {
			t.Errorf("%s asked about %q", tc.path, asked)
		}
		mu.Unlock()
		var got node.VoteResult
		if err := json.Unmarshal([]byte(must(t, data, append(args, "--json")...)), &got); err != nil || got != tc.res {
			t.Errorf("%s --json: %+v, %v; want %+v", tc.path, got, err, tc.res)
		}
	}
}

// TestInviteTTL: --ttl outside 1m..168h is a usage error that never reaches
// the daemon; inside, the daemon gets the TTL asked for (1h by default).
func TestInviteTTL(t *testing.T) {
	var mu sync.Mutex
	var got []string
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/invite", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			TTL string `json:"ttl"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		got = append(got, req.TTL)
		mu.Unlock()
		reply(http.StatusOK, node.InviteResponse{Invite: "p2pkey-invite-v1:x", ExpiresAt: time.Now()})(w, r)
	})
	data := fakeDaemon(t, mux)
	for _, tc := range []struct{ ttl, want string }{
		{"0", "--ttl must be at least 1m0s"},
		{"1ms", "--ttl must be at least 1m0s"},
		{"59s", "--ttl must be at least 1m0s"},
		{"-5m", "--ttl must be at least 1m0s"},
		{"168h1s", "over the cap of 168h0m0s (7 days)"},
		{"8760h", "over the cap of 168h0m0s (7 days)"},
		{"soon", "invalid argument"},
	} {
		r := cli(t, data, nil, "invite", "--ttl", tc.ttl)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("--ttl %s: want exit 2 and %q; got %v", tc.ttl, tc.want, r)
		}
	}
	mu.Lock()
	if len(got) != 0 {
		t.Fatalf("refused TTLs reached the daemon: %v", got)
	}
	mu.Unlock()
	must(t, data, "invite")
	must(t, data, "invite", "--ttl", "1m")
	must(t, data, "invite", "--ttl", "168h")
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"1h0m0s", "1m0s", "168h0m0s"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("the daemon got TTLs %v, want %v", got, want)
	}
}

// TestJoinUsage: conflicting or empty invite sources are usage errors, and
// a bad invite is refused without echoing it.
func TestJoinUsage(t *testing.T) {
	data := initNode(t)
	empty := filepath.Join(filepath.Dir(data), "empty")
	if err := os.WriteFile(empty, []byte("\n  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args  []string
		stdin io.Reader
		want  string
	}{
		{[]string{"--join", "p2pkey-invite-v1:x", "--join-file", empty}, nil, "--join and --join-file are mutually exclusive"},
		{[]string{"--join", "-", "--join-file", empty}, nil, "--join and --join-file are mutually exclusive"},
		{[]string{"--bootstrap", "--join-file", empty}, nil, "--bootstrap and --join are mutually exclusive"},
		{[]string{"--bootstrap", "--join", "-"}, nil, "--bootstrap and --join are mutually exclusive"},
		{[]string{"--join", "-"}, strings.NewReader(""), "no invite in stdin"},
		{[]string{"--join", "-"}, strings.NewReader("  \n"), "no invite in stdin"},
		{[]string{"--join-file", empty}, nil, "no invite in " + empty},
		{[]string{"--join", ""}, nil, "need a value"},
		{[]string{"--join", "-"}, strings.NewReader("not-an-invite-secret\n"), "malformed invite"},
	} {
		r := cli(t, data, tc.stdin, append([]string{"daemon"}, tc.args...)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("daemon %v: want exit 2 and %q; got %v", tc.args, tc.want, r)
		}
		if strings.Contains(r.stderr, "not-an-invite-secret") {
			t.Errorf("daemon %v echoed the invite: %s", tc.args, r.stderr)
		}
	}
	if _, err := os.Stat(node.SocketPath(data)); err == nil {
		t.Fatal("a refused daemon opened its control socket")
	}
}

func modeOf(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestDataDirPermissions: init and daemon tighten a data directory (and
// identity) that group or others can reach, and say so; a data directory
// owned by another user is refused.
func TestDataDirPermissions(t *testing.T) {
	data := dataDir(t)
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(data, 0o755); err != nil {
		t.Fatal(err)
	}
	r := cli(t, data, nil, "init", "--listen", "/ip4/127.0.0.1/tcp/0")
	if r.code != 0 || !strings.Contains(r.stderr, "tightened "+data+" from 0755 to 0700") || modeOf(t, data) != 0o700 {
		t.Fatalf("init on a 0755 directory: %v (mode now %04o)", r, modeOf(t, data))
	}

	id := filepath.Join(data, "identity.key")
	os.Chmod(data, 0o750)
	os.Chmod(id, 0o640)
	// An invalid flag value stops the daemon after the check, before it
	// starts a node.
	r = cli(t, data, nil, "daemon", "--bootstrap", "--reachability", "bogus")
	if r.code != exitUsage || !strings.Contains(r.stderr, "tightened "+data+" from 0750 to 0700") ||
		!strings.Contains(r.stderr, "tightened "+id+" from 0640 to 0600") {
		t.Fatalf("daemon on a 0750 directory: %v", r)
	}
	if modeOf(t, data) != 0o700 || modeOf(t, id) != 0o600 {
		t.Fatalf("modes after daemon: %04o, %04o", modeOf(t, data), modeOf(t, id))
	}

	if os.Geteuid() != 0 {
		t.Skip("chown to another user needs root")
	}
	if err := os.Chown(data, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	r = cli(t, data, nil, "daemon", "--bootstrap")
	if r.code != exitError || !strings.Contains(r.stderr, "owned by uid 65534") {
		t.Fatalf("daemon on another user's directory: %v", r)
	}
	if _, err := os.Stat(node.SocketPath(data)); err == nil {
		t.Fatal("the daemon started on another user's directory")
	}
}

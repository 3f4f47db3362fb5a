package main

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/p2pkey/p2pkey/node"
)

// The rough edges of issue 16, one test each (the live ones share a
// cluster in TestRoughLive).

// TestVersion: `p2pkey version` and `--version` print the module version
// and the commit the binary was built from (the test build stamps VCS
// information, as a release build does).
func TestVersion(t *testing.T) {
	d := dataDir(t)
	line := strings.TrimSpace(must(t, d, "version"))
	if got := strings.TrimSpace(must(t, d, "--version")); got != line {
		t.Fatalf("--version %q, version %q", got, line)
	}
	var v buildVersion
	if err := json.Unmarshal([]byte(must(t, d, "version", "--json")), &v); err != nil {
		t.Fatal(err)
	}
	if v.Module != "github.com/p2pkey/p2pkey" || v.Version == "" || v.Version == "(unknown)" || !strings.HasPrefix(v.Go, "go") {
		t.Fatalf("version --json: %+v", v)
	}
	if !strings.HasPrefix(line, "p2pkey "+v.Version+" ") {
		t.Fatalf("version line %q does not start with the version %q", line, v.Version)
	}
	if _, err := exec.Command("git", "rev-parse", "HEAD").Output(); err != nil {
		t.Skipf("no git here to compare the commit with: %v", err)
	}
	if v.Commit == "" && strings.Contains(line, "without VCS stamping") {
		// go build stamps nothing in some checkouts (a git worktree, for
		// one); the version line then says so, which is what it must do.
		t.Skipf("the test binary carries no VCS stamp here: %q", line)
	}
	// Others commit while the tests run: the commit built from is HEAD or
	// one of its ancestors.
	if len(v.Commit) != 40 || !strings.Contains(line, "commit "+v.Commit) {
		t.Fatalf("version says commit %q (line %q)", v.Commit, line)
	}
	if err := exec.Command("git", "merge-base", "--is-ancestor", v.Commit, "HEAD").Run(); err != nil {
		t.Fatalf("version's commit %s is not in this checkout's history: %v", v.Commit, err)
	}
}

// TestUsageExit2: an unknown command, an unknown flag and a bad argument
// count exit 2 and point at --help; no command at all prints the help.
func TestUsageExit2(t *testing.T) {
	d := dataDir(t)
	for _, args := range [][]string{{"statsu"}, {"bogus", "x"}, {"status", "--bogus"}, {"--bogus"}, {"members", "extra"}, {"recover", "nonsense"}} {
		r := cli(t, d, nil, args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, "--help") || r.stdout != "" {
			t.Errorf("p2pkey %s: want exit 2 and a pointer to --help; got %v", strings.Join(args, " "), r)
		}
	}
	if r := cli(t, d, nil, "statsu"); !strings.Contains(r.stderr, `unknown command "statsu"`) || !strings.Contains(r.stderr, "Did you mean status?") {
		t.Errorf("unknown command: %v", r)
	}
	if r := cli(t, d, nil); r.code != 0 || !strings.Contains(r.stdout, "Available Commands") {
		t.Errorf("no command: %v", r)
	}
}

// TestInitListen: init refuses a listen or announce address no transport
// can use, naming it and the fix, and creates nothing.
func TestInitListen(t *testing.T) {
	for _, tc := range []struct{ flag, addr, want string }{
		{"--listen", "/ip4/127.0.0.1/udp/6510", "/ip4/127.0.0.1/udp/6510: a UDP address needs a transport: add /quic-v1 (/ip4/127.0.0.1/udp/6510/quic-v1)"},
		{"--listen", "/ip4/127.0.0.1", "/ip4/127.0.0.1: want an IP or DNS address and a transport"},
		{"--listen", "/ip4/127.0.0.1/udp/6510/quic", "use /quic-v1"},
		{"--listen", "/tcp/4001", "starts with /tcp"},
		{"--announce", "/ip4/203.0.113.7/udp/6510", "--announce /ip4/203.0.113.7/udp/6510: a UDP address needs"},
	} {
		d := dataDir(t)
		args := []string{"init", "--listen", "/ip4/127.0.0.1/tcp/0"}
		if tc.flag == "--listen" {
			args = args[:1]
		}
		r := cli(t, d, nil, append(args, tc.flag, tc.addr)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("init %s %s: want exit 2 and %q; got %v", tc.flag, tc.addr, tc.want, r)
		}
		if _, err := os.Stat(d); err == nil {
			t.Errorf("init %s %s created %s", tc.flag, tc.addr, d)
		}
	}
	d := dataDir(t)
	must(t, d, "init", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--listen", "/ip6/::1/tcp/0", "--listen", "/ip4/127.0.0.1/tcp/0/ws")
}

// TestConfigStrict: the daemon refuses a config.json with an unknown key,
// a bare UDP listen address or trailing data (exit 2, naming the file and
// the problem) before it starts anything; init and daemon document every
// key of config.json.
func TestConfigStrict(t *testing.T) {
	for _, tc := range []struct{ edit, want string }{
		{`"listn": ["/ip4/127.0.0.1/tcp/0"]`, `unknown key "listn"`},
		{`"app_allow": [], "luks_wiat": "1s"`, `unknown key "luks_wiat"`},
		{`"listen": ["/ip4/127.0.0.1/udp/6510"]`, "listen: /ip4/127.0.0.1/udp/6510: a UDP address needs a transport"},
		{`"version": 2`, "config version 2 is not supported"},
	} {
		d := initNode(t)
		path := filepath.Join(d, "config.json")
		var m map[string]json.RawMessage
		data, _ := os.ReadFile(path)
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		var extra map[string]json.RawMessage
		if err := json.Unmarshal([]byte("{"+tc.edit+"}"), &extra); err != nil {
			t.Fatal(err)
		}
		for k, v := range extra {
			m[k] = v
		}
		data, _ = json.Marshal(m)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		r := cli(t, d, nil, "daemon", "--bootstrap", "--no-mdns")
		if r.code != exitUsage || !strings.Contains(r.stderr, path) || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("config with %s: want exit 2, %s and %q; got %v", tc.edit, path, tc.want, r)
		}
	}
	d := initNode(t)
	data, _ := os.ReadFile(filepath.Join(d, "config.json"))
	os.WriteFile(filepath.Join(d, "config.json"), append(data, []byte("{}\n")...), 0o600)
	if r := cli(t, d, nil, "daemon", "--bootstrap", "--no-mdns"); r.code != exitUsage || !strings.Contains(r.stderr, "data after the JSON object") {
		t.Errorf("trailing data: %v", r)
	}

	doc, err := os.ReadFile("../../docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	help := must(t, d, "init", "--help") + must(t, d, "daemon", "--help")
	typ := reflectJSONKeys(fileConfig{})
	for _, k := range typ {
		if !strings.Contains(string(doc), "`"+k+"`") || !strings.Contains(help, "  "+k+" ") {
			t.Errorf("config key %q is not documented in docs/CONFIG.md and the help", k)
		}
	}
}

// reflectJSONKeys lists the JSON keys of a struct's fields.
func reflectJSONKeys(v any) []string {
	var keys []string
	rt := reflect.TypeOf(v)
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		keys = append(keys, name)
	}
	return keys
}

// hang answers nothing until the client gives up.
func hang(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }

// TestTimeoutsExplained: every wait has --timeout, and a request that runs
// out of time says why instead of `Post "http://p2pkey/v1/...": context
// deadline exceeded`: key, encrypt and decrypt --wait exit 3 naming the
// lock's reason (once, no doubled "locked:"); invite without a Raft leader
// fails at once naming the members it cannot reach; wait --unlocked exits 3;
// a daemon that drops the connection is said to have gone away.
func TestTimeoutsExplained(t *testing.T) {
	self, a, b := randID(t), randID(t), randID(t)
	st := node.Status{PeerID: self.String(), ClusterID: "c1", Lock: "locked",
		Unlock: node.UnlockProgress{Generation: 4, Have: 1, Need: 2, Reason: "locked: 1 of 2 shares gathered for generation 4"},
		Members: []node.MemberInfo{
			{PeerID: self.String(), Status: "active", Voter: true, Connection: "self"},
			{PeerID: a.String(), Status: "active", Voter: true, Connection: "none"},
			{PeerID: b.String(), Status: "active", Voter: true, Connection: "none"},
		}}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/status", reply(http.StatusOK, st))
	mux.HandleFunc("POST /v1/key", hang)
	mux.HandleFunc("POST /v1/invite", hang)
	data := fakeDaemon(t, mux)

	for _, args := range [][]string{
		{"key", "--wait", "--timeout", "1s"},
		{"encrypt", "--wait", "--timeout", "1s"},
		{"decrypt", "--wait", "--timeout", "1s"},
	} {
		start := time.Now()
		r := cli(t, data, strings.NewReader("x"), args...)
		want := "p2pkey: the node is still locked after 1s: 1 of 2 shares gathered for generation 4; there is no Raft leader"
		if r.code != exitLocked || !strings.HasPrefix(r.stderr, want) || strings.Contains(r.stderr, "http://") || strings.Contains(r.stderr, "locked: locked") {
			t.Errorf("%s: want exit 3 and %q; got %v", strings.Join(args, " "), want, r)
		}
		if d := time.Since(start); d > 8*time.Second {
			t.Errorf("%s took %v", args[0], d)
		}
	}
	if r := cli(t, data, nil, "encrypt", "--timeout", "0s"); r.code != exitUsage || !strings.Contains(r.stderr, "--timeout must be positive") {
		t.Errorf("encrypt --timeout 0s: %v", r)
	}

	start := time.Now()
	r := cli(t, data, nil, "invite")
	if r.code != 1 || !strings.Contains(r.stderr, "cannot issue an invite: there is no Raft leader") ||
		!strings.Contains(r.stderr, "reaches 1 of 3 voting members and a leader needs 2") || !strings.Contains(r.stderr, a.String()) || strings.Contains(r.stderr, "http://") {
		t.Errorf("invite without a leader: %v", r)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("invite without a leader took %v", d)
	}

	r = cli(t, data, nil, "wait", "--unlocked", "--timeout", "1s", "--json")
	var wj waitJSON
	if err := json.Unmarshal([]byte(r.stdout), &wj); r.code != exitLocked || err != nil || wj.Healthy || wj.Lock != "locked" || !strings.Contains(wj.WaitingFor, "1 of 2 shares") {
		t.Errorf("wait --unlocked on a locked node: %v (%v)", r, err)
	}
	if r := cli(t, data, nil, "wait", "--timeout", "1s"); r.code != 1 || !strings.Contains(r.stderr, "there is no Raft leader") {
		t.Errorf("wait without a leader: %v", r)
	}

	// A leader, but the invite never comes back: the timeout says so.
	st.Raft.Leader = a.String()
	mux2 := http.NewServeMux()
	mux2.Handle("GET /v1/status", reply(http.StatusOK, st))
	mux2.HandleFunc("POST /v1/invite", hang)
	mux2.HandleFunc("POST /v1/leave", func(w http.ResponseWriter, r *http.Request) {
		// A daemon that dies mid-request.
		hj, _ := w.(http.Hijacker)
		c, _, _ := hj.Hijack()
		c.Close()
	})
	data2 := fakeDaemon(t, mux2)
	r = cli(t, data2, nil, "invite", "--timeout", "1s")
	if r.code != 1 || !strings.Contains(r.stderr, "cannot issue an invite: no answer within 1s (Raft leader") || strings.Contains(r.stderr, "http://") {
		t.Errorf("invite that times out: %v", r)
	}
	r = cli(t, data2, nil, "leave", "--yes")
	if r.code != 1 || !strings.Contains(r.stderr, "cannot leave the cluster: the daemon on") || !strings.Contains(r.stderr, "closed the connection") || strings.Contains(r.stderr, "http://") {
		t.Errorf("leave with a daemon that drops the connection: %v", r)
	}
}

// TestNoDoubledWords: a lock error whose reason already starts with
// "locked:" is printed with the word once, and still exits 3.
func TestNoDoubledWords(t *testing.T) {
	mux := http.NewServeMux()
	body := map[string]string{"error": "the node is locked: locked: 1 of 2 shares gathered for generation 4 (context deadline exceeded)", "code": "locked"}
	mux.Handle("POST /v1/key", reply(http.StatusLocked, body))
	data := fakeDaemon(t, mux)
	r := cli(t, data, nil, "key", "--wait", "--timeout", "5s")
	if want := "p2pkey: the node is locked: 1 of 2 shares gathered for generation 4 (context deadline exceeded)\n"; r.code != exitLocked || r.stderr != want {
		t.Errorf("want exit 3 and %q; got %v", want, r)
	}
	for in, want := range map[string]string{
		"locked (locked: 1 of 2)":       "locked (1 of 2)",
		"locked: locked: locked: x":     "locked: x",
		"the node is locked: locked: y": "the node is locked: y",
		"unlocked: fine":                "unlocked: fine",
	} {
		if got := dedupe(in); got != want {
			t.Errorf("dedupe(%q) = %q, want %q", in, got, want)
		}
	}
	if plural(1, "share") != "1 share" || plural(0, "share") != "0 shares" || plural(2, "member") != "2 members" {
		t.Error("plural")
	}
}

// TestTimeoutOnKeySocket: on a socket that answers keys only (the
// application key socket refuses status), a key --wait that times out is
// still a lock (exit 3) and says where to look, without a raw error.
func TestTimeoutOnKeySocket(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/key", hang)
	mux.Handle("GET /v1/status", reply(http.StatusForbidden, map[string]string{"error": "forbidden: this socket serves keys only", "code": "forbidden"}))
	data := fakeDaemon(t, mux)
	r := cli(t, data, nil, "key", "--wait", "--timeout", "1s")
	if r.code != exitLocked || !strings.Contains(r.stderr, "did not release the key within 1s: it is still locked") || strings.Contains(r.stderr, "http://") {
		t.Errorf("key --wait on a key socket: %v", r)
	}
}

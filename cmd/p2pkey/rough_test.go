package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
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

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/p2pkey/p2pkey/internal/testkit"
)

// daemon --metrics serves the real daemon's Prometheus metrics and status
// page, a second daemon cannot take the port, and audit-log prints what the
// holder recorded, without a daemon and without key material.
func TestDaemonMetricsAndAuditLog(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	n1, n2 := initNode(t), initNode(t)
	d1 := startDaemon(t, n1, nil, "--bootstrap", "--metrics", addr)
	d1.waitMember(t, 1)
	d2 := startDaemon(t, n2, strings.NewReader(invite(t, n1)+"\n"), "--join", "-")
	d2.waitMember(t, 2)
	if r := cli(t, n1, nil, "wait", "--unlocked", "--timeout", "30s"); r.code != 0 {
		t.Fatalf("wait --unlocked: %v", r)
	}

	scrape := func() string {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	testkit.WaitFor(t, "the daemon's metrics to show it unlocked with 2 members", 20*time.Second, func() bool {
		m := scrape()
		return strings.Contains(m, `p2pkey_lock_state{state="unlocked"} 1`) && strings.Contains(m, `p2pkey_members{status="active"} 2`)
	})
	if m := scrape(); !strings.Contains(m, "p2pkey_raft_term") || !strings.Contains(m, "go_goroutines") {
		t.Errorf("metrics lack Raft or Go runtime series:\n%.2000s", m)
	}
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "<html") {
		t.Fatalf("status page: %s %.200s", resp.Status, page)
	}

	// A second daemon cannot take the metrics port, and says which.
	n3 := initNode(t)
	if r := cli(t, n3, nil, "daemon", "--bootstrap", "--no-mdns", "--metrics", addr); r.code == 0 || !strings.Contains(r.stderr, "--metrics "+addr) {
		t.Fatalf("a second daemon on the metrics port: %v", r)
	}

	// The holder stored n2's envelope when n2 joined: audit-log says so,
	// in text and as JSON lines, with no share bytes.
	var out string
	testkit.WaitFor(t, "n1's audit log to record n2's envelope", 20*time.Second, func() bool {
		out = must(t, n1, "audit-log")
		return strings.Contains(out, "stored")
	})
	js := must(t, n1, "audit-log", "--json")
	kinds := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(js), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit-log --json line %q: %v", line, err)
		}
		kinds[fmt.Sprint(rec["event"])] = true
		for k := range rec {
			if k == "share" || k == "envelope" || k == "plaintext" {
				t.Fatalf("audit record carries %q: %s", k, line)
			}
		}
	}
	if !kinds["stored"] {
		t.Fatalf("audit-log --json has no stored event:\n%s", js)
	}
	t.Logf("audit-log:\n%s", out)
}

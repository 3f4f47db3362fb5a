package opsweb_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape is one parsed /metrics answer.
type scrape map[string]*dto.MetricFamily

func getMetrics(t *testing.T, url string) scrape {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s: %s", resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	return fams
}

// value returns the value of metric name whose labels include the given
// name=value pairs; ok is false when there is no such series.
func (s scrape) value(name string, labels ...string) (float64, bool) {
	f := s[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.Label {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

func (s scrape) must(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	v, ok := s.value(name, labels...)
	if !ok {
		t.Fatalf("no series %s%v in the scrape", name, labels)
	}
	return v
}

// lockOf is the lock state whose p2pkey_lock_state series is 1.
func (s scrape) lockOf(t *testing.T) string {
	t.Helper()
	var on []string
	for _, st := range []string{"unlocked", "locked", "unescrowed"} {
		if s.must(t, "p2pkey_lock_state", "state", st) == 1 {
			on = append(on, st)
		}
	}
	if len(on) != 1 {
		t.Fatalf("lock_state has %d states at 1: %v", len(on), on)
	}
	return on[0]
}

// Acceptance 1 (issue 16): scrape /metrics from a 3-node cluster through a
// restart of one node; the lock, shares and generation series move as they
// should, on the restarted node and in the view of another.
func TestMetricsThroughRestart(t *testing.T) {
	ms := testCluster(t, 3)
	a, c := ms[0], ms[2]
	cID := c.n.ID().String()

	before := getMetrics(t, c.srv.URL)
	if got := before.lockOf(t); got != "unlocked" {
		t.Fatalf("before the restart: lock %s, want unlocked", got)
	}
	gen := before.must(t, "p2pkey_generation_current")
	if gen < 1 {
		t.Fatalf("generation_current %v, want a committed generation", gen)
	}
	if g := before.must(t, "p2pkey_unlock_generation"); g != gen {
		t.Fatalf("unlock_generation %v, want the current %v", g, gen)
	}
	need := before.must(t, "p2pkey_unlock_shares_needed")
	if have := before.must(t, "p2pkey_unlock_shares_gathered"); need != 2 || have != 3 {
		t.Fatalf("unlocked: %v shares held, need %v; want 3 and 2", have, need)
	}
	if v := before.must(t, "p2pkey_generation_open"); v != 0 {
		t.Fatalf("generation_open %v with no generation forming", v)
	}
	if v := before.must(t, "p2pkey_generations", "state", "committed"); v < 1 {
		t.Fatalf("generations{committed} %v", v)
	}
	for _, m := range ms {
		id := m.n.ID().String()
		if v := before.must(t, "p2pkey_member_shares_held", "peer_id", id); v != 3 {
			t.Fatalf("member %s shares_held %v, want 3", id, v)
		}
		if v := before.must(t, "p2pkey_member_covered", "peer_id", id); v != 1 {
			t.Fatalf("member %s not covered", id)
		}
		if v := before.must(t, "p2pkey_member_escrow_generation", "peer_id", id); v != gen {
			t.Fatalf("member %s escrow generation %v, want %v", id, v, gen)
		}
		if v := before.must(t, "p2pkey_generation_shares_held", "generation", fmt.Sprint(gen), "owner", id); v != 3 {
			t.Fatalf("generation %v owner %s: %v held, want 3", gen, id, v)
		}
	}
	if v := before.must(t, "p2pkey_libp2p_peers", "connection", "direct"); v < 2 {
		t.Fatalf("libp2p_peers{direct} %v, want the 2 other members", v)
	}
	if v := before.must(t, "p2pkey_raft_term"); v < 1 {
		t.Fatalf("raft_term %v", v)
	}
	applied := before.must(t, "p2pkey_raft_applied_index")

	// Stopped: the others see it go.
	c.stop()
	waitFor(t, "a to see c disconnected", 15*time.Second, func() bool {
		v, _ := getMetrics(t, a.srv.URL).value("p2pkey_member_connected", "peer_id", cID)
		return v == 0
	})
	if resp, err := http.Get(c.srv.URL + "/metrics"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("a server with no node attached should still serve /metrics: %v", err)
	} else {
		resp.Body.Close()
	}

	// Restarted: locked with fewer shares than it needs, then unlocked.
	c.start(t)
	first := getMetrics(t, c.srv.URL)
	if got := first.lockOf(t); got != "locked" {
		t.Fatalf("right after the restart: lock %s, want locked", got)
	}
	if have, need := first.must(t, "p2pkey_unlock_shares_gathered"), first.must(t, "p2pkey_unlock_shares_needed"); need > 0 && have >= need {
		t.Fatalf("locked with %v of %v shares", have, need)
	}
	var seen []string
	var last scrape
	// Right after the unlock the node may report its progress from a
	// ledger that has not caught up yet (0 of 0): wait for both.
	waitFor(t, "the restarted node's metrics to say unlocked with its shares", 30*time.Second, func() bool {
		last = getMetrics(t, c.srv.URL)
		st := last.lockOf(t)
		have, need := last.must(t, "p2pkey_unlock_shares_gathered"), last.must(t, "p2pkey_unlock_shares_needed")
		if s := fmt.Sprintf("%s %v/%v", st, have, need); len(seen) == 0 || seen[len(seen)-1] != s {
			seen = append(seen, s)
		}
		return st == "unlocked" && need == 2 && have >= need
	})
	waitFor(t, "the restarted node to catch up its ledger", 30*time.Second, func() bool {
		last = getMetrics(t, c.srv.URL)
		return last.must(t, "p2pkey_raft_applied_index") >= applied && last.must(t, "p2pkey_generation_current") >= gen
	})
	after := getMetrics(t, a.srv.URL)
	if g, ga := last.must(t, "p2pkey_generation_current"), after.must(t, "p2pkey_generation_current"); g != ga {
		t.Fatalf("restarted node at generation %v, the others at %v", g, ga)
	}
	waitFor(t, "a to see c connected again", 15*time.Second, func() bool {
		v, _ := getMetrics(t, a.srv.URL).value("p2pkey_member_connected", "peer_id", cID)
		return v == 1
	})
	t.Logf("lock state and shares gathered/needed seen on the restarted node: %s", strings.Join(seen, " → "))

	// The Observer's series, fed by the nodes themselves: the restarted
	// node's unlock fetched from a's envelope store (served), a pushed its
	// envelopes at the start (push latency), and c timed its unlock.
	s := getMetrics(t, a.srv.URL)
	if v := s.must(t, "p2pkey_share_fetches_served_total"); v < 1 {
		t.Fatalf("share_fetches_served_total on a holder after c's unlock: %v, want at least 1", v)
	}
	if v := s.must(t, "p2pkey_share_push_duration_seconds", "result", "ok"); v < 1 {
		t.Fatalf("share_push_duration_seconds{ok} count %v, want at least 1", v)
	}
	if v := getMetrics(t, c.srv.URL).must(t, "p2pkey_unlock_duration_seconds"); v < 1 {
		t.Fatalf("unlock_duration_seconds count on the restarted node %v, want at least 1", v)
	}
	checkDocumented(t, s)
}

// checkDocumented fails unless every metric family in s is named, in
// backquotes, in docs/METRICS.md.
func checkDocumented(t *testing.T, s scrape) {
	t.Helper()
	doc, err := os.ReadFile("../docs/METRICS.md")
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for name := range s {
		if !strings.Contains(string(doc), "`"+name+"`") {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("metrics not in docs/METRICS.md: %v", missing)
	}
}

package consensus

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// field returns the string value of key in e, or "".
func field(e observer.LoggedEntry, key string) string {
	v, ok := e.ContextMap()[key]
	if !ok {
		return ""
	}
	return fmt.Sprint(v)
}

// loud returns the entries at WARN or above, one per line.
func loud(entries []observer.LoggedEntry) []string {
	var out []string
	for _, e := range entries {
		if e.Level >= zapcore.WarnLevel {
			out = append(out, fmt.Sprintf("%s %s %v", e.Level, e.Message, e.ContextMap()))
		}
	}
	return out
}

// count returns how many entries after from have msg and the given peer,
// per node that logged them.
func count(entries []observer.LoggedEntry, msg string, p peer.ID) map[string]int {
	out := map[string]int{}
	for _, e := range entries {
		if e.Message == msg && field(e, "peer") == p.String() {
			out[field(e, "self")]++
		}
	}
	return out
}

func total(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// Issue 16, "Noisy": forming a cluster (each join), stopping a member
// (its shutdown, and the leader's failing heartbeats to it) and starting it
// again log nothing at WARN or ERROR; the leader says once that it lost
// contact with the member and once that the member is back, however many
// heartbeats failed in between.
func TestQuietLogsWhenAMemberStopsAndReturns(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core).Sugar()
	cl := newClusterWith(t, 3, func(cfg *Config) { cfg.Logger = logger })
	leaderID := cl.waitLeader(cl.nodes)
	var victim int
	for i, nd := range cl.nodes {
		if nd.host.ID() != leaderID {
			victim = i
		}
	}
	nd := cl.nodes[victim]
	id := nd.host.ID()
	priv := nd.host.Peerstore().PrivKey(id)

	// Stop the member as SIGTERM does: Raft shuts down, then the host.
	stopped := logs.Len()
	cl.kill(victim)
	heartbeatFailures := func() int {
		n := 0
		for _, e := range logs.All()[stopped:] {
			if e.Message == "failed to heartbeat to" && field(e, "peer") == id.String() {
				n++
			}
		}
		return n
	}
	waitFor(t, "the leader to fail 10 heartbeats to the stopped member", 20*time.Second, func() bool {
		return heartbeatFailures() >= 10 && total(count(logs.All()[stopped:], "lost contact with member", id)) > 0
	})
	outage := logs.All()[stopped:]
	lost := count(outage, "lost contact with member", id)
	for self, n := range lost {
		if n != 1 {
			t.Errorf("node %s logged %d lines of lost contact with %s over %d failed heartbeats, want 1", self, n, id, heartbeatFailures())
		}
	}
	if lost[leaderID.String()] == 0 && cl.waitLeader(cl.live()) == leaderID {
		t.Errorf("the leader did not say it lost contact with %s: %v", id, lost)
	}

	// Start it again with the same identity and data, on a new port.
	h := newHostWithKey(t, priv)
	nd.host = h
	for _, o := range cl.live() {
		o.host.Peerstore().AddAddrs(id, h.Addrs(), time.Hour)
		h.Peerstore().AddAddrs(o.host.ID(), o.host.Addrs(), time.Hour)
	}
	restarted := logs.Len()
	cl.start(nd)
	waitFor(t, "the leader to say the member is back", 20*time.Second, func() bool {
		return total(count(logs.All()[restarted:], "member back in contact", id)) > 0
	})
	apply(t, cl.nodes[(victim+1)%3].c, "after the restart")
	waitFor(t, "the restarted member to apply the new command", 10*time.Second, func() bool {
		return nd.sm.Count("after the restart") == 1
	})
	for self, n := range count(logs.All()[restarted:], "member back in contact", id) {
		if n != 1 {
			t.Errorf("node %s logged %d lines saying %s is back, want 1", self, n, id)
		}
	}
	if l := loud(logs.All()); len(l) > 0 {
		t.Errorf("%d lines at WARN or ERROR:\n%s", len(l), strings.Join(l, "\n"))
	}
}

// Every message raftLevels lowers is logged at its level here, never raised.
func TestRaftLevels(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	hl := newHCLogger(zap.New(core).Sugar())
	hl.Error("failed to appendEntries to", "peer", "x")
	hl.Error("failed to heartbeat to", "peer", "x")
	hl.Warn("failed to get previous log", "previous-index", 3)
	hl.Warn("heartbeat timeout reached, starting election")
	hl.Error("failed to commit logs", "error", "disk")
	hl.Debug("failed to get previous log")
	want := []zapcore.Level{zapcore.DebugLevel, zapcore.DebugLevel, zapcore.DebugLevel, zapcore.InfoLevel, zapcore.ErrorLevel, zapcore.DebugLevel}
	got := logs.All()
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i, e := range got {
		if e.Level != want[i] {
			t.Errorf("%q logged at %v, want %v", e.Message, e.Level, want[i])
		}
	}
}

// Raft's own lines go through go-log: with go-log set to JSON (as
// GOLOG_LOG_FMT=json does), every line a node writes while it starts, leads
// and stops is a JSON object, Raft's included.
func TestRaftLinesGoThroughGoLog(t *testing.T) {
	saved := logging.GetConfig()
	path := filepath.Join(t.TempDir(), "log.json")
	cfg := saved
	cfg.Format, cfg.Level, cfg.File, cfg.Stderr, cfg.Stdout = logging.JSONOutput, logging.LevelInfo, path, false, false
	cfg.SubsystemLevels = nil
	logging.SetupLogging(cfg)
	t.Cleanup(func() { logging.SetupLogging(saved) })

	cl := newCluster(t, 1)
	cl.waitLeader(cl.nodes)
	cl.kill(0)

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raftLines := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("a line that is not JSON: %q", sc.Text())
		}
		if name, _ := line["logger"].(string); strings.HasPrefix(name, "p2pkey/consensus") && line["msg"] == "entering leader state" {
			raftLines++
		}
	}
	if raftLines == 0 {
		t.Fatalf("no Raft line in go-log's output:\n%s", data)
	}
}

// The contact log's transitions, on a clock the test moves.
func TestContactLog(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	at := time.Unix(1000, 0)
	inConfig := map[raft.ServerID]bool{"a": true, "b": true}
	l := newContactLog(zap.New(core).Sugar(), func() time.Time { return at }, func(id raft.ServerID) bool { return inConfig[id] })

	l.resumed(raft.ResumedHeartbeatObservation{PeerID: "a"}) // never lost: nothing to say
	for range 5 {
		l.failed(raft.FailedHeartbeatObservation{PeerID: "a", LastContact: at.Add(-time.Second)})
		at = at.Add(100 * time.Millisecond)
	}
	l.resumed(raft.ResumedHeartbeatObservation{PeerID: "a"})
	l.resumed(raft.ResumedHeartbeatObservation{PeerID: "a"})
	// b is lost, then removed from the configuration while unreachable;
	// the next failure of anyone forgets it.
	l.failed(raft.FailedHeartbeatObservation{PeerID: "b"})
	delete(inConfig, "b")
	l.failed(raft.FailedHeartbeatObservation{PeerID: "a"})
	if _, ok := l.lost["b"]; ok {
		t.Error("a member removed while unreachable is still remembered")
	}
	l.forget()
	if len(l.lost) != 0 {
		t.Error("forget kept members")
	}

	var got []string
	for _, e := range logs.All() {
		got = append(got, e.Level.String()+" "+e.Message+" "+field(e, "peer")+" "+field(e, "unreachable_for"))
	}
	want := []string{
		"info lost contact with member a ",
		"info member back in contact a 500ms",
		"info lost contact with member b ",
		"info lost contact with member a ",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("logged:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// The leader stopping, gracefully (leadership handed over first, as the node
// does on SIGTERM) or not (killed), logs nothing at WARN or ERROR on any
// node, and the cluster goes on with a new leader.
func TestQuietLogsWhenTheLeaderStops(t *testing.T) {
	for _, graceful := range []bool{true, false} {
		t.Run(fmt.Sprintf("graceful=%v", graceful), func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			cl := newClusterWith(t, 3, func(cfg *Config) { cfg.Logger = zap.New(core).Sugar() })
			leaderID := cl.waitLeader(cl.nodes)
			old := slices.IndexFunc(cl.nodes, func(nd *testNode) bool { return nd.host.ID() == leaderID })
			if graceful {
				if err := cl.nodes[old].c.TransferLeadership(5 * time.Second); err != nil {
					t.Fatal(err)
				}
			}
			cl.kill(old)
			var next peer.ID
			waitFor(t, "an agreed new leader", 15*time.Second, func() bool {
				next = ""
				for _, nd := range cl.live() {
					l := nd.c.Leader()
					if l == "" || l == leaderID || (next != "" && l != next) {
						return false
					}
					next = l
				}
				return true
			})
			apply(t, cl.byID(next).c, "after the leader stopped")
			if l := loud(logs.All()); len(l) > 0 {
				t.Errorf("%d lines at WARN or ERROR:\n%s", len(l), strings.Join(l, "\n"))
			}
		})
	}
}

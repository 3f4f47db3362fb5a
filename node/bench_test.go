package node

// Benchmarks for acceptance point 8 of the shares issue: unlock latency after
// a restart, generation commit time after a join, and bytes on the wire per
// generation. Each is a measurement over real in-process clusters (libp2p on
// loopback, real Raft, stores in temporary directories), not a b.N loop: it
// runs its fixed number of samples once, reports figures with b.ReportMetric,
// and suppresses the meaningless ns/op. Run them with
//
//	go test ./node -run '^$' -bench . -benchtime 1x -timeout 30m

import (
	"cmp"
	"flag"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/p2pkey/p2pkey/consensus"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/shares"
)

// benchBuildTimeout bounds each step of building a benchmark cluster. It is
// generous: 25 nodes in one process on two shared cores are slow to grow.
const benchBuildTimeout = 3 * time.Minute

// BenchmarkUnlock measures unlock latency for 5 and 15 nodes:
//
//   - direct: the wall time of one tryUnlock on a node whose keyring was
//     wiped while the rest of the cluster is up. That is exactly "from the
//     start of the unlock phase (the first fetch is issued) to unlocked":
//     parallel fetches, opening the envelopes, Combine, key check, K set.
//   - restart: a rotating node is closed and started again from its data
//     directory; the time from Start returning to Lock() reporting
//     "unlocked" (which also needs the ledger to have caught up), polled
//     every millisecond. Also reported: from the Start call to K being back
//     in memory, and to "unlocked". Close is a graceful stop, which leaves a
//     Raft snapshot behind: a node killed instead replays its log on start
//     (see Node.snapshotForRestart), and unlocks later.
//
// With -unlock.leader every restart is of the node that leads at the time
// (a graceful stop hands leadership over first). With -unlock.trace FILE it
// also writes to FILE (appending), for the three slowest restarts of each
// size, every node's unlock steps from the Start call on: the attempts,
// each fetch and whether it had to dial, and each
// holder's confirmation that its ledger is current before it serves.
func BenchmarkUnlock(b *testing.B) {
	for _, size := range []int{5, 15} {
		b.Run(fmt.Sprintf("nodes=%d", size), func(b *testing.B) { benchUnlock(b, size) })
	}
}

var (
	unlockTrace  = flag.String("unlock.trace", "", "BenchmarkUnlock: write the unlock steps of the slowest restarts to this file")
	unlockLeader = flag.Bool("unlock.leader", false, "BenchmarkUnlock: restart the leader every time instead of each node in turn")
)

func benchUnlock(b *testing.B, size int) {
	const (
		directSamples  = 20
		restartSamples = 20
	)
	var rec *stepRecorder
	var edit func(*Config)
	if *unlockTrace != "" {
		rec = &stepRecorder{}
		edit = func(c *Config) { c.setHooks(&testHooks{trace: rec.add}) }
	}
	nodes := benchCluster(b, size, edit)
	benchSettle(b, nodes)

	// (b) The unlock phase alone, on every node in turn.
	var direct []time.Duration
	for i := 0; len(direct) < directSamples; i++ {
		if i >= 3*directSamples {
			b.Fatalf("only %d valid direct unlock samples in %d attempts", len(direct), i)
		}
		if d, ok := directUnlock(b, nodes[i%size]); ok {
			direct = append(direct, d)
		}
	}

	// (a) Restarts of a rotating node.
	var fromReturn, fromStart, keyBack []time.Duration
	var traces []string
	for i := range restartSamples {
		idx := (i + 1) % size // nodes 1, 2, ..., then the founder (the first leader)
		if *unlockLeader {
			idx = slices.Index(nodes, benchLeader(b, nodes))
		}
		cfg := nodes[idx].cfg
		cfg.Bootstrap, cfg.Join = false, ""
		// Come back on the same port, as a daemon with a configured listen
		// address does. (With a fresh ephemeral port each time, two members
		// restarted in turn can hold each other's stale address only, and
		// the second one stays unescrowed until something re-announces it.)
		cfg.ListenAddrs = nil
		for _, a := range nodes[idx].host.Network().ListenAddresses() {
			cfg.ListenAddrs = append(cfg.ListenAddrs, a.String())
		}
		restarted := nodes[idx].ID()
		nodes[idx].Close()
		rec.start()
		t0 := time.Now()
		n := benchStart(b, cfg)
		t1 := time.Now()
		nodes[idx] = n
		var tKey time.Time
		deadline := t1.Add(time.Minute)
		for {
			now := time.Now()
			if tKey.IsZero() && n.keys.get() != nil {
				tKey = now
			}
			if state, _ := n.LockState(); state == LockUnlocked {
				if tKey.IsZero() {
					tKey = now
				}
				fromReturn = append(fromReturn, now.Sub(t1))
				traces = append(traces, rec.take(fmt.Sprintf("restart %d of node %d: Start returned after %.1f ms, unlocked %.1f ms after the Start call", i, idx, ms(t1.Sub(t0)), ms(now.Sub(t0))), t0, restarted))
				fromStart = append(fromStart, now.Sub(t0))
				keyBack = append(keyBack, tKey.Sub(t0))
				break
			}
			if now.After(deadline) {
				_, p := n.LockState()
				b.Fatalf("restart %d: node %d did not unlock within a minute: %+v", i, idx, p)
			}
			time.Sleep(time.Millisecond) // the sample's resolution: a benchmark, not a wait for a condition
		}
		// Let the cluster settle (leader, voters) before the next restart, so
		// no sample pays for the previous one's election.
		benchWaitAgree(b, nodes, size, time.Minute)
	}

	if rec != nil {
		order := make([]int, len(fromReturn))
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(i, j int) int { return cmp.Compare(fromReturn[j], fromReturn[i]) })
		var out []string
		for _, i := range order[:min(3, len(order))] {
			out = append(out, fmt.Sprintf("nodes=%d, one of the slowest restarts: %s\n", size, traces[i]))
		}
		f, err := os.OpenFile(*unlockTrace, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err == nil {
			_, err = f.WriteString(strings.Join(out, ""))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			b.Errorf("write the unlock trace: %v", err)
		}
	}
	b.Logf("nodes=%d direct unlock (ms): %s", size, fmtMS(direct))
	b.Logf("nodes=%d restart, Start return -> unlocked (ms): %s", size, fmtMS(fromReturn))
	b.Logf("nodes=%d restart, Start call -> K in memory (ms): %s", size, fmtMS(keyBack))
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(pct(direct, 50)), "unlock-p50-ms")
	b.ReportMetric(ms(pct(direct, 90)), "unlock-p90-ms")
	b.ReportMetric(ms(pct(fromReturn, 50)), "restart-unlock-p50-ms")
	b.ReportMetric(ms(pct(fromReturn, 90)), "restart-unlock-p90-ms")
	b.ReportMetric(ms(pct(fromReturn, 100)), "restart-unlock-max-ms")
	b.ReportMetric(ms(pct(fromStart, 50)), "restart-from-start-p50-ms")
	b.ReportMetric(ms(pct(keyBack, 50)), "restart-key-back-p50-ms")
}

// directUnlock wipes n's keyring and times one tryUnlock with the ledger's
// coverage. It reports false when the sample is not valid: the key loop,
// which also unlocks a locked node, got to the attempt first (this call then
// returns at once without K), or the attempt fell short.
func directUnlock(b *testing.B, n *Node) (time.Duration, bool) {
	b.Helper()
	var (
		clusterID string
		cov       generations.Coverage
		check     []byte
	)
	n.view(func(l *generations.Ledger) {
		clusterID = l.ClusterID()
		cov = l.Coverage(n.ID())
		check, _ = l.KeyCheck(n.ID())
	})
	if !cov.CanUnlock {
		b.Fatalf("node %s cannot unlock: %+v", n.ID(), cov)
	}
	// Every holder serves a fetching owner at 5/s (burst 10): keep well
	// inside it however the samples land on nodes.
	time.Sleep(250 * time.Millisecond) // pacing the samples under the holders' fetch rate limit
	n.keys.wipe()
	t0 := time.Now()
	n.tryUnlock(clusterID, cov, check)
	d := time.Since(t0)
	if n.keys.get() == nil {
		_, p := n.LockState()
		b.Logf("discarding a direct unlock sample of %s after %v: %+v", n.ID(), d, p)
		waitUnlocked(b, n)
		return 0, false
	}
	return d, true
}

// BenchmarkJoinCommit grows a cluster to N-1 members and times one more
// join, watching every member's ledger each millisecond: commit-ms runs from
// just before the joiner's Start (with the invite) to the first ledger that
// shows the joiner's generation committed; consumed-to-commit-ms from the
// first ledger that shows the invite consumed (the generation open) to that
// commit. It also reports when Start returned, full coverage, and, in the
// same run, the median Raft commit latency of the cluster (a SetAddrs no-op
// applied on the leader and waited for locally); commit-over-raft and
// consumed-over-raft are the two times in units of that median.
func BenchmarkJoinCommit(b *testing.B) {
	for _, size := range []int{5, 15, 25} {
		b.Run(fmt.Sprintf("nodes=%d", size), func(b *testing.B) { benchJoinCommit(b, size) })
	}
}

func benchJoinCommit(b *testing.B, size int) {
	built := time.Now()
	nodes := benchCluster(b, size-1, nil)
	benchSettle(b, nodes)
	b.Logf("nodes=%d: grew %d members in %v", size, size-1, time.Since(built).Round(time.Millisecond))

	raft := raftCommitLatencies(b, nodes, 50)
	raftP50 := pct(raft, 50)

	jt := timeJoin(b, nodes, nil)
	commit := jt.committed.Sub(jt.start)

	b.Logf("nodes=%d raft commit (ms): %s", size, fmtMS(raft))
	b.Logf("nodes=%d join: consumed %v, committed %v (ledger: opened->committed %v), Start returned %v, full coverage %v after Start",
		size, jt.consumed.Sub(jt.start), commit, jt.ledgerCommit, jt.returned.Sub(jt.start), jt.covered.Sub(jt.start))
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(commit), "commit-ms")
	b.ReportMetric(ms(jt.committed.Sub(jt.consumed)), "consumed-to-commit-ms")
	b.ReportMetric(ms(jt.ledgerCommit), "ledger-open-to-commit-ms")
	b.ReportMetric(ms(jt.returned.Sub(jt.start)), "start-return-ms")
	b.ReportMetric(ms(jt.covered.Sub(jt.start)), "full-coverage-ms")
	b.ReportMetric(ms(raftP50), "raft-commit-p50-ms")
	b.ReportMetric(float64(commit)/float64(raftP50), "commit-over-raft")
	b.ReportMetric(float64(jt.committed.Sub(jt.consumed))/float64(raftP50), "consumed-over-raft")
}

// raftCommitLatencies times count sequential no-op commands on the leader,
// each waited for until the leader has applied it.
func raftCommitLatencies(b *testing.B, nodes []*Node, count int) []time.Duration {
	b.Helper()
	leader := benchLeader(b, nodes)
	var addrs []string
	leader.view(func(l *generations.Ledger) {
		m, _ := l.Member(leader.ID())
		addrs = m.Addrs
	})
	if len(addrs) == 0 {
		b.Fatal("the leader has no addresses in the ledger to set again")
	}
	ctx := ctxT(b, time.Minute)
	var out []time.Duration
	for range count {
		t0 := time.Now()
		if err := leader.apply(ctx, generations.NewSetAddrs(leader.ID(), addrs, time.Now())); err != nil {
			b.Fatalf("raft no-op: %v", err)
		}
		out = append(out, time.Since(t0))
	}
	return out
}

// joinTiming is what timeJoin observed, all on this process's clock.
type joinTiming struct {
	joiner                        *Node
	start                         time.Time // just before Start
	consumed, committed, returned time.Time
	covered                       time.Time // every owner escrowed with every share held
	ledgerCommit                  time.Duration
}

// timeJoin has nodes[0] issue an invite, starts a joiner with it (edited by
// edit), and watches every member's ledger every millisecond for the first
// to show the invite consumed (the generation opened) and the first to show
// the joiner's generation committed: both are the leader's, where Raft
// commits first. It returns once
// every owner is escrowed in the new generation with every share held.
func timeJoin(b *testing.B, nodes []*Node, edit func(*Config)) joinTiming {
	b.Helper()
	inviter := nodes[0]
	issued, err := inviter.Invite(ctxT(b, 30*time.Second), time.Hour)
	tok := issued.Token
	if err != nil {
		b.Fatalf("invite: %v", err)
	}
	cfg := benchConfig(b)
	cfg.Join = tok
	if edit != nil {
		edit(&cfg)
	}
	// Create the joiner's identity up front, so the watcher knows its ID.
	id, err := Init(cfg.DataDir)
	if err != nil {
		b.Fatal(err)
	}
	var before uint64
	inviter.view(func(l *generations.Ledger) {
		g, _ := l.Current()
		before = g.Number
	})

	var jt joinTiming
	watched := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(watched)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for jt.committed.IsZero() {
			var consumed, committed bool
			var g generations.Generation
			// The first ledger to show a change is the leader's: Raft
			// commits there first.
			for _, nd := range nodes {
				nd.view(func(l *generations.Ledger) {
					_, c := l.Member(id)
					consumed = consumed || c
					if cur, _ := l.Current(); !committed && cur.Number > before && slices.Contains(cur.Members, id) {
						g, committed = cur, true
					}
				})
			}
			now := time.Now()
			if consumed && jt.consumed.IsZero() {
				jt.consumed = now
			}
			if committed {
				jt.committed = now
				jt.ledgerCommit = g.CommittedAt.Sub(g.OpenedAt)
				return
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	jt.start = time.Now()
	n, err := Start(ctxT(b, benchBuildTimeout), cfg)
	jt.returned = time.Now()
	if err != nil {
		close(stop)
		<-watched
		dumpCluster(b, nodes)
		b.Fatalf("join of %s: %v", id, err)
	}
	b.Cleanup(func() { n.Close() })
	jt.joiner = n
	select {
	case <-watched:
	case <-time.After(time.Minute):
		close(stop)
		<-watched
		b.Fatal("the joiner's generation did not commit in the inviter's ledger within a minute of Start returning")
	}
	if jt.committed.IsZero() {
		b.Fatal("the watcher stopped before the commit")
	}
	if jt.consumed.IsZero() {
		jt.consumed = jt.committed
	}
	all := append(slices.Clone(nodes), n)
	jt.covered = benchWaitCoverage(b, all, benchBuildTimeout)
	return jt
}

// BenchmarkWireBytes counts what every node of a cluster sends while one
// join grows it to N members: from just before the joiner's Start to the
// generation committed and every owner escrowed with every share held. It
// counts stream payload bytes per protocol, through a libp2p bandwidth
// reporter on every host (the test hook); the Noise and yamux framing and
// TCP/IP headers under them are not included. Background traffic (Raft
// heartbeats, identify, pings) over an idle window of the same cluster is
// reported too, as a rate.
func BenchmarkWireBytes(b *testing.B) {
	for _, size := range []int{5, 15} {
		b.Run(fmt.Sprintf("nodes=%d", size), func(b *testing.B) { benchWireBytes(b, size) })
	}
}

func benchWireBytes(b *testing.B, size int) {
	var counters []*wireCounter
	var cmu sync.Mutex
	withCounter := func(c *Config) {
		wc := newWireCounter()
		cmu.Lock()
		counters = append(counters, wc)
		cmu.Unlock()
		c.setHooks(&testHooks{libp2p: []libp2p.Option{libp2p.BandwidthReporter(wc)}})
	}
	total := func() wireTotals {
		cmu.Lock()
		defer cmu.Unlock()
		return sumWire(counters)
	}
	nodes := benchCluster(b, size-1, withCounter)
	benchSettle(b, nodes)

	// Idle background, for scale.
	const idle = 3 * time.Second
	i0 := total()
	time.Sleep(idle) // measuring the idle traffic over a fixed window
	idleSent, idleBy := total().since(i0)
	idleRate := float64(idleSent) / idle.Seconds()

	before := total()
	jt := timeJoin(b, nodes, withCounter)
	after := total()
	window := jt.covered.Sub(jt.start)
	sent, by := after.since(before)
	toJoiner := after.to[jt.joiner.ID()] - before.to[jt.joiner.ID()]

	b.Logf("nodes=%d: %.1f KiB sent by all nodes over %v (join start -> commit and full coverage), %.1f KiB of it to the joiner; idle background %.1f KiB/s",
		size, kib(sent), window.Round(time.Millisecond), kib(toJoiner), idleRate/1024)
	b.Logf("nodes=%d generation, by protocol: %s", size, fmtProtos(by, 1, "KiB"))
	b.Logf("nodes=%d idle, by protocol: %s", size, fmtProtos(idleBy, idle.Seconds(), "KiB/s"))
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(kib(sent), "wire-KiB-per-generation")
	b.ReportMetric(kib(by[shares.ProtocolID]), "share-KiB")
	b.ReportMetric(kib(by[consensus.RaftProtocol]+by[consensus.ForwardProtocol]), "raft-KiB")
	b.ReportMetric(kib(toJoiner), "to-joiner-KiB")
	b.ReportMetric(kib(sent)-idleRate/1024*window.Seconds(), "wire-KiB-net-of-idle")
	b.ReportMetric(idleRate/1024, "idle-KiB/s")
	b.ReportMetric(ms(window), "window-ms")
}

// wireCounter is a libp2p bandwidth reporter that also keeps exact totals of
// bytes sent, overall and by protocol. The embedded BandwidthCounter's
// meters are folded in by a sweeper once a second, so their totals lag; these
// do not.
type wireCounter struct {
	*metrics.BandwidthCounter
	mu    sync.Mutex
	out   int64
	proto map[protocol.ID]int64
	to    map[peer.ID]int64
}

func newWireCounter() *wireCounter {
	return &wireCounter{BandwidthCounter: metrics.NewBandwidthCounter(), proto: map[protocol.ID]int64{}, to: map[peer.ID]int64{}}
}

func (c *wireCounter) LogSentMessageStream(size int64, proto protocol.ID, p peer.ID) {
	c.BandwidthCounter.LogSentMessageStream(size, proto, p)
	c.mu.Lock()
	c.out += size
	c.proto[proto] += size
	c.to[p] += size
	c.mu.Unlock()
}

// wireTotals is the sum of what a set of counters saw sent.
type wireTotals struct {
	out   int64
	proto map[protocol.ID]int64
	to    map[peer.ID]int64
}

func sumWire(cs []*wireCounter) wireTotals {
	t := wireTotals{proto: map[protocol.ID]int64{}, to: map[peer.ID]int64{}}
	for _, c := range cs {
		c.mu.Lock()
		t.out += c.out
		for k, v := range c.proto {
			t.proto[k] += v
		}
		for k, v := range c.to {
			t.to[k] += v
		}
		c.mu.Unlock()
	}
	return t
}

// since returns what was sent between then and t, by protocol.
func (t wireTotals) since(then wireTotals) (int64, map[protocol.ID]int64) {
	diff := map[protocol.ID]int64{}
	for k, v := range t.proto {
		if d := v - then.proto[k]; d != 0 {
			diff[k] = d
		}
	}
	return t.out - then.out, diff
}

func fmtProtos(diff map[protocol.ID]int64, scale float64, unit string) string {
	keys := make([]protocol.ID, 0, len(diff))
	for k := range diff {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return diff[keys[i]] > diff[keys[j]] })
	var lines []string
	for _, k := range keys {
		name := string(k)
		if name == "" {
			name = "(before protocol negotiation)"
		}
		lines = append(lines, fmt.Sprintf("%s %.1f %s", name, kib(diff[k])/scale, unit))
	}
	return strings.Join(lines, "; ")
}

var _ metrics.Reporter = (*wireCounter)(nil)

// benchConfig is testConfig with DefaultConfig's Raft timing (the tests'
// 300 ms election timeout causes spurious elections once 20-odd nodes share
// two cores) and room for large clusters on slow machines.
func benchConfig(b *testing.B) Config {
	cfg := testConfig(b)
	def := DefaultConfig(cfg.DataDir)
	cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout, cfg.CommitTimeout = def.HeartbeatTimeout, def.ElectionTimeout, def.LeaderLeaseTimeout, def.CommitTimeout
	cfg.JoinTimeout = benchBuildTimeout
	cfg.ControlSocket = false
	return cfg
}

// benchStart starts a node and closes it when the benchmark ends.
func benchStart(b *testing.B, cfg Config) *Node {
	b.Helper()
	n, err := Start(ctxT(b, benchBuildTimeout), cfg)
	if err != nil {
		b.Fatalf("start node: %v", err)
	}
	b.Cleanup(func() { n.Close() })
	return n
}

// benchCluster bootstraps one node and joins the rest by invite, one after
// another, each config edited by edit (nil: none).
func benchCluster(b *testing.B, size int, edit func(*Config)) []*Node {
	b.Helper()
	cfg := benchConfig(b)
	cfg.Bootstrap = true
	if edit != nil {
		edit(&cfg)
	}
	nodes := []*Node{benchStart(b, cfg)}
	for len(nodes) < size {
		issued, err := nodes[0].Invite(ctxT(b, 30*time.Second), time.Hour)
		tok := issued.Token
		if err != nil {
			b.Fatalf("invite: %v", err)
		}
		cfg := benchConfig(b)
		cfg.Join = tok
		if edit != nil {
			edit(&cfg)
		}
		nodes = append(nodes, benchStart(b, cfg))
	}
	return nodes
}

// benchSettle waits until nodes agree on members and leader, every owner is
// escrowed in the current generation with every share held, no generation is
// open, and every node is unlocked.
func benchSettle(b *testing.B, nodes []*Node) {
	b.Helper()
	benchWaitAgree(b, nodes, len(nodes), benchBuildTimeout)
	benchWaitCoverage(b, nodes, benchBuildTimeout)
	waitUnlocked(b, nodes...)
}

// benchWaitCoverage is waitFullCoverage with a timeout and a 1 ms poll; it
// returns when coverage was first seen full.
func benchWaitCoverage(b *testing.B, nodes []*Node, timeout time.Duration) time.Time {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		now := time.Now()
		if fullCoverage(nodes) {
			return now
		}
		if now.After(deadline) {
			b.Fatalf("timed out after %v waiting for full coverage of %d nodes", timeout, len(nodes))
		}
		time.Sleep(time.Millisecond) // the measurement's resolution: the time coverage became full
	}
}

func fullCoverage(nodes []*Node) bool {
	for _, n := range nodes {
		ok := true
		n.view(func(l *generations.Ledger) {
			cur, has := l.Current()
			if _, open := l.Open(); !has || open || len(cur.Members) != len(nodes) {
				ok = false
				return
			}
			for _, m := range cur.Members {
				c := l.Coverage(m)
				if c.Generation != cur.Number || c.SharesHeld != len(nodes) {
					ok = false
					return
				}
			}
		})
		if !ok {
			return false
		}
	}
	return true
}

func benchWaitAgree(b *testing.B, nodes []*Node, want int, timeout time.Duration) {
	b.Helper()
	waitFor(b, fmt.Sprintf("%d nodes to agree on members and leader", len(nodes)), timeout, func() bool {
		var leader peer.ID
		for _, n := range nodes {
			l := n.cons.Leader()
			if l == "" || (leader != "" && l != leader) {
				return false
			}
			leader = l
			voters := 0
			for _, s := range n.cons.Servers() {
				if s.Voter {
					voters++
				}
			}
			if voters != want || len(activeIDs(n)) != want {
				return false
			}
		}
		return true
	})
}

// dumpCluster logs each node's view of Raft and the ledger, to explain a
// benchmark that could not finish.
func dumpCluster(b *testing.B, nodes []*Node) {
	b.Helper()
	for i, n := range nodes {
		voters, servers := 0, n.cons.Servers()
		for _, s := range servers {
			if s.Voter {
				voters++
			}
		}
		var cur, open generations.Generation
		var hasOpen bool
		var active, joining int
		n.view(func(l *generations.Ledger) {
			cur, _ = l.Current()
			open, hasOpen = l.Open()
			active, joining = len(l.Active()), len(l.Joining())
		})
		b.Logf("node %d %s: raft %s, leader %s, %d servers (%d voters), applied %d; ledger: current %d, open %d (%v), %d active, %d joining",
			i, n.ID(), n.cons.State(), n.cons.Leader(), len(servers), voters, n.cons.AppliedIndex(), cur.Number, open.Number, hasOpen, active, joining)
	}
}

func benchLeader(b *testing.B, nodes []*Node) *Node {
	b.Helper()
	for _, n := range nodes {
		if n.cons.IsLeader() {
			return n
		}
	}
	b.Fatal("no leader among the nodes")
	return nil
}

func pct(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func kib(n int64) float64 { return float64(n) / 1024 }

func fmtMS(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%.1f", ms(d))
	}
	return strings.Join(parts, " ")
}

// stepRecorder collects the nodes' trace steps (testHooks.trace) from one
// restart to the next. A nil recorder records nothing.
type stepRecorder struct {
	mu    sync.Mutex
	on    bool
	steps []recordedStep
}

type recordedStep struct {
	at   time.Time
	self peer.ID
	step string
}

func (r *stepRecorder) add(self peer.ID, step string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.on {
		r.steps = append(r.steps, recordedStep{time.Now(), self, step})
	}
}

// start drops what was recorded and records from now on.
func (r *stepRecorder) start() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on, r.steps = true, nil
}

// take stops recording and returns the steps as lines under title, in ms
// from t0, the restarted node named "restarted".
func (r *stepRecorder) take(title string, t0 time.Time, restarted peer.ID) string {
	if r == nil {
		return ""
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on = false
	lines := []string{title}
	for _, s := range r.steps {
		who := shortPeer(s.self)
		if s.self == restarted {
			who = "restarted"
		}
		step := strings.ReplaceAll(s.step, restarted.String(), "restarted")
		lines = append(lines, fmt.Sprintf("  %8.1f %s: %s", ms(s.at.Sub(t0)), who, step))
	}
	return strings.Join(lines, "\n")
}

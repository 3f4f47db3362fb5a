package node

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/p2pkey/p2pkey/consensus"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/node/pb"
	"github.com/p2pkey/p2pkey/p2p"
	"github.com/p2pkey/p2pkey/wire"
)

// Attacks on catching up with a leader the ledger does not know (vouch.go,
// the catch_up request of the join protocol, allowMember). Real nodes on
// real libp2p hosts; the adversary speaks the protocols with its own
// identity, or with a member's identity and its own handler.

// vouchLogs routes the p2pkey loggers' lines at INFO and above to an
// observer until the test ends.
func vouchLogs(t *testing.T) *observer.ObservedLogs {
	t.Helper()
	saved := logging.GetConfig()
	core, logs := observer.New(zapcore.InfoLevel)
	logging.SetPrimaryCore(core)
	if err := logging.SetLogLevelRegex("^p2pkey/", "info"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logging.SetupLogging(saved) })
	return logs
}

// loudNodeLines returns the node package's lines at WARN or above, but the
// one a removed node says of itself.
func loudNodeLines(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.All() {
		if e.Level >= zapcore.WarnLevel && e.LoggerName == "p2pkey/node" && !strings.HasPrefix(e.Message, "this node was removed from the cluster") {
			out = append(out, fmt.Sprintf("%s %s %v", e.Level, e.Message, e.ContextMap()))
		}
	}
	return out
}

// countLines counts the lines whose message starts with msg and whose
// field key, if key is not "", prints as val.
func countLines(logs *observer.ObservedLogs, msg, key, val string) int {
	n := 0
	for _, e := range logs.All() {
		if !strings.HasPrefix(e.Message, msg) {
			continue
		}
		if key != "" && fmt.Sprint(e.ContextMap()[key]) != val {
			continue
		}
		n++
	}
	return n
}

const vouchedLine = "catching up: a member named the current members"

// catchUpAsk sends one catch_up request from h to member.
func catchUpAsk(t testing.TB, h host.Host, member *Node, cluster string, cmd []byte) (*pb.JoinResponse, error) {
	t.Helper()
	h.Peerstore().AddAddrs(member.ID(), member.host.Addrs(), time.Hour)
	req := &pb.JoinRequest{Version: joinVersion, ClusterId: cluster, CatchUp: true, Command: cmd}
	return wire.Call[pb.JoinResponse](ctxT(t, 20*time.Second), h, member.ID(), joinProto, req)
}

// wantCatchUpRefused fails unless resp refuses with code and carries no
// member, leader or admission.
func wantCatchUpRefused(t testing.TB, what string, resp *pb.JoinResponse, code string) {
	t.Helper()
	switch {
	case resp.GetErrorCode() != code:
		t.Errorf("%s: answered %q (%s), want %q", what, resp.GetErrorCode(), resp.GetErrorMessage(), code)
	case resp.GetAdmitted() || len(resp.GetMembers()) > 0 || len(resp.GetLeader()) > 0 || resp.GetOpened() != nil:
		t.Errorf("%s: refused but the refusal carries cluster state: %v", what, resp)
	default:
		t.Logf("%s: refused: %s: %s", what, resp.GetErrorCode(), resp.GetErrorMessage())
	}
}

// openRaftStream opens a Raft stream from h to n and waits until n's gate
// has refused it (RefusedStreams went up).
func openRaftStream(t testing.TB, h host.Host, n *Node) {
	t.Helper()
	h.Peerstore().AddAddrs(n.ID(), n.host.Addrs(), time.Hour)
	before := n.cons.RefusedStreams()
	ctx := ctxT(t, 10*time.Second)
	s, err := h.NewStream(ctx, n.ID(), consensus.RaftProtocol)
	if err != nil {
		t.Fatalf("open a Raft stream to %s: %v", n.ID(), err)
	}
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = s.Write([]byte{0}) // the lazy protocol negotiation goes out with it
	_, _ = s.Read(make([]byte, 1))
	s.Reset()
	waitFor(t, "the Raft stream to be refused", 10*time.Second, func() bool { return n.cons.RefusedStreams() > before })
}

// vouchIdle waits until n runs no round of questions, and forgets when the
// last one began, so the next refusal may start one (vouchEvery is 10 s of
// wall clock; the tests do not wait it out).
func vouchIdle(t testing.TB, n *Node) {
	t.Helper()
	waitFor(t, "no round of questions to run", 15*time.Second, func() bool {
		v := &n.catchUp.vouch
		v.mu.Lock()
		defer v.mu.Unlock()
		if v.running {
			return false
		}
		v.last, v.until = time.Time{}, nil
		return true
	})
}

func vouchSnapshot(n *Node) (last time.Time, running bool, vouched int) {
	v := &n.catchUp.vouch
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.last, v.running, len(v.until)
}

// fwdCounter counts the bytes a host reads on the forward protocol (which
// carries the read-index requests of followers to the leader), without the
// flow meters' one-second lag.
type fwdCounter struct {
	*metrics.BandwidthCounter
	in atomic.Int64
}

func (c *fwdCounter) LogRecvMessageStream(size int64, proto protocol.ID, p peer.ID) {
	if proto == consensus.ForwardProtocol {
		c.in.Add(size)
	}
	c.BandwidthCounter.LogRecvMessageStream(size, proto, p)
}

// Attack 1. A stranger's catch_up requests: refused, and the refusal tells
// nothing (no members, no leader); a wrong cluster and a request with a
// command are refused too; the join service's per-peer limit holds (3 at
// once, then one per 2 s).
func TestVouchStrangerCatchUpRefused(t *testing.T) {
	nodes := testCluster(t, 3)
	logs := vouchLogs(t)
	m := nodes[1]
	cluster := m.ClusterID()
	hs := floodHosts(t, 2)

	resp, err := catchUpAsk(t, hs[0], m, cluster, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantCatchUpRefused(t, "a stranger's catch_up", resp, codeBadRequest)
	resp, err = catchUpAsk(t, hs[0], m, "not-"+cluster, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantCatchUpRefused(t, "a stranger's catch_up for another cluster", resp, codeWrongCluster)
	resp, err = catchUpAsk(t, hs[0], m, cluster, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	wantCatchUpRefused(t, "a stranger's catch_up with a command", resp, codeBadRequest)

	// The limiter: the bucket (3) is spent, the next ones within 2 s are
	// refused before anything is decoded.
	limited := 0
	for range 10 {
		resp, err := catchUpAsk(t, hs[0], m, cluster, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetErrorCode() == codeRateLimited {
			limited++
		} else {
			wantCatchUpRefused(t, "a stranger's catch_up", resp, codeBadRequest)
		}
	}
	if limited < 7 {
		t.Errorf("%d of 10 requests past the burst were rate limited, want at least 7", limited)
	}
	warns := countLines(logs, "join refused: rate limited", "", "")
	t.Logf("rate limited %d of 10; the member logged %d WARN lines for them", limited, warns)
	if m.allowMember(hs[0].ID()) || m.catchUp.vouch.has(hs[0].ID(), m.now()) {
		t.Error("a stranger that asked is admitted to Raft")
	}
}

// Attack 1, the cost. A member checks that the asker is active only after
// it confirmed its ledger with a read index, so every stranger's catch_up
// runs a read index: a round trip to the leader and a round of heartbeats
// there (raft.VerifyLeader). Measured as read-index requests the leader
// receives from the follower a stranger asks (bytes on the forward
// protocol, divided by the bytes of one read index the test makes).
// Without a leader the refusal waits freshWait (3 s) and says "cannot
// confirm" with Fresh's error, which tells a stranger whether the member
// has a quorum, and names the last leader and the addresses it was dialled
// at.
func TestVouchStrangerCatchUpCostsNoReadIndex(t *testing.T) {
	var mu sync.Mutex
	counters := map[peer.ID]*fwdCounter{}
	nodes := countedCluster(t, 3, func(self peer.ID, c *Config) {
		fc := &fwdCounter{BandwidthCounter: metrics.NewBandwidthCounter()}
		mu.Lock()
		counters[self] = fc
		mu.Unlock()
		c.setHooks(&testHooks{libp2p: []libp2p.Option{libp2p.BandwidthReporter(fc)}})
	})
	leader := leaderOf(t, nodes)
	f := followers(nodes, leader)[0]
	lc := counters[leader.ID()]

	// One read index from f, to size it.
	before := lc.in.Load()
	if err := f.cons.Fresh(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	one := lc.in.Load() - before
	if one <= 0 {
		t.Fatalf("f's read index reached the leader with %d bytes on the forward protocol", one)
	}

	const asks = 6
	hs := floodHosts(t, asks/3)
	before = lc.in.Load()
	for i := range asks {
		resp, err := catchUpAsk(t, hs[i/3], f, f.ClusterID(), nil)
		if err != nil {
			t.Fatal(err)
		}
		wantCatchUpRefused(t, "a stranger's catch_up", resp, codeBadRequest)
	}
	got := lc.in.Load() - before
	t.Logf("%d stranger requests to a follower: %d bytes of read-index requests at the leader (%d per read index): about %d read indexes", asks, got, one, got/one)
	if got/one >= asks {
		t.Errorf("each of %d stranger requests ran a read index on the leader (%d bytes, %d per read index)", asks, got, one)
	}

	// No leader: the refusal must not wait on a read index.
	for _, n := range nodes {
		if n != f {
			n.Close()
		}
	}
	waitFor(t, "f to know no leader", 10*time.Second, func() bool { return f.cons.Leader() == "" })
	h := floodHosts(t, 1)[0]
	start := time.Now()
	resp, err := catchUpAsk(t, h, f, f.ClusterID(), nil)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	wantCatchUpRefused(t, "a stranger's catch_up to a member without a leader", resp, codeBadRequest)
	if took > time.Second {
		t.Errorf("the refusal took %v: the member confirmed its ledger before refusing a stranger", took)
	}
	if rePeer.MatchString(resp.GetErrorMessage()) {
		t.Errorf("the refusal to a stranger names a peer (and the addresses it was dialled at): %q", resp.GetErrorMessage())
	}
}

// countedCluster is a cuttableCluster (never cut) whose every node's config goes
// through edit, with the node's own peer ID.
func countedCluster(t *testing.T, size int, edit func(self peer.ID, c *Config)) []*Node {
	t.Helper()
	return cuttableCluster(t, size, func(c *Config) { edit(c.identityPeer(t), c) })
}

// Attack 2. A stranger opens Raft streams to a healthy member at a high
// rate. Each refusal calls onRaftRefused; the member asks at most one
// round of questions per vouchEvery, whatever the rate, and the stranger is
// never among the peers admitted.
func TestVouchStrangerRaftStreamsCostOneRound(t *testing.T) {
	nodes := testCluster(t, 3)
	logs := vouchLogs(t)
	d := followers(nodes, leaderOf(t, nodes))[0]
	vouchIdle(t, d)
	x := floodHosts(t, 1)[0]

	start := time.Now()
	const streams = 30
	for range streams {
		openRaftStream(t, x, d)
	}
	if took := time.Since(start); took > vouchEvery-time.Second {
		t.Fatalf("%d streams took %v: too slow to judge one round per %v", streams, took, vouchEvery)
	}
	waitFor(t, "the round the stranger's streams started to end", 10*time.Second, func() bool {
		last, running, vouched := vouchSnapshot(d)
		return !last.IsZero() && !running && vouched > 0
	})
	rounds := countLines(logs, vouchedLine, "refused", x.ID().String())
	if rounds != 1 {
		t.Errorf("%d refused streams from a stranger in %v started %d rounds, want 1", streams, time.Since(start), rounds)
	}
	if d.catchUp.vouch.has(x.ID(), d.now()) || d.allowMember(x.ID()) {
		t.Error("the stranger whose streams were refused is admitted to Raft")
	}
	if l := loudNodeLines(logs); len(l) > 0 {
		t.Errorf("the node logged at WARN or above:\n%s", strings.Join(l, "\n"))
	}
}

// Attack 2, the budget. A refusal the member cannot do anything about (a
// removed peer's stream) must not spend the one round per vouchEvery:
// onRaftRefused takes the slot (vouchState.begin) before its goroutine
// finds the peer removed and returns without asking. A removed member still
// running, opening a Raft stream every few seconds, then keeps the slot
// taken, and the refusals of a leader the ledger does not know (or the
// leaderless watch) start no round: the lagging member never catches up.
func TestVouchRefusalOfARemovedPeerSpendsNoRound(t *testing.T) {
	nodes := testCluster(t, 4)
	a, b, d, r := nodes[0], nodes[1], nodes[2], nodes[3]
	removeByMajority(t, r.ID(), a, b, d)
	waitFor(t, "d to see r removed", 10*time.Second, func() bool { return d.memberStatus(r.ID()) == generations.StatusRemoved })
	vouchIdle(t, d)

	openRaftStream(t, r.host, d)
	waitFor(t, "d's goroutine for the refusal to end", 5*time.Second, func() bool {
		_, running, _ := vouchSnapshot(d)
		return !running
	})
	if last, _, vouched := vouchSnapshot(d); !last.IsZero() || vouched > 0 {
		t.Errorf("a removed peer's refused stream spent the round budget (last round %v ago, %d vouched) without asking anyone", time.Since(last), vouched)
	}
	// A stranger's refusal right after must start a round.
	openRaftStream(t, floodHosts(t, 1)[0], d)
	waitFor(t, "a round of questions after the stranger's refusal", 5*time.Second, func() bool {
		_, _, vouched := vouchSnapshot(d)
		return vouched > 0
	})
}

// Attack 3. A member removed while it was down restarts on its stale
// ledger, which still says it is active: it knows no leader (everyone
// refuses its Raft), so it asks (every vouchEvery, see
// TestVouchRemovedMemberStopsAsking). Nobody answers it, it admits nobody,
// and the members log no WARN for it (one INFO per request).
func TestVouchRemovedMemberIsToldNothing(t *testing.T) {
	members, r2, logs := removedWhileDown(t)
	a, b, c := members[0], members[1], members[2]
	if st := r2.memberStatus(r2.ID()); st != generations.StatusActive {
		t.Skipf("the restarted member's ledger says %v of itself: the test needs it stale", st)
	}
	const refusedLine = "catch-up refused: not an active member"
	defer func() {
		if t.Failed() {
			last, running, vouched := vouchSnapshot(r2)
			t.Logf("removed member: leader %q, status of itself %v, removed flag %v, servers %d, last round %v, running %v, vouched %d",
				r2.cons.Leader(), r2.memberStatus(r2.ID()), r2.removed.Load(), len(r2.cons.Servers()), last, running, vouched)
			for _, e := range logs.All() {
				if e.LoggerName == "p2pkey/node" {
					t.Logf("%s %s %v", e.Level, e.Message, e.ContextMap())
				}
			}
		}
	}()
	// A round of questions, as onRaftRefused runs it while the node does
	// not know yet that it was removed.
	if r2.askVouch("") {
		t.Error("a member answered the removed member's round")
	}
	if countLines(logs, refusedLine, "peer", r2.ID().String()) == 0 {
		t.Error("no member logged refusing the removed member")
	}
	// Asked directly, with its own identity: refused, told nothing.
	resp, err := catchUpAsk(t, r2.host, a, a.ClusterID(), nil)
	if err != nil {
		t.Fatal(err)
	}
	wantCatchUpRefused(t, "the removed member's catch_up", resp, codeBadRequest)
	if _, _, vouched := vouchSnapshot(r2); vouched > 0 {
		t.Errorf("the removed member admitted %d peers from an answer", vouched)
	}
	for _, n := range []*Node{a, b, c} {
		if n.allowMember(r2.ID()) {
			t.Errorf("%s admits the removed member to Raft", n.ID())
		}
	}
	if got := countLines(logs, vouchedLine, "", ""); got > 0 {
		t.Errorf("%d rounds of questions were answered while only the removed member asks", got)
	}
	if l := loudNodeLines(logs); len(l) > 0 {
		t.Errorf("the node package logged at WARN or above:\n%s", strings.Join(l, "\n"))
	}
	t.Logf("members logged %d INFO refusals for the removed member", countLines(logs, refusedLine, "peer", r2.ID().String()))
}

// removedWhileDown builds 4 members, removes the fourth by majority while
// it is down, and restarts it on its stale data (restartRemoved): it
// returns the three that stayed, the restarted node and its log lines.
func removedWhileDown(t *testing.T) ([]*Node, *Node, *observer.ObservedLogs) {
	t.Helper()
	nodes := testCluster(t, 4)
	a, b, c, r := nodes[0], nodes[1], nodes[2], nodes[3]
	rcfg := r.cfg
	rcfg.Bootstrap, rcfg.Join = false, ""
	r.Close()
	removeByMajority(t, r.ID(), a, b, c)
	r2, logs := restartRemoved(t, rcfg, r.ID(), a, b, c)
	return []*Node{a, b, c}, r2, logs
}

// restartRemoved waits until the members' ledgers and Raft configurations
// no longer hold r (removed while down), then restarts r on its stale data
// with the logs captured from then on.
func restartRemoved(t *testing.T, rcfg Config, r peer.ID, members ...*Node) (*Node, *observer.ObservedLogs) {
	t.Helper()
	waitFor(t, "every member to see r removed, from its ledger and its Raft configuration", 20*time.Second, func() bool {
		for _, n := range members {
			if n.memberStatus(r) != generations.StatusRemoved || n.cons.InConfiguration(r) {
				return false
			}
		}
		return true
	})
	logs := vouchLogs(t)
	return startNode(t, rcfg), logs
}

// Attack 3, the cost. The removed member learns it was removed (its
// holders refuse it: Node.isRemoved) but its ledger, which nobody will
// bring up to date, still says it is active, so it keeps asking every
// vouchEvery: vouchAsk requests a round, each a read index and an INFO line
// on the member asked, for as long as it runs. A node that knows it was
// removed has nothing to catch up with and should ask no one.
func TestVouchRemovedMemberStopsAsking(t *testing.T) {
	_, r2, logs := removedWhileDown(t)
	waitFor(t, "the removed member to learn it was removed", 15*time.Second, r2.isRemoved)
	if st := r2.memberStatus(r2.ID()); st != generations.StatusActive {
		t.Skipf("the restarted member's ledger says %v of itself: the test needs it stale", st)
	}
	vouchIdle(t, r2)
	const refusedLine = "catch-up refused: not an active member"
	before := countLines(logs, refusedLine, "peer", r2.ID().String())
	r2.onRaftRefused("") // what the leaderless watch calls every vouchEvery
	waitFor(t, "the round to end", 40*time.Second, func() bool {
		_, running, _ := vouchSnapshot(r2)
		return !running
	})
	if got := countLines(logs, refusedLine, "peer", r2.ID().String()) - before; got > 0 {
		t.Errorf("a node that knows it was removed asked %d members for the current ones (each a read index there)", got)
	}
}

// Attack 4. A member that lies: a host with a real member's identity
// answers catch_up with members and a leader of its choosing, among them a
// peer the asker's ledger says is removed and a stranger. The asker takes
// one member's word (the accepted trust edge: the stranger is admitted for
// AppendEntries for vouchTTL, and dialled as the leader), but the removed
// peer is never admitted.
func TestVouchLyingMemberCannotAdmitARemovedPeer(t *testing.T) {
	nodes := testCluster(t, 4)
	a, d, m, r := nodes[0], nodes[1], nodes[2], nodes[3]
	removeByMajority(t, r.ID(), a, d, m)
	waitFor(t, "d to see r removed", 10*time.Second, func() bool { return d.memberStatus(r.ID()) == generations.StatusRemoved })

	// x: the stranger the liar names as the leader, listening.
	x, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.Close() })

	// The liar: m's identity, its own handler.
	mID := m.ID()
	m.Close()
	a.Close() // so that d's questions go to the liar (a's dial fails)
	priv, err := loadOrCreateIdentity(m.cfg.IdentityPath())
	if err != nil {
		t.Fatal(err)
	}
	liar, err := libp2p.New(libp2p.Identity(priv), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { liar.Close() })
	var asked atomic.Int32
	cluster := d.ClusterID()
	liar.SetStreamHandler(JoinProtocol, func(s network.Stream) {
		_ = wire.Serve(context.Background(), s, joinProto, func(ctx context.Context, req *pb.JoinRequest) (*pb.JoinResponse, error) {
			asked.Add(1)
			resp := &pb.JoinResponse{Version: joinVersion, ClusterId: cluster, Leader: []byte(x.ID())}
			for _, p := range []peer.ID{r.ID(), x.ID(), d.ID(), mID} {
				resp.Members = append(resp.Members, &pb.Peer{Id: []byte(p)})
			}
			resp.Members[1].Addrs = p2p.AddrInfoStrings(x)
			return resp, nil
		})
	})
	d.host.Peerstore().AddAddrs(mID, liar.Addrs(), time.Hour)
	if err := d.host.Connect(ctxT(t, 10*time.Second), peer.AddrInfo{ID: mID, Addrs: liar.Addrs()}); err != nil {
		t.Fatal(err)
	}

	// d has no quorum now: its leaderless watch asks, and the liar answers.
	waitFor(t, "d to take the liar's word", 20*time.Second, func() bool { return d.catchUp.vouch.has(x.ID(), d.now()) })
	if d.allowMember(r.ID()) {
		t.Error("a peer d's ledger says is removed is admitted to Raft because a member vouched for it")
	}
	if !d.allowMember(x.ID()) {
		t.Error("the stranger the liar vouched for is not admitted (the accepted trust edge changed: update the test and SECURITY.md)")
	}
	waitFor(t, "d to dial the leader the liar named", 10*time.Second, func() bool {
		return d.host.Network().Connectedness(x.ID()) == network.Connected
	})
	t.Logf("the liar was asked %d times; d admits the stranger %s for AppendEntries until %v and dialled it at the addresses the liar gave",
		asked.Load(), x.ID(), vouchTTL)
}

// Attack 5. A member cut off from everyone's Raft (no quorum for it, the
// others have one) keeps asking while it knows no leader: one round per
// vouchEvery, each answered by the first member asked (one request), and
// nobody's node log goes above INFO for it.
func TestVouchPartitionedMemberAsksQuietly(t *testing.T) {
	var cut atomic.Value
	cut.Store(peer.ID(""))
	nodes := cuttableCluster(t, 3, cuttable(t, &cut, nil))
	logs := vouchLogs(t)
	c := followers(nodes, leaderOf(t, nodes))[0]
	cut.Store(c.ID())
	recheckAll(nodes...)
	start := time.Now()
	var times []time.Time
	waitFor(t, "two rounds of questions from the cut member", 2*vouchEvery, func() bool {
		times = times[:0]
		for _, e := range logs.All() {
			if strings.HasPrefix(e.Message, vouchedLine) {
				times = append(times, e.Time)
			}
		}
		return len(times) >= 2
	})
	gap := times[1].Sub(times[0])
	if gap < vouchEvery-500*time.Millisecond {
		t.Errorf("two rounds %v apart, want at least %v", gap, vouchEvery)
	}
	elapsed := time.Since(start)
	t.Logf("rounds %v apart (one request each: %.0f requests a minute); %d rounds in the %v since the cut", gap, time.Minute.Seconds()/gap.Seconds(), len(times), elapsed)
	if l := loudNodeLines(logs); len(l) > 0 {
		t.Errorf("the node package logged at WARN or above:\n%s", strings.Join(l, "\n"))
	}
	others := map[string]int{}
	for _, e := range logs.All() {
		if e.Level >= zapcore.WarnLevel && e.LoggerName != "p2pkey/node" {
			others[e.LoggerName+": "+e.Message]++
		}
	}
	t.Logf("lines at WARN from other loggers (the test's Raft cut, not the catch-up): %v", others)
}

package consensus

//lint:file-ignore SA1019 hashicorp/raft's wire format still carries the deprecated Leader and Candidate fields; the transport and the RPC guard read them, and tests send them

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// adversary is a peer with its own real libp2p identity that speaks real Raft
// (hashicorp's NetworkTransport over this package's stream layer) and writes
// whatever it likes into the RPCs.
type adversary struct {
	t     *testing.T
	host  host.Host
	trans *raft.NetworkTransport
}

func newAdversary(t *testing.T, nodes ...*testNode) *adversary {
	t.Helper()
	h := newHost(t)
	// It accepts no Raft stream itself, so a leader replicating to it fails
	// fast instead of waiting on it.
	sl := newStreamLayer(h, func(peer.ID) bool { return false }, nil)
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		ServerAddressProvider: addrProvider{}, Stream: sl, MaxPool: 1, Timeout: 2 * time.Second,
		Logger: newHCLogger(&log.SugaredLogger, "self", "adversary"),
	})
	t.Cleanup(func() {
		trans.Close()
		sl.Close()
		h.Close()
	})
	for _, nd := range nodes {
		h.Peerstore().AddAddrs(nd.host.ID(), nd.host.Addrs(), time.Hour)
		nd.host.Peerstore().AddAddrs(h.ID(), h.Addrs(), time.Hour)
	}
	return &adversary{t: t, host: h, trans: trans}
}

func (a *adversary) ID() peer.ID { return a.host.ID() }

// header names p as the sender.
func header(p peer.ID) raft.RPCHeader {
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(p.String()), Addr: []byte(p.String())}
}

func target(nd *testNode) (raft.ServerID, raft.ServerAddress) {
	id := raft.ServerID(nd.host.ID().String())
	return id, raft.ServerAddress(id)
}

func (a *adversary) appendEntries(to *testNode, req *raft.AppendEntriesRequest) error {
	id, addr := target(to)
	return a.trans.AppendEntries(id, addr, req, &raft.AppendEntriesResponse{})
}

func (a *adversary) requestVote(to *testNode, req *raft.RequestVoteRequest) error {
	id, addr := target(to)
	return a.trans.RequestVote(id, addr, req, &raft.RequestVoteResponse{})
}

func (a *adversary) preVote(to *testNode, req *raft.RequestPreVoteRequest) error {
	id, addr := target(to)
	return a.trans.RequestPreVote(id, addr, req, &raft.RequestPreVoteResponse{})
}

func (a *adversary) timeoutNow(to *testNode, req *raft.TimeoutNowRequest) error {
	id, addr := target(to)
	return a.trans.TimeoutNow(id, addr, req, &raft.TimeoutNowResponse{})
}

func (a *adversary) installSnapshot(to *testNode, req *raft.InstallSnapshotRequest, data []byte) error {
	id, addr := target(to)
	req.Size = int64(len(data))
	return a.trans.InstallSnapshot(id, addr, req, &raft.InstallSnapshotResponse{}, bytes.NewReader(data))
}

// nodeState is what an attack must not change on a node.
type nodeState struct {
	leader  peer.ID
	term    uint64
	last    uint64
	servers []Server
}

func (cl *cluster) state() map[peer.ID]nodeState {
	cl.quiesce()
	out := map[peer.ID]nodeState{}
	for _, nd := range cl.live() {
		out[nd.host.ID()] = nodeState{leader: nd.c.Leader(), term: term(nd.c), last: nd.c.raft.LastIndex(), servers: nd.c.Servers()}
	}
	return out
}

func (cl *cluster) refusedRPCs() map[peer.ID]uint64 {
	out := map[peer.ID]uint64{}
	for _, nd := range cl.live() {
		out[nd.host.ID()] = nd.c.RefusedRPCs()
	}
	return out
}

// checkUnchanged fails unless every node's leader, term and configuration
// are as before, its log grew by nothing but barriers of the leader's term
// (the leader nudges when a server connects), and every node refused at
// least want more RPCs. It then proves the cluster still commits.
func (cl *cluster) checkUnchanged(before map[peer.ID]nodeState, refused map[peer.ID]uint64, want uint64) {
	t := cl.t
	t.Helper()
	for id, after := range cl.state() {
		b := before[id]
		if after.leader != b.leader || after.term != b.term || after.last < b.last || !slices.Equal(after.servers, b.servers) {
			t.Errorf("node %s changed: before %+v, after %+v", id, b, after)
			continue
		}
		nd := cl.byID(id)
		for i := b.last + 1; i <= after.last; i++ {
			var l raft.Log
			if err := nd.c.logs.GetLog(i, &l); err != nil || l.Type != raft.LogBarrier || l.Term != b.term {
				t.Errorf("node %s appended entry %d (type %v, term %d, err %v), not a barrier of term %d", id, i, l.Type, l.Term, err, b.term)
			}
		}
	}
	for id, n := range cl.refusedRPCs() {
		if n < refused[id]+want {
			t.Errorf("node %s refused %d RPCs, want at least %d", id, n-refused[id], want)
		}
	}
	apply(t, cl.byID(before[cl.nodes[0].host.ID()].leader).c, "still committing")
}

// Rule S8: a peer in the configuration as a non-voter, speaking for itself,
// may send no RPC at all: not AppendEntries or InstallSnapshot (only voters
// lead), not RequestVote, RequestPreVote or TimeoutNow.
func TestNonVoterRPCsRefused(t *testing.T) {
	cl := newCluster(t, 3)
	leader := cl.byID(cl.waitLeader(cl.nodes))
	adv := newAdversary(t, cl.nodes...)
	if err := leader.c.AddNonvoter(adv.ID(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every node to list the non-voter", 5*time.Second, func() bool {
		for _, nd := range cl.nodes {
			if !nd.c.InConfiguration(adv.ID()) {
				return false
			}
		}
		return true
	})
	before, refused := cl.state(), cl.refusedRPCs()

	me := header(adv.ID())
	self := []byte(adv.ID().String())
	const huge = 1 << 40
	for _, nd := range cl.nodes {
		attacks := map[string]error{
			"AppendEntries": adv.appendEntries(nd, &raft.AppendEntriesRequest{RPCHeader: me, Term: huge, Leader: self,
				PrevLogEntry: 1 << 30, Entries: []*raft.Log{{Index: 1<<30 + 1, Term: huge, Type: raft.LogCommand, Data: EncodeEntry(1, []byte("evil"))}}}),
			"heartbeat":       adv.appendEntries(nd, &raft.AppendEntriesRequest{RPCHeader: me, Term: huge, Leader: self}),
			"InstallSnapshot": adv.installSnapshot(nd, &raft.InstallSnapshotRequest{RPCHeader: me, SnapshotVersion: 1, Term: huge, Leader: self, LastLogIndex: 1 << 30, LastLogTerm: huge}, []byte("junk snapshot")),
			"RequestVote":     adv.requestVote(nd, &raft.RequestVoteRequest{RPCHeader: me, Term: huge, Candidate: self, LastLogIndex: huge, LastLogTerm: huge}),
			"RequestPreVote":  adv.preVote(nd, &raft.RequestPreVoteRequest{RPCHeader: me, Term: huge, LastLogIndex: huge, LastLogTerm: huge}),
			"TimeoutNow":      adv.timeoutNow(nd, &raft.TimeoutNowRequest{RPCHeader: me}),
		}
		for name, err := range attacks {
			if err == nil {
				t.Errorf("node %s answered the non-voter's %s", nd.host.ID(), name)
			}
		}
	}
	cl.checkUnchanged(before, refused, 6)
}

// Rule S8: a voter may speak only for itself. An RPC whose header, Leader or
// Candidate names another member is refused, so Raft never believes it.
func TestVoterNamingAnotherMemberRefused(t *testing.T) {
	cl := newCluster(t, 3)
	leaderID := cl.waitLeader(cl.nodes)
	leader := cl.byID(leaderID)
	adv := newAdversary(t, cl.nodes...)
	// A fourth voter that does not run Raft: the three others are still a
	// quorum (3 of 4).
	if err := leader.c.AddVoter(adv.ID(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every node to list the new voter", 5*time.Second, func() bool {
		for _, nd := range cl.nodes {
			if !slices.Contains(nd.c.Servers(), Server{ID: adv.ID(), Voter: true}) {
				return false
			}
		}
		return true
	})
	victim := cl.followers(leaderID)[0].host.ID()
	before, refused := cl.state(), cl.refusedRPCs()

	me, them := header(adv.ID()), header(victim)
	mixed := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(victim.String()), Addr: []byte(adv.ID().String())}
	const huge = 1 << 40
	for _, nd := range cl.nodes {
		attacks := map[string]error{
			"AppendEntries as the victim":      adv.appendEntries(nd, &raft.AppendEntriesRequest{RPCHeader: them, Term: huge, Leader: []byte(victim.String())}),
			"AppendEntries, victim as ID":      adv.appendEntries(nd, &raft.AppendEntriesRequest{RPCHeader: mixed, Term: huge, Leader: []byte(adv.ID().String())}),
			"AppendEntries, victim as Leader":  adv.appendEntries(nd, &raft.AppendEntriesRequest{RPCHeader: me, Term: huge, Leader: []byte(victim.String())}),
			"AppendEntries, no header":         adv.appendEntries(nd, &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax}, Term: huge, Leader: []byte(victim.String())}),
			"InstallSnapshot as the victim":    adv.installSnapshot(nd, &raft.InstallSnapshotRequest{RPCHeader: them, SnapshotVersion: 1, Term: huge, Leader: []byte(victim.String())}, []byte("x")),
			"RequestVote, victim as Candidate": adv.requestVote(nd, &raft.RequestVoteRequest{RPCHeader: me, Term: huge, Candidate: []byte(victim.String()), LastLogIndex: huge, LastLogTerm: huge}),
			"RequestVote as the victim":        adv.requestVote(nd, &raft.RequestVoteRequest{RPCHeader: them, Term: huge, Candidate: []byte(victim.String()), LastLogIndex: huge, LastLogTerm: huge, LeadershipTransfer: true}),
			"TimeoutNow as the victim":         adv.timeoutNow(nd, &raft.TimeoutNowRequest{RPCHeader: them}),
		}
		for name, err := range attacks {
			if err == nil {
				t.Errorf("node %s answered %s", nd.host.ID(), name)
			}
		}
	}
	cl.checkUnchanged(before, refused, 8)
}

// A peer that AllowMember names but that is not a voter (the stale-
// configuration escape hatch) may send AppendEntries, and nothing that
// starts or wins an election.
func TestMemberHatchAdmitsOnlyLeaderRPCs(t *testing.T) {
	cl := newCluster(t, 3)
	cl.waitLeader(cl.nodes)
	adv := newAdversary(t, cl.nodes...)
	cl.addMember(adv.ID())
	before, refused := cl.state(), cl.refusedRPCs()
	me := header(adv.ID())
	self := []byte(adv.ID().String())
	const huge = 1 << 40
	for _, nd := range cl.nodes {
		// A stale term: Raft reads it and says no, which is the point: the
		// hatch lets it through to Raft.
		if err := adv.appendEntries(nd, &raft.AppendEntriesRequest{RPCHeader: me, Term: 1, Leader: self}); err != nil {
			t.Fatalf("node %s refused an AppendEntries through the member hatch: %v", nd.host.ID(), err)
		}
		if err := adv.requestVote(nd, &raft.RequestVoteRequest{RPCHeader: me, Term: huge, Candidate: self, LastLogIndex: huge, LastLogTerm: huge, LeadershipTransfer: true}); err == nil {
			t.Errorf("node %s answered a RequestVote from a member that is not a voter", nd.host.ID())
		}
		if err := adv.timeoutNow(nd, &raft.TimeoutNowRequest{RPCHeader: me}); err == nil {
			t.Errorf("node %s answered a TimeoutNow from a member that is not a voter", nd.host.ID())
		}
		// What Raft would panic on (and, for a log entry, panic on again
		// at every restart) is refused even from a peer that may lead.
		if err := adv.installSnapshot(nd, &raft.InstallSnapshotRequest{RPCHeader: me, SnapshotVersion: 1, Term: 1, Leader: self}, []byte("x")); err == nil {
			t.Errorf("node %s answered an InstallSnapshot whose configuration does not decode", nd.host.ID())
		}
		for _, e := range []*raft.Log{{Type: raft.LogConfiguration, Data: []byte{0xc1}}, {Type: 42}, {Type: raft.LogAddPeerDeprecated}} {
			if err := adv.appendEntries(nd, &raft.AppendEntriesRequest{RPCHeader: me, Term: 1, Leader: self, Entries: []*raft.Log{e}}); err == nil {
				t.Errorf("node %s answered an AppendEntries with a %v entry Raft would panic on", nd.host.ID(), e.Type)
			}
		}
	}
	cl.checkUnchanged(before, refused, 6)
}

// Nothing caches an admission: once the node drops a peer from its
// allow-list, the peer's next RPC on a pooled stream is refused, and Recheck
// resets its idle pooled streams at once.
func TestDroppedPeerRefusedOnPooledStream(t *testing.T) {
	var mu sync.Mutex
	allowed := map[peer.ID]bool{}
	allow := func(p peer.ID) bool {
		mu.Lock()
		defer mu.Unlock()
		return allowed[p]
	}
	set := func(p peer.ID, ok bool) {
		mu.Lock()
		defer mu.Unlock()
		allowed[p] = ok
	}
	j := &testNode{dir: t.TempDir(), host: newHost(t), sm: &listSM{}, allow: allow}
	t.Cleanup(func() { j.host.Close() })
	c, err := New(fastConfig(j))
	if err != nil {
		t.Fatal(err)
	}
	j.c = c
	t.Cleanup(func() { c.Close() })
	adv := newAdversary(t, j)
	set(adv.ID(), true)
	me := header(adv.ID())
	beat := &raft.AppendEntriesRequest{RPCHeader: me, Term: 1, Leader: []byte(adv.ID().String())}

	if err := adv.appendEntries(j, beat); err != nil {
		t.Fatalf("an unconfigured node refused a peer it allows: %v", err)
	}
	set(adv.ID(), false)
	streams := c.RefusedStreams()
	if err := adv.appendEntries(j, beat); err == nil {
		t.Fatal("an unconfigured node answered a peer it no longer allows")
	}
	if c.RefusedStreams() != streams || c.RefusedRPCs() != 1 {
		t.Fatalf("refused %d streams and %d RPCs; want the RPC on the pooled stream refused (0 streams, 1 RPC)", c.RefusedStreams()-streams, c.RefusedRPCs())
	}

	set(adv.ID(), true)
	if err := adv.appendEntries(j, beat); err != nil {
		t.Fatalf("allowed again: %v", err)
	}
	set(adv.ID(), false)
	if n := c.Recheck(); n != 1 {
		t.Fatalf("Recheck reset %d streams, want the 1 pooled stream", n)
	}
	if n := c.Recheck(); n != 0 {
		t.Fatalf("a second Recheck reset %d streams, want 0", n)
	}
}

// pipeLayer is a raft.StreamLayer whose Dial hands the far end of a pipe to
// the test.
type pipeLayer struct {
	conns chan net.Conn
	done  chan struct{}
}

func (p *pipeLayer) Dial(raft.ServerAddress, time.Duration) (net.Conn, error) {
	a, b := net.Pipe()
	p.conns <- b
	return a, nil
}

func (p *pipeLayer) Accept() (net.Conn, error) {
	<-p.done
	return nil, net.ErrClosed
}

func (p *pipeLayer) Close() error   { return nil }
func (p *pipeLayer) Addr() net.Addr { return peerAddr("pipe") }

// The guard mirrors raft's unexported RPC type bytes; this pins them, so a
// raft upgrade that renumbers them fails here rather than in production.
func TestRPCTypesMatchRaft(t *testing.T) {
	pl := &pipeLayer{conns: make(chan net.Conn, 1), done: make(chan struct{})}
	defer close(pl.done)
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: pl, MaxPool: 0, Timeout: time.Second, Logger: newHCLogger(&log.SugaredLogger)})
	defer trans.Close()
	hdr := header("x")
	for _, tc := range []struct {
		want uint8
		send func()
	}{
		{rpcAppendEntries, func() {
			trans.AppendEntries("x", "x", &raft.AppendEntriesRequest{RPCHeader: hdr}, &raft.AppendEntriesResponse{})
		}},
		{rpcRequestVote, func() {
			trans.RequestVote("x", "x", &raft.RequestVoteRequest{RPCHeader: hdr}, &raft.RequestVoteResponse{})
		}},
		{rpcInstallSnapshot, func() {
			trans.InstallSnapshot("x", "x", &raft.InstallSnapshotRequest{RPCHeader: hdr}, &raft.InstallSnapshotResponse{}, bytes.NewReader(nil))
		}},
		{rpcTimeoutNow, func() {
			trans.TimeoutNow("x", "x", &raft.TimeoutNowRequest{RPCHeader: hdr}, &raft.TimeoutNowResponse{})
		}},
		{rpcRequestPreVote, func() {
			trans.RequestPreVote("x", "x", &raft.RequestPreVoteRequest{RPCHeader: hdr}, &raft.RequestPreVoteResponse{})
		}},
	} {
		done := make(chan struct{})
		go func() { tc.send(); close(done) }()
		conn := <-pl.conns
		var b [1]byte
		if _, err := conn.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		<-done
		if b[0] != tc.want {
			t.Fatalf("raft sent type %d, the guard expects %d", b[0], tc.want)
		}
	}
}

// A leader that removes itself commits the removal, and the others carry on
// under a new leader. The guard refuses the old leader's AppendEntries once a
// follower has appended the entry that removes it; the commit of that entry
// then reaches followers through their next leader.
func TestLeaderRemovesItself(t *testing.T) {
	cl := newCluster(t, 3)
	oldID := cl.waitLeader(cl.nodes)
	old := cl.byID(oldID)
	apply(t, old.c, "before")
	// hashicorp/raft may answer ErrLeadershipLost: the leader steps down as
	// it commits its own removal. What the others see below decides.
	if err := old.c.RemoveServer(oldID, 5*time.Second); err != nil && !errors.Is(err, raft.ErrLeadershipLost) {
		t.Fatalf("the leader removing itself: %v", err)
	}
	rest := cl.followers(oldID)
	var newID peer.ID
	waitFor(t, "a new leader among the others", 15*time.Second, func() bool {
		newID = cl.waitLeader(rest)
		return newID != oldID
	})
	apply(t, cl.byID(newID).c, "after")
	for _, nd := range rest {
		if nd.c.InConfiguration(oldID) {
			t.Fatalf("node %s still lists the removed leader", nd.host.ID())
		}
		waitFor(t, "the others to apply both commands", 5*time.Second, func() bool { return nd.sm.Len() == 2 })
	}
}

// OnRefused hears of every peer whose Raft stream or leader RPC a node
// refused: a node whose configuration lags refuses the leader it has not
// heard of yet that way, and its caller finds out from members it trusts
// whether that peer leads (package node).
func TestOnRefusedNamesTheRefusedPeer(t *testing.T) {
	var told sync.Map // [2]peer.ID{node, refused} -> true
	cl := newClusterWith(t, 3, func(c *Config) {
		self := c.Host.ID()
		c.OnRefused = func(p peer.ID) { told.Store([2]peer.ID{self, p}, true) }
	})
	cl.waitLeader(cl.nodes)
	stranger, trans := strangerRaft(t, cl)
	for _, nd := range cl.nodes {
		id := raft.ServerID(nd.host.ID().String())
		req := &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(stranger.ID().String()), Addr: []byte(stranger.ID().String())},
			Term:      1,
		}
		var resp raft.AppendEntriesResponse
		if err := trans.AppendEntries(id, raft.ServerAddress(id), req, &resp); err == nil {
			t.Fatalf("node %s accepted AppendEntries from a stranger", nd.host.ID())
		}
	}
	waitFor(t, "every node to name the stranger to OnRefused", 5*time.Second, func() bool {
		for _, nd := range cl.nodes {
			if _, ok := told.Load([2]peer.ID{nd.host.ID(), stranger.ID()}); !ok {
				return false
			}
		}
		return true
	})
	told.Range(func(k, _ any) bool {
		if p := k.([2]peer.ID)[1]; p != stranger.ID() {
			t.Errorf("OnRefused named %s, which nobody refused", p)
		}
		return true
	})
}

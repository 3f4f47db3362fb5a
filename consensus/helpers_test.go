package consensus

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// listSM is a StateMachine for tests: it appends every command to a list,
// with the time stamp it was applied with. It refuses commands that start
// with "bad", panics on "panic", and refuses a command that starts with
// "once" if it has applied the same bytes before (as the ledger refuses a
// replayed signed command).
type listSM struct {
	mu      sync.Mutex
	entries [][]byte
	stamps  []int64
}

var (
	errBad    = errors.New("test: bad command")
	errReplay = errors.New("test: replayed command")
)

func (s *listSM) Apply(now int64, cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if bytes.HasPrefix(cmd, []byte("bad")) {
		return nil, errBad
	}
	if bytes.HasPrefix(cmd, []byte("panic")) {
		panic("test panic")
	}
	if bytes.HasPrefix(cmd, []byte("once")) {
		for _, e := range s.entries {
			if bytes.Equal(e, cmd) {
				return nil, errReplay
			}
		}
	}
	s.entries = append(s.entries, append([]byte(nil), cmd...))
	s.stamps = append(s.stamps, now)
	return binary.BigEndian.AppendUint64(nil, uint64(len(s.entries))), nil
}

// Stamps returns the time stamps of the applied commands, in log order.
func (s *listSM) Stamps() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int64(nil), s.stamps...)
}

// Count returns how many times cmd was applied.
func (s *listSM) Count(cmd string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.entries {
		if string(e) == cmd {
			n++
		}
	}
	return n
}

func (s *listSM) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b []byte
	for _, e := range s.entries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(e)))
		b = append(b, e...)
	}
	return b, nil
}

func (s *listSM) Restore(data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries = nil
	for len(data) > 0 {
		if len(data) < 4 {
			return errors.New("short snapshot")
		}
		n := binary.BigEndian.Uint32(data)
		data = data[4:]
		if uint32(len(data)) < n {
			return errors.New("short snapshot")
		}
		s.entries = append(s.entries, data[:n])
		s.stamps = append(s.stamps, 0)
		data = data[n:]
	}
	return nil
}

func (s *listSM) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

type testCodec struct{}

func (testCodec) Code(err error) string {
	switch {
	case errors.Is(err, errBad):
		return "test.bad"
	case errors.Is(err, errReplay):
		return "test.replay"
	}
	return ""
}

func (testCodec) Error(code string) error {
	switch code {
	case "test.bad":
		return errBad
	case "test.replay":
		return errReplay
	}
	return nil
}

// testNode is one member of a test cluster.
type testNode struct {
	dir  string
	host host.Host
	sm   *listSM
	c    *Consensus
	// allow admits the test cluster's peers while this node is unconfigured,
	// as the node package does with the members named in a join response.
	allow func(peer.ID) bool
	// member is AllowMember: peers this node's state calls members.
	member func(peer.ID) bool
}

// cluster is a set of real libp2p hosts on loopback running real Raft with
// real bolt stores in temp dirs.
type cluster struct {
	t     testing.TB
	nodes []*testNode
	edit  func(*Config)

	mu      sync.Mutex
	members map[peer.ID]bool // members outside the Raft configuration
	// denied[{at, from}] makes node at refuse Raft and forward requests
	// from peer from (Config.Deny): a one-way partition.
	denied map[[2]peer.ID]bool
}

func newHost(t testing.TB) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func fastConfig(n *testNode) Config {
	return Config{
		Host:               n.host,
		Dir:                n.dir,
		StateMachine:       n.sm,
		ClusterID:          func() string { return "test-cluster" },
		Errors:             testCodec{},
		HeartbeatTimeout:   300 * time.Millisecond,
		ElectionTimeout:    300 * time.Millisecond,
		LeaderLeaseTimeout: 150 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		AllowUnconfigured:  n.allow,
		AllowMember:        n.member,
	}
}

// newCluster starts n nodes; node 0 bootstraps and the rest are added as
// voters (non-voter first, then promoted).
func newCluster(t testing.TB, n int) *cluster { return newClusterWith(t, n, nil) }

// newClusterWith is newCluster with every node's Config edited by edit.
func newClusterWith(t testing.TB, n int, edit func(*Config)) *cluster {
	t.Helper()
	cl := &cluster{t: t, edit: edit, members: map[peer.ID]bool{}, denied: map[[2]peer.ID]bool{}}
	for i := 0; i < n; i++ {
		cl.nodes = append(cl.nodes, &testNode{dir: t.TempDir(), host: newHost(t), sm: &listSM{}})
	}
	for _, a := range cl.nodes {
		for _, b := range cl.nodes {
			if a != b {
				a.host.Peerstore().AddAddrs(b.host.ID(), b.host.Addrs(), time.Hour)
			}
		}
	}
	for _, nd := range cl.nodes {
		nd.allow = cl.isNode
		nd.member = cl.isMember
		cl.start(nd)
	}
	t.Cleanup(cl.close)
	if err := cl.nodes[0].c.Bootstrap(); err != nil {
		t.Fatal(err)
	}
	cl.waitLeader(cl.nodes[:1])
	for i, nd := range cl.nodes[1:] {
		// On two busy cores under -race a leader can lose its 150 ms lease
		// while the cluster forms: ask whoever leads now, again.
		cl.onLeader(cl.nodes[:i+1], func(c *Consensus) error { return c.AddNonvoter(nd.host.ID(), 5*time.Second) })
		cl.onLeader(cl.nodes[:i+2], func(c *Consensus) error { return c.AddVoter(nd.host.ID(), 5*time.Second) })
	}
	waitFor(t, "every node to see the full configuration", 10*time.Second, func() bool {
		for _, nd := range cl.nodes {
			if len(nd.c.Servers()) != n {
				return false
			}
		}
		return true
	})
	cl.quiesce()
	return cl
}

func (cl *cluster) start(nd *testNode) {
	cl.t.Helper()
	cfg := fastConfig(nd)
	self := nd.host.ID()
	cfg.Deny = func(p peer.ID) bool { return cl.isDenied(self, p) }
	if cl.edit != nil {
		cl.edit(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		cl.t.Fatal(err)
	}
	nd.c = c
}

func (cl *cluster) isNode(p peer.ID) bool {
	for _, nd := range cl.nodes {
		if nd.host.ID() == p {
			return true
		}
	}
	return false
}

// isMember is the cluster's AllowMember: peers marked by addMember.
func (cl *cluster) isMember(p peer.ID) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.members[p]
}

func (cl *cluster) addMember(p peer.ID) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.members[p] = true
}

func (cl *cluster) isDenied(at, from peer.ID) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.denied[[2]peer.ID{at, from}]
}

// block makes node at refuse Raft and forward requests from node from, and
// resets the Raft streams from has open to at.
func (cl *cluster) block(at, from *testNode) {
	cl.mu.Lock()
	cl.denied[[2]peer.ID{at.host.ID(), from.host.ID()}] = true
	cl.mu.Unlock()
	at.c.ResetStreams(from.host.ID())
}

// partition cuts nd off from every other node, both ways.
func (cl *cluster) partition(nd *testNode) {
	for _, o := range cl.live() {
		if o != nd {
			cl.block(nd, o)
			cl.block(o, nd)
		}
	}
}

// heal lifts every block.
func (cl *cluster) heal() {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	clear(cl.denied)
}

// followers returns the live nodes other than the leader.
func (cl *cluster) followers(leader peer.ID) []*testNode {
	var out []*testNode
	for _, nd := range cl.live() {
		if nd.host.ID() != leader {
			out = append(out, nd)
		}
	}
	return out
}

func (cl *cluster) close() {
	for _, nd := range cl.nodes {
		if nd.c != nil {
			nd.c.Close()
		}
		nd.host.Close()
	}
}

// kill stops node i's Raft and closes its host.
func (cl *cluster) kill(i int) {
	nd := cl.nodes[i]
	nd.c.Close()
	nd.c = nil
	nd.host.Close()
}

// quiesce waits until no live node has a nudge queued or running and every
// live node's log ends at the same index: the leader's nudges append
// barriers after commands and configuration changes, a moment after they
// return.
func (cl *cluster) quiesce() {
	cl.t.Helper()
	waitFor(cl.t, "the cluster to quiesce", 10*time.Second, func() bool {
		var last uint64
		for i, nd := range cl.live() {
			if nd.c.nudging() {
				return false
			}
			if l := nd.c.raft.LastIndex(); i == 0 {
				last = l
			} else if l != last {
				return false
			}
		}
		return true
	})
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond) // the poll interval of a wait on cond, not a wait itself
	}
}

// waitLeader waits until all live nodes among nodes agree on one leader, and
// returns it.
// onLeader runs op on the leader among nodes, retrying on another leader
// while leadership moves (raft.ErrLeadershipLost, ErrNotLeader).
func (cl *cluster) onLeader(nodes []*testNode, op func(*Consensus) error) {
	cl.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader := cl.waitLeader(nodes)
		var err error
		for _, nd := range nodes {
			if nd.c != nil && nd.host.ID() == leader {
				err = op(nd.c)
			}
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) || !(errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrNotLeader) || errors.Is(err, ErrNotLeader)) {
			cl.t.Fatal(err)
		}
	}
}

func (cl *cluster) waitLeader(nodes []*testNode) peer.ID {
	cl.t.Helper()
	var leader peer.ID
	waitFor(cl.t, "an agreed leader", 15*time.Second, func() bool {
		leader = ""
		for _, nd := range nodes {
			if nd.c == nil {
				continue
			}
			l := nd.c.Leader()
			if l == "" || (leader != "" && l != leader) {
				return false
			}
			leader = l
		}
		return leader != ""
	})
	return leader
}

func (cl *cluster) live() []*testNode {
	var out []*testNode
	for _, nd := range cl.nodes {
		if nd.c != nil {
			out = append(out, nd)
		}
	}
	return out
}

func (cl *cluster) byID(p peer.ID) *testNode {
	for _, nd := range cl.nodes {
		if nd.host.ID() == p {
			return nd
		}
	}
	cl.t.Fatalf("no node %s", p)
	return nil
}

func apply(t testing.TB, c *Consensus, cmd string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Apply(ctx, []byte(cmd))
	if err != nil {
		t.Fatalf("apply %q: %v", cmd, err)
	}
	return res
}

func term(c *Consensus) uint64 { return c.RaftState().Term }

func newHostWithKey(t testing.TB, priv crypto.PrivKey) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.Identity(priv), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// strangerRaft is a host outside cl that speaks real Raft to every node of
// it: hashicorp/raft's own transport over an ungated stream layer on the
// same protocol ID. Both are closed when the test ends.
func strangerRaft(t testing.TB, cl *cluster) (host.Host, *raft.NetworkTransport) {
	t.Helper()
	stranger := newHost(t)
	t.Cleanup(func() { stranger.Close() })
	sl := newStreamLayer(stranger, func(peer.ID) bool { return true }, nil)
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		ServerAddressProvider: addrProvider{}, Stream: sl, MaxPool: 1, Timeout: 2 * time.Second,
		Logger: newHCLogger(&log.SugaredLogger),
	})
	t.Cleanup(func() { trans.Close() })
	for _, nd := range cl.nodes {
		stranger.Peerstore().AddAddrs(nd.host.ID(), nd.host.Addrs(), time.Hour)
	}
	return stranger, trans
}

// addrProvider gives hashicorp/raft's NetworkTransport, which the tests and
// benchmarks run against raftNet, a server's address: its ID, the peer ID.
type addrProvider struct{}

func (addrProvider) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	return raft.ServerAddress(id), nil
}

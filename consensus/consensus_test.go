package consensus

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/consensus/pb"
	"google.golang.org/protobuf/encoding/protodelim"
)

func TestClusterAgreesOnLeaderAndForwards(t *testing.T) {
	cl := newCluster(t, 3)
	leader := cl.waitLeader(cl.nodes)
	for _, nd := range cl.nodes {
		if got := len(nd.c.Servers()); got != 3 {
			t.Fatalf("node %s sees %d servers, want 3", nd.host.ID(), got)
		}
	}
	// A follower's Apply is forwarded to the leader and returns the result.
	var follower *testNode
	for _, nd := range cl.nodes {
		if nd.host.ID() != leader {
			follower = nd
			break
		}
	}
	res := apply(t, follower.c, "hello")
	if n := binary.BigEndian.Uint64(res); n != 1 {
		t.Fatalf("forwarded apply returned %d, want 1", n)
	}
	// A state-machine error keeps its identity across forwarding.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := follower.c.Apply(ctx, []byte("bad one")); !errors.Is(err, errBad) {
		t.Fatalf("forwarded bad command: got %v, want errBad", err)
	}
	// A panicking state machine returns an error rather than crashing.
	if _, err := follower.c.Apply(ctx, []byte("panic")); !errors.Is(err, ErrStateMachinePanic) {
		t.Fatalf("panicking command: got %v, want ErrStateMachinePanic", err)
	}
	waitFor(t, "every node to apply the command", 5*time.Second, func() bool {
		for _, nd := range cl.nodes {
			if nd.sm.Len() != 1 {
				return false
			}
		}
		return true
	})
}

func TestLeaderFailoverAndRestartFromDisk(t *testing.T) {
	cl := newCluster(t, 3)
	leader := cl.waitLeader(cl.nodes)
	for i := 0; i < 20; i++ {
		apply(t, cl.byID(leader).c, "entry")
	}
	// Kill the leader: the other two elect a new one.
	var idx int
	for i, nd := range cl.nodes {
		if nd.host.ID() == leader {
			idx = i
		}
	}
	cl.kill(idx)
	var newLeader peer.ID
	waitFor(t, "a new leader among the survivors", 15*time.Second, func() bool {
		newLeader = cl.waitLeader(cl.live())
		return newLeader != leader
	})
	apply(t, cl.byID(newLeader).c, "after failover")

	// Restart the old leader from its directory with a fresh host carrying the
	// same identity; it needs no bootstrap and catches up.
	old := cl.nodes[idx]
	if ok, err := HasState(old.dir); err != nil || !ok {
		t.Fatalf("HasState = %v, %v; want true", ok, err)
	}
	priv := old.host.Peerstore().PrivKey(old.host.ID())
	old.host = newHostWithKey(t, priv)
	for _, nd := range cl.live() {
		old.host.Peerstore().AddAddrs(nd.host.ID(), nd.host.Addrs(), time.Hour)
		nd.host.Peerstore().AddAddrs(old.host.ID(), old.host.Addrs(), time.Hour)
	}
	old.sm = &listSM{}
	cl.start(old)
	waitFor(t, "the restarted node to replay its log and catch up", 15*time.Second, func() bool {
		return old.sm.Len() == 21
	})
	if l := cl.waitLeader(cl.nodes); l == "" {
		t.Fatal("no leader after restart")
	}
}

// TestStrangerCannotDeposeLeader is rule S1: a peer outside the Raft
// configuration opens a Raft stream and sends AppendEntries with a huge term.
func TestStrangerCannotDeposeLeader(t *testing.T) {
	cl := newCluster(t, 3)
	leader := cl.waitLeader(cl.nodes)
	before := map[peer.ID]uint64{}
	for _, nd := range cl.nodes {
		before[nd.host.ID()] = term(nd.c)
	}

	stranger, trans := strangerRaft(t, cl)
	for _, nd := range cl.nodes {
		id := raft.ServerID(nd.host.ID().String())
		req := &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(stranger.ID().String()), Addr: []byte(stranger.ID().String())},
			Term:      1 << 40,
		}
		var resp raft.AppendEntriesResponse
		if err := trans.AppendEntries(id, raft.ServerAddress(id), req, &resp); err == nil {
			t.Fatalf("node %s accepted AppendEntries from a stranger (resp term %d)", nd.host.ID(), resp.Term)
		}
		var vresp raft.RequestVoteResponse
		vreq := &raft.RequestVoteRequest{RPCHeader: req.RPCHeader, Term: 1 << 40, LastLogIndex: 1 << 40, LastLogTerm: 1 << 40}
		if err := trans.RequestVote(id, raft.ServerAddress(id), vreq, &vresp); err == nil {
			t.Fatalf("node %s answered RequestVote from a stranger", nd.host.ID())
		}
	}
	waitFor(t, "every node to log the refusals", 5*time.Second, func() bool {
		for _, nd := range cl.nodes {
			if nd.c.RefusedStreams() < 2 {
				return false
			}
		}
		return true
	})
	// Prove the cluster still commits, then check nothing moved.
	apply(t, cl.byID(leader).c, "still here")
	for _, nd := range cl.nodes {
		if got := term(nd.c); got != before[nd.host.ID()] {
			t.Errorf("node %s term changed from %d to %d", nd.host.ID(), before[nd.host.ID()], got)
		}
		if got := nd.c.Leader(); got != leader {
			t.Errorf("node %s leader changed from %s to %s", nd.host.ID(), leader, got)
		}
	}
}

func TestStrangerCannotForward(t *testing.T) {
	cl := newCluster(t, 3)
	leader := cl.waitLeader(cl.nodes)
	stranger := newHost(t)
	defer stranger.Close()
	stranger.Peerstore().AddAddrs(leader, cl.byID(leader).host.Addrs(), time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := stranger.NewStream(ctx, leader, ForwardProtocol)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := protodelim.MarshalTo(s, &pb.ForwardRequest{Version: 1, ClusterId: "test-cluster", Command: []byte("evil")}); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	resp, err := DecodeForwardResponse(s)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetErrorCode() != codeNotAllowed {
		t.Fatalf("stranger's forward got code %q, want %q", resp.GetErrorCode(), codeNotAllowed)
	}
	for _, nd := range cl.nodes {
		if nd.sm.Len() != 0 {
			t.Fatalf("stranger's command was applied on %s", nd.host.ID())
		}
	}
}

func TestGarbageOnProtocols(t *testing.T) {
	cl := newCluster(t, 3)
	leader := cl.waitLeader(cl.nodes)
	member := cl.nodes[1]
	if member.host.ID() == leader {
		member = cl.nodes[2]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, payload := range [][]byte{
		[]byte("garbage garbage garbage"),
		{0xff, 0xff, 0xff, 0xff, 0x7f}, // a length prefix far past the bound
		bytes.Repeat([]byte{0}, 100),
	} {
		s, err := member.host.NewStream(ctx, leader, ForwardProtocol)
		if err != nil {
			t.Fatal(err)
		}
		s.Write(payload)
		s.CloseWrite()
		resp, err := DecodeForwardResponse(s)
		if err == nil && resp.GetErrorCode() != codeBadRequest {
			t.Fatalf("garbage %x got code %q", payload, resp.GetErrorCode())
		}
		s.Close()
	}
	apply(t, member.c, "still healthy")
}

func TestRemoveServer(t *testing.T) {
	cl := newCluster(t, 3)
	leader := cl.waitLeader(cl.nodes)
	var victim *testNode
	for _, nd := range cl.nodes {
		if nd.host.ID() != leader {
			victim = nd
		}
	}
	if err := cl.byID(leader).c.RemoveServer(victim.host.ID(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every remaining node to drop the removed server", 5*time.Second, func() bool {
		for _, nd := range cl.nodes {
			if nd != victim && nd.c.InConfiguration(victim.host.ID()) {
				return false
			}
		}
		return true
	})
	// The removed node can no longer open Raft streams to the others.
	refusedBefore := cl.byID(leader).c.RefusedStreams()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := victim.host.NewStream(network.WithAllowLimitedConn(ctx, "t"), leader, RaftProtocol)
	if err == nil {
		_, err = s.Read(make([]byte, 1))
	}
	if err == nil || errors.Is(err, io.EOF) && cl.byID(leader).c.RefusedStreams() == refusedBefore {
		t.Fatalf("removed server's Raft stream was not refused: %v", err)
	}
}

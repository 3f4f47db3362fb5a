package consensus

//lint:file-ignore SA1019 hashicorp/raft's wire format still carries the deprecated Leader and Candidate fields; the transport and the RPC guard read them, and tests send them

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
)

// raftNetEnd is one end of a raftNet test: a real host, its stream layer
// (admitting every peer, with the RPC guard on, admitting every RPC), and a
// transport.
type raftNetEnd struct {
	host  host.Host
	trans raft.Transport
	addr  raft.ServerAddress
}

// newRaftNetEnd starts a host with raftNet, or with hashicorp/raft's
// NetworkTransport on the same stream layer if nettransport is set.
func newRaftNetEnd(t *testing.T, nettransport bool) *raftNetEnd {
	t.Helper()
	h := newHost(t)
	sl := newStreamLayer(h, func(peer.ID) bool { return true }, func(peer.ID, *rpcInfo) error { return nil })
	e := &raftNetEnd{host: h, addr: raft.ServerAddress(h.ID().String())}
	var closer raft.WithClose
	if nettransport {
		nt := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			ServerAddressProvider: addrProvider{}, Stream: sl, MaxPool: defaultMaxPool, Timeout: 5 * time.Second,
			Logger: newHCLogger(zap.NewNop().Sugar()),
		})
		e.trans, closer = nt, nt
	} else {
		rn := newRaftNet(sl, zap.NewNop().Sugar(), defaultMaxPool, 5*time.Second)
		e.trans, closer = rn, rn
	}
	t.Cleanup(func() {
		closer.Close()
		sl.Close()
		sl.drain(time.Second)
		h.Close()
	})
	return e
}

func connectEnds(a, b *raftNetEnd) {
	a.host.Peerstore().AddAddrs(b.host.ID(), b.host.Addrs(), time.Hour)
	b.host.Peerstore().AddAddrs(a.host.ID(), a.host.Addrs(), time.Hour)
}

func (e *raftNetEnd) header() raft.RPCHeader {
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(e.addr), Addr: []byte(e.addr)}
}

// configuration is an encoded Raft configuration with e as its one voter.
func (e *raftNetEnd) configuration() []byte {
	return raft.EncodeConfiguration(raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(e.addr), Address: e.addr}}})
}

// pooled is how many idle streams e's raftNet keeps to addr.
func (e *raftNetEnd) pooled(addr raft.ServerAddress) int {
	rn := e.trans.(*raftNet)
	rn.mu.Lock()
	defer rn.mu.Unlock()
	return len(rn.pool[addr])
}

// serveRPCs answers every RPC the transport hands to Raft with answer until
// the test ends.
func serveRPCs(t *testing.T, e *raftNetEnd, answer func(rpc raft.RPC)) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(done); wg.Wait() })
	wg.Go(func() {
		for {
			select {
			case rpc := <-e.trans.Consumer():
				answer(rpc)
			case <-done:
				return
			}
		}
	})
}

// A snapshot larger than every buffer of the transport arrives whole,
// through the RPC guard, and its stream is not pooled afterwards.
func TestRaftNetInstallSnapshot(t *testing.T) {
	client, server := newRaftNetEnd(t, false), newRaftNetEnd(t, false)
	connectEnds(client, server)
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	got := make(chan [32]byte, 1)
	serveRPCs(t, server, func(rpc raft.RPC) {
		req, ok := rpc.Command.(*raft.InstallSnapshotRequest)
		if !ok {
			rpc.Respond(nil, errors.New("unexpected RPC"))
			return
		}
		b, err := io.ReadAll(rpc.Reader)
		if err != nil {
			rpc.Respond(nil, err)
			return
		}
		got <- sha256.Sum256(b)
		rpc.Respond(&raft.InstallSnapshotResponse{RPCHeader: server.header(), Term: req.Term, Success: true}, nil)
	})
	var resp raft.InstallSnapshotResponse
	req := &raft.InstallSnapshotRequest{RPCHeader: client.header(), SnapshotVersion: 1, Term: 7, Leader: []byte(client.addr), Configuration: client.configuration(),
		LastLogIndex: 100, LastLogTerm: 7, Size: int64(len(data))}
	if err := client.trans.InstallSnapshot(raft.ServerID(server.addr), server.addr, req, &resp, bytes.NewReader(data)); err != nil {
		t.Fatalf("InstallSnapshot: %v", err)
	}
	if !resp.Success || resp.Term != 7 {
		t.Errorf("response %+v, want success in term 7", resp)
	}
	select {
	case h := <-got:
		if h != sha256.Sum256(data) {
			t.Error("the snapshot that arrived differs from the one sent")
		}
	default:
		t.Error("the snapshot's bytes did not reach Raft")
	}
	pooled := client.pooled(server.addr)
	if pooled != 0 {
		t.Errorf("%d pooled streams after a snapshot, want 0", pooled)
	}
}

// Pipelined AppendEntries, some larger than the write buffer, are answered in
// order; heartbeats take the fast path and never reach the consumer; a
// remote error comes back as an error and leaves the stream pooled.
func TestRaftNetPipelineHeartbeatAndErrors(t *testing.T) {
	client, server := newRaftNetEnd(t, false), newRaftNetEnd(t, false)
	connectEnds(client, server)
	var appends atomic.Int64 // AppendEntries the consumer saw
	serveRPCs(t, server, func(rpc raft.RPC) {
		switch req := rpc.Command.(type) {
		case *raft.AppendEntriesRequest:
			appends.Add(1)
			// Answer with the index the request names, and how many bytes
			// its entries carried, so the test can check order and size.
			n := 0
			for _, e := range req.Entries {
				n += len(e.Data)
			}
			rpc.Respond(&raft.AppendEntriesResponse{RPCHeader: server.header(), Term: req.Term, LastLog: req.PrevLogEntry + uint64(n), Success: true}, nil)
		case *raft.RequestVoteRequest:
			rpc.Respond(&raft.RequestVoteResponse{RPCHeader: server.header(), Term: req.Term}, errors.New("not today"))
		default:
			rpc.Respond(nil, errors.New("unexpected RPC"))
		}
	})
	heartbeats := make(chan uint64, 10)
	server.trans.SetHeartbeatHandler(func(rpc raft.RPC) {
		req := rpc.Command.(*raft.AppendEntriesRequest)
		heartbeats <- req.Term
		rpc.Respond(&raft.AppendEntriesResponse{RPCHeader: server.header(), Term: req.Term, Success: true}, nil)
	})

	p, err := client.trans.AppendEntriesPipeline(raft.ServerID(server.addr), server.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const rounds = 20
	sent := make(chan error, 1)
	go func() {
		for i := range rounds {
			size := 100
			if i%5 == 0 {
				size = 3*rpcWriteSize + 1 // several writes per request
			}
			req := &raft.AppendEntriesRequest{RPCHeader: client.header(), Term: 3, Leader: []byte(client.addr),
				PrevLogEntry: uint64(1000 * i), PrevLogTerm: 3, LeaderCommitIndex: 1,
				Entries: []*raft.Log{{Index: uint64(1000*i + 1), Term: 3, Type: raft.LogCommand, Data: make([]byte, size)}}}
			if _, err := p.AppendEntries(req, &raft.AppendEntriesResponse{}); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	for i := range rounds {
		select {
		case f := <-p.Consumer():
			if err := f.Error(); err != nil {
				t.Fatalf("response %d: %v", i, err)
			}
			want := uint64(1000 * i)
			size := uint64(100)
			if i%5 == 0 {
				size = 3*rpcWriteSize + 1
			}
			if f.Request().PrevLogEntry != want || f.Response().LastLog != want+size {
				t.Fatalf("response %d answers request %d with %d, want %d", i, f.Request().PrevLogEntry, f.Response().LastLog, want+size)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no response %d", i)
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}

	var hb raft.AppendEntriesResponse
	if err := client.trans.AppendEntries(raft.ServerID(server.addr), server.addr, &raft.AppendEntriesRequest{RPCHeader: client.header(), Term: 9, Leader: []byte(client.addr)}, &hb); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	select {
	case term := <-heartbeats:
		if term != 9 || !hb.Success {
			t.Errorf("heartbeat handler saw term %d, answered %+v", term, hb)
		}
	default:
		t.Error("the heartbeat did not reach the heartbeat handler")
	}

	var vote raft.RequestVoteResponse
	err = client.trans.RequestVote(raft.ServerID(server.addr), server.addr, &raft.RequestVoteRequest{RPCHeader: client.header(), Term: 4}, &vote)
	if err == nil || err.Error() != "not today" {
		t.Errorf("RequestVote error %v, want the server's %q", err, "not today")
	}
	if vote.Term != 4 {
		t.Errorf("RequestVote response %+v, want term 4 alongside the error", vote)
	}
	pooled := client.pooled(server.addr)
	if pooled != 1 {
		t.Errorf("%d pooled streams after a heartbeat and a refused vote on one stream, want 1", pooled)
	}
	if n := appends.Load(); n != rounds {
		t.Errorf("the consumer saw %d AppendEntries, want %d (the heartbeat goes to its handler)", n, rounds)
	}
}

// raftNet speaks NetworkTransport's protocol byte for byte, both ways: each
// answers the other's RPCs, pipelined ones and snapshots included.
func TestRaftNetSpeaksNetworkTransport(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		clientNet, serverNet bool
	}{{"raftNet to NetworkTransport", false, true}, {"NetworkTransport to raftNet", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := newRaftNetEnd(t, tc.clientNet), newRaftNetEnd(t, tc.serverNet)
			connectEnds(client, server)
			serveRPCs(t, server, func(rpc raft.RPC) {
				switch req := rpc.Command.(type) {
				case *raft.AppendEntriesRequest:
					rpc.Respond(&raft.AppendEntriesResponse{RPCHeader: server.header(), Term: req.Term, LastLog: req.Entries[len(req.Entries)-1].Index, Success: true}, nil)
				case *raft.RequestPreVoteRequest:
					rpc.Respond(&raft.RequestPreVoteResponse{RPCHeader: server.header(), Term: req.Term, Granted: true}, nil)
				case *raft.TimeoutNowRequest:
					rpc.Respond(&raft.TimeoutNowResponse{RPCHeader: server.header()}, nil)
				case *raft.InstallSnapshotRequest:
					b, _ := io.ReadAll(rpc.Reader)
					rpc.Respond(&raft.InstallSnapshotResponse{RPCHeader: server.header(), Term: req.Term, Success: string(b) == "state"}, nil)
				default:
					rpc.Respond(nil, errors.New("unexpected RPC"))
				}
			})
			var ae raft.AppendEntriesResponse
			now := time.Now().UTC()
			err := client.trans.AppendEntries(raft.ServerID(server.addr), server.addr, &raft.AppendEntriesRequest{RPCHeader: client.header(), Term: 2, Leader: []byte(client.addr), PrevLogEntry: 4, PrevLogTerm: 2,
				Entries: []*raft.Log{{Index: 5, Term: 2, Type: raft.LogCommand, Data: []byte("cmd"), AppendedAt: now}}}, &ae)
			if err != nil || ae.LastLog != 5 || !ae.Success {
				t.Errorf("AppendEntries: %+v, %v", ae, err)
			}
			var pv raft.RequestPreVoteResponse
			if err := client.trans.(raft.WithPreVote).RequestPreVote(raft.ServerID(server.addr), server.addr, &raft.RequestPreVoteRequest{RPCHeader: client.header(), Term: 3}, &pv); err != nil || !pv.Granted {
				t.Errorf("RequestPreVote: %+v, %v", pv, err)
			}
			var tn raft.TimeoutNowResponse
			if err := client.trans.TimeoutNow(raft.ServerID(server.addr), server.addr, &raft.TimeoutNowRequest{RPCHeader: client.header()}, &tn); err != nil {
				t.Errorf("TimeoutNow: %v", err)
			}
			var is raft.InstallSnapshotResponse
			err = client.trans.InstallSnapshot(raft.ServerID(server.addr), server.addr, &raft.InstallSnapshotRequest{RPCHeader: client.header(), SnapshotVersion: 1, Term: 3, Leader: []byte(client.addr), Configuration: client.configuration(), Size: 5}, &is, bytes.NewReader([]byte("state")))
			if err != nil || !is.Success {
				t.Errorf("InstallSnapshot: %+v, %v", is, err)
			}
			p, err := client.trans.AppendEntriesPipeline(raft.ServerID(server.addr), server.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			go func() {
				for i := range 5 {
					p.AppendEntries(&raft.AppendEntriesRequest{RPCHeader: client.header(), Term: 2, Leader: []byte(client.addr), PrevLogEntry: uint64(5 + i), PrevLogTerm: 2,
						Entries: []*raft.Log{{Index: uint64(6 + i), Term: 2, Type: raft.LogCommand}}}, &raft.AppendEntriesResponse{})
				}
			}()
			for i := range 5 {
				select {
				case f := <-p.Consumer():
					if err := f.Error(); err != nil || f.Response().LastLog != uint64(6+i) {
						t.Errorf("pipelined %d: %+v, %v", i, f.Response(), err)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("no pipelined response %d", i)
				}
			}
		})
	}
}

// Close ends the transport while Raft holds an RPC unanswered: the caller
// gets an error rather than waiting out its deadline, and later RPCs fail at
// once.
func TestRaftNetCloseWhileRaftHoldsAnRPC(t *testing.T) {
	client, server := newRaftNetEnd(t, false), newRaftNetEnd(t, false)
	connectEnds(client, server)
	held := make(chan struct{})
	serveRPCs(t, server, func(raft.RPC) { close(held) }) // never answers
	errc := make(chan error, 1)
	go func() {
		var resp raft.RequestVoteResponse
		errc <- client.trans.RequestVote(raft.ServerID(server.addr), server.addr, &raft.RequestVoteRequest{RPCHeader: client.header(), Term: 1}, &resp)
	}()
	<-held
	start := time.Now()
	server.trans.(raft.WithClose).Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Error("the held RPC succeeded after the server closed")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("the held RPC failed after %v, want well before its 5 s deadline", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held RPC never returned")
	}
	var resp raft.RequestVoteResponse
	if err := server.trans.RequestVote(raft.ServerID(client.addr), client.addr, &raft.RequestVoteRequest{RPCHeader: server.header(), Term: 1}, &resp); !errors.Is(err, raft.ErrTransportShutdown) {
		t.Errorf("an RPC from a closed transport: %v, want %v", err, raft.ErrTransportShutdown)
	}
}

// A peer that answers one request twice, in one write, does not speak the
// protocol: the caller gets an error, and the stream is dropped rather than
// pooled, so the extra answer does not pass for the answer to a later
// request. (An extra answer sent later is read as the next one: the peer
// could as well have sent that answer to the next request, so it gains
// nothing.)
func TestRaftNetDropsAStreamWithTwoAnswers(t *testing.T) {
	client := newRaftNetEnd(t, false)
	h := newHost(t)
	t.Cleanup(func() { h.Close() })
	h.SetStreamHandler(RaftProtocol, func(s network.Stream) {
		var buf bytes.Buffer
		enc := codec.NewEncoder(&buf, encodeHandle())
		for range 2 {
			enc.Encode("")
			enc.Encode(&raft.RequestVoteResponse{Term: 5, Granted: true})
		}
		s.Write(buf.Bytes()) // both answers in one write, so they arrive together
		io.Copy(io.Discard, s)
	})
	client.host.Peerstore().AddAddrs(h.ID(), h.Addrs(), time.Hour)
	addr := raft.ServerAddress(h.ID().String())
	var resp raft.RequestVoteResponse
	err := client.trans.RequestVote(raft.ServerID(addr), addr, &raft.RequestVoteRequest{RPCHeader: client.header(), Term: 5}, &resp)
	if !errors.Is(err, errTrailingBytes) {
		t.Errorf("RequestVote answered twice: %v, want %v", err, errTrailingBytes)
	}
	pooled := client.pooled(addr)
	if pooled != 0 {
		t.Errorf("%d pooled streams to a peer that answered twice, want 0", pooled)
	}
}

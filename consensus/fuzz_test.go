package consensus

//lint:file-ignore SA1019 hashicorp/raft's wire format still carries the deprecated Leader and Candidate fields; the transport and the RPC guard read them, and tests send them

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/consensus/pb"
	"google.golang.org/protobuf/encoding/protodelim"
)

func FuzzDecodeForwardRequest(f *testing.F) {
	for _, req := range []*pb.ForwardRequest{
		{Version: 1, ClusterId: "c", Command: []byte("x")},
		{Version: 2, ClusterId: "c", Kind: pb.Kind_KIND_READ_INDEX},
		{Version: 1, ClusterId: "c", Kind: pb.Kind_KIND_READ_INDEX},
		{Version: 2, Kind: 7},
	} {
		var buf bytes.Buffer
		protodelim.MarshalTo(&buf, req)
		f.Add(buf.Bytes())
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeForwardRequest(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrBadForward) && !errors.Is(err, errNoAnswer) {
				t.Fatalf("error %v is neither malformed nor no answer", err)
			}
			return
		}
		switch {
		case req.GetVersion() == 1 && req.GetKind() == pb.Kind_KIND_COMMAND:
		case req.GetVersion() == 2 && (req.GetKind() == pb.Kind_KIND_COMMAND || req.GetKind() == pb.Kind_KIND_READ_INDEX):
		default:
			t.Fatalf("accepted version %d kind %d", req.GetVersion(), req.GetKind())
		}
	})
}

func FuzzDecodeForwardResponse(f *testing.F) {
	var buf bytes.Buffer
	protodelim.MarshalTo(&buf, &pb.ForwardResponse{Version: 1, ErrorCode: "x", Index: 3})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, err := DecodeForwardResponse(bytes.NewReader(data))
		if err == nil && resp.GetVersion() != 1 && resp.GetVersion() != 2 {
			t.Fatalf("accepted version %d", resp.GetVersion())
		}
	})
}

// FuzzFSMBridge feeds arbitrary log entries and snapshots to the FSM bridge:
// it must never panic, a refused entry must not change the state, and an
// accepted one reaches the state machine with the stamp it carries.
func FuzzFSMBridge(f *testing.F) {
	f.Add([]byte{entryVersion1, 'o', 'k'}, []byte(snapshotMagic+"\x01"))
	f.Add(EncodeEntry(1234, []byte("ok")), []byte("junk"))
	f.Add([]byte{entryVersion2, 0, 0}, []byte{})
	f.Add([]byte{3, 'x'}, []byte("junk"))
	f.Add(EncodeEntry(-1, []byte("panic")), []byte{})
	f.Fuzz(func(t *testing.T, entry, snap []byte) {
		sm := &stampSM{}
		b := &fsm{sm: sm}
		res := b.Apply(&raft.Log{Type: raft.LogCommand, Data: entry})
		r, ok := res.(applyResult)
		if !ok {
			t.Fatalf("Apply returned %T", res)
		}
		now, cmd, derr := DecodeEntry(entry)
		switch {
		case derr != nil:
			if !errors.Is(r.err, ErrEntryVersion) && !errors.Is(r.err, ErrEntryFormat) {
				t.Fatalf("entry %x: DecodeEntry says %v, Apply %v", entry, derr, r.err)
			}
			if len(sm.stamps) != 0 {
				t.Fatal("a refused entry reached the state machine")
			}
		case len(sm.stamps) != 1 || sm.stamps[0] != now || !bytes.Equal(sm.cmds[0], cmd):
			t.Fatalf("entry %x: state machine saw %v %q, want %d %q", entry, sm.stamps, sm.cmds, now, cmd)
		}
		b.Restore(nopCloser{bytes.NewReader(snap)})
	})
}

// stampSM records what Apply is given.
type stampSM struct {
	stamps []int64
	cmds   [][]byte
}

func (s *stampSM) Apply(now int64, cmd []byte) ([]byte, error) {
	s.stamps = append(s.stamps, now)
	s.cmds = append(s.cmds, append([]byte(nil), cmd...))
	return nil, nil
}
func (s *stampSM) Snapshot() ([]byte, error) { return nil, nil }
func (s *stampSM) Restore([]byte) error      { return nil }

// FuzzRPCGuard feeds arbitrary bytes to an accepted Raft stream: through
// the guard into raftNet's own handler (serveOne), as Consensus runs them.
// Neither may panic, and every RPC the handler hands to Raft (or to the
// heartbeat handler) must name the stream's peer in every identity field and
// pass the check.
func FuzzRPCGuard(f *testing.F) {
	const remote = peer.ID("remote")
	hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(remote.String()), Addr: []byte(remote.String())}
	other := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("someone"), Addr: []byte(remote.String())}
	f.Add(frame(f, rpcAppendEntries, &raft.AppendEntriesRequest{RPCHeader: hdr, Term: 2, Leader: hdr.Addr, Entries: []*raft.Log{{Index: 1, Data: []byte("x")}}}))
	f.Add(frame(f, rpcAppendEntries, &raft.AppendEntriesRequest{RPCHeader: hdr, Term: 2, Leader: hdr.Addr})) // a heartbeat
	f.Add(append(frame(f, rpcInstallSnapshot, &raft.InstallSnapshotRequest{RPCHeader: hdr, Leader: hdr.Addr, Size: 3}), "abc"...))
	f.Add(frame(f, rpcRequestVote, &raft.RequestVoteRequest{RPCHeader: other, Term: 9}))
	f.Add(frame(f, rpcTimeoutNow, &raft.TimeoutNowRequest{RPCHeader: hdr}))
	f.Add([]byte{9, 1, 2, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(p peer.ID, in *rpcInfo) error {
			if in.typ == rpcRequestVote {
				return errNotVoter // some RPCs are refused by policy
			}
			return (&admission{raft: func() *raft.Raft { return nil }}).identity(in)
		}
		g := newRPCGuard(bytes.NewReader(data), remote, check, func(*rpcInfo, error) {})
		rn := &raftNet{consume: make(chan raft.RPC), closed: make(chan struct{})}
		answer := func(rpc raft.RPC) {
			checkHandedOn(t, remote, rpc)
			if rpc.Reader != nil {
				io.Copy(io.Discard, rpc.Reader)
			}
			rpc.Respond(nil, nil)
		}
		rn.SetHeartbeatHandler(answer)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for rpc := range rn.consume {
				answer(rpc)
			}
		}()
		r := bufio.NewReaderSize(readerOnly{g}, rpcReadSize)
		dec := codec.NewDecoder(r, &codec.MsgpackHandle{})
		for {
			if _, err := rn.serveOne(r, dec); err != nil {
				break
			}
		}
		close(rn.consume)
		<-done
	})
}

// checkHandedOn fails t unless rpc names remote in every identity field.
func checkHandedOn(t *testing.T, remote peer.ID, rpc raft.RPC) {
	var hdr raft.RPCHeader
	var named []byte
	switch req := rpc.Command.(type) {
	case *raft.AppendEntriesRequest:
		hdr, named = req.RPCHeader, req.Leader
	case *raft.InstallSnapshotRequest:
		hdr, named = req.RPCHeader, req.Leader
	case *raft.TimeoutNowRequest:
		hdr = req.RPCHeader
	case *raft.RequestPreVoteRequest:
		hdr = req.RPCHeader
	default:
		t.Errorf("handed on %T", rpc.Command)
		return
	}
	want := remote.String()
	if string(hdr.ID) != want || string(hdr.Addr) != want || (len(named) > 0 && string(named) != want) {
		t.Errorf("handed on an RPC naming %q/%q/%q, not %q", hdr.ID, hdr.Addr, named, want)
	}
}

// readerOnly hides the guard's other methods, as bufio would.
type readerOnly struct{ r io.Reader }

func (r readerOnly) Read(p []byte) (int, error) { return r.r.Read(p) }

// frame encodes one RPC as NetworkTransport sends it.
func frame(t testing.TB, typ uint8, req any) []byte {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteByte(typ)
	if err := codec.NewEncoder(&buf, &codec.MsgpackHandle{}).Encode(req); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// FuzzRaftNetResponse feeds arbitrary bytes to raftNet's client as a peer's
// answer to one RPC: it must never panic, and a stream it keeps for the
// pool must have held exactly one answer.
func FuzzRaftNetResponse(f *testing.F) {
	answer := func(remoteErr string, resp any) []byte {
		var buf bytes.Buffer
		enc := codec.NewEncoder(&buf, encodeHandle())
		if err := enc.Encode(remoteErr); err != nil {
			f.Fatal(err)
		}
		if err := enc.Encode(resp); err != nil {
			f.Fatal(err)
		}
		return buf.Bytes()
	}
	f.Add(answer("", &raft.AppendEntriesResponse{Term: 3, LastLog: 9, Success: true}))
	f.Add(answer("not today", &raft.AppendEntriesResponse{Term: 3}))
	f.Add(append(answer("", &raft.AppendEntriesResponse{}), answer("", &raft.AppendEntriesResponse{})...))
	f.Add([]byte{0xdb, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		conn := &bytesConn{r: bytes.NewReader(data)}
		c := &rpcConn{conn: conn}
		var resp raft.AppendEntriesResponse
		reusable, _ := c.recv(&resp)
		if reusable && conn.closed {
			t.Fatal("a released stream is reported reusable")
		}
		if reusable && conn.r.Len() > 0 && len(data) <= rpcReadSize {
			t.Fatalf("a stream with %d bytes after its answer is reported reusable", conn.r.Len())
		}
	})
}

// bytesConn is a net.Conn that reads from r and records Close; recv uses
// nothing else.
type bytesConn struct {
	net.Conn
	r      *bytes.Reader
	closed bool
}

func (c *bytesConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *bytesConn) Close() error               { c.closed = true; return nil }

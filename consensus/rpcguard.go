package consensus

//lint:file-ignore SA1019 hashicorp/raft's wire format still carries the deprecated Leader and Candidate fields; the transport and the RPC guard read them, and tests send them

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// hashicorp/raft's NetworkTransport, and raftNet after it, frames each RPC as one type byte followed
// by the msgpack-encoded request (and, for InstallSnapshot, Size raw bytes of
// snapshot). The type values are unexported in raft; these mirror
// net_transport.go of v1.8.0, and TestRPCTypesMatchRaft pins them.
const (
	rpcAppendEntries uint8 = iota
	rpcRequestVote
	rpcInstallSnapshot
	rpcTimeoutNow
	rpcRequestPreVote
)

// Why the guard refuses an RPC.
var (
	errForeignHeader = errors.New("the RPC names a peer other than the one that sent it")
	errNotVoter      = errors.New("the sender is not a voter of this node's Raft configuration")
	errUnknownRPC    = errors.New("unknown Raft RPC type")
	errMalformedRPC  = errors.New("malformed Raft RPC")
)

// rpcInfo is what the guard learns from one RPC before Raft reads it: the
// sender identity the RPC claims.
type rpcInfo struct {
	// from is the stream's authenticated peer, spelt as Raft spells server
	// IDs and addresses (peer.ID.String, computed once per stream: it is a
	// base58 encoding, and costs more than the rest of the check).
	from   string
	typ    uint8
	header raft.RPCHeader
	// named is the peer the request names besides its header: the Leader of
	// AppendEntries and InstallSnapshot, the Candidate of RequestVote.
	named []byte
}

func (in *rpcInfo) kind() string {
	switch in.typ {
	case rpcAppendEntries:
		return "AppendEntries"
	case rpcRequestVote:
		return "RequestVote"
	case rpcInstallSnapshot:
		return "InstallSnapshot"
	case rpcTimeoutNow:
		return "TimeoutNow"
	case rpcRequestPreVote:
		return "RequestPreVote"
	}
	return fmt.Sprintf("type %d", in.typ)
}

// fromLeader reports whether only a leader sends this RPC.
func (in *rpcInfo) fromLeader() bool {
	return in.typ == rpcAppendEntries || in.typ == rpcInstallSnapshot
}

// rpcCheck decides whether remote, the authenticated peer of the stream, may
// send this RPC (rules S1 and S8). A nil error admits it.
type rpcCheck func(remote peer.ID, in *rpcInfo) error

// guardReadSize is the guard's own read buffer on an accepted stream;
// raftNet reads the guard through a small one of its own (rpcReadSize).
const guardReadSize = 32 << 10

// maxKeptFrame bounds the frame buffer a guard keeps between RPCs; a larger
// one (a big AppendEntries batch) is dropped once Raft has read it.
const maxKeptFrame = 1 << 20

// rpcGuard sits between an accepted Raft stream and hashicorp's handler, which
// takes the sender's identity from the RPC rather than from the stream. For
// each RPC it reads the type byte and decodes the request with the same codec
// and handle the handler uses, recording the bytes it consumes; it asks check
// whether the stream's authenticated peer may send that RPC, and only then
// hands the recorded bytes, unchanged, to the handler. The handler therefore
// decodes exactly what was checked. InstallSnapshot's snapshot bytes follow
// their checked request and pass through unread. A refused RPC resets the
// stream, and the handler sees a clean end of stream, so it never reads a
// byte of it.
//
// Pipelined AppendEntries need nothing special: the handler asks for the next
// RPC only after answering the previous one, and the guard checks each in
// turn from its buffer.
type rpcGuard struct {
	remote peer.ID
	from   string // remote.String()
	check  rpcCheck
	// refused is told of each refusal (count, log, reset the stream).
	refused func(in *rpcInfo, err error)
	rec     recorder
	dec     *codec.Decoder
	// pending holds the checked bytes of the current RPC that the handler
	// has not read yet.
	pending []byte
	// raw is how many snapshot bytes still pass through unchecked.
	raw int64
	err error
}

func newRPCGuard(src io.Reader, remote peer.ID, check rpcCheck, refused func(*rpcInfo, error)) *rpcGuard {
	g := &rpcGuard{remote: remote, from: remote.String(), check: check, refused: refused}
	g.rec.r = bufio.NewReaderSize(src, guardReadSize)
	// raftNet.serve decodes with a zero MsgpackHandle too.
	g.dec = codec.NewDecoder(&g.rec, &codec.MsgpackHandle{})
	return g
}

// Read hands the handler checked bytes only.
func (g *rpcGuard) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(g.pending) == 0 && g.raw == 0 {
		if g.err != nil {
			return 0, g.err
		}
		if err := g.next(); err != nil {
			g.err = err
			return 0, err
		}
	}
	if len(g.pending) > 0 {
		n := copy(p, g.pending)
		g.pending = g.pending[n:]
		return n, nil
	}
	if int64(len(p)) > g.raw {
		p = p[:g.raw]
	}
	n, err := g.rec.r.Read(p)
	g.raw -= int64(n)
	return n, err
}

// next reads, decodes and checks the next RPC, and leaves its bytes in
// pending. A refusal returns io.EOF, so the handler ends quietly: the refusal
// has been logged once, here.
func (g *rpcGuard) next() error {
	if cap(g.rec.buf) > maxKeptFrame {
		g.rec.buf = nil
	}
	g.rec.buf = g.rec.buf[:0]
	t, err := g.rec.ReadByte()
	if err != nil {
		return err
	}
	in := &rpcInfo{from: g.from, typ: t}
	var size int64
	switch t {
	case rpcAppendEntries:
		var req raft.AppendEntriesRequest
		if err = g.dec.Decode(&req); err == nil {
			err = saneEntries(req.Entries)
		}
		in.header, in.named = req.RPCHeader, req.Leader
	case rpcRequestVote:
		var req raft.RequestVoteRequest
		err = g.dec.Decode(&req)
		in.header, in.named = req.RPCHeader, req.Candidate
	case rpcInstallSnapshot:
		var req raft.InstallSnapshotRequest
		if err = g.dec.Decode(&req); err == nil && req.SnapshotVersion > 0 {
			err = saneConfiguration(req.Configuration)
		}
		in.header, in.named, size = req.RPCHeader, req.Leader, req.Size
	case rpcTimeoutNow:
		var req raft.TimeoutNowRequest
		err = g.dec.Decode(&req)
		in.header = req.RPCHeader
	case rpcRequestPreVote:
		var req raft.RequestPreVoteRequest
		err = g.dec.Decode(&req)
		in.header = req.RPCHeader
	default:
		err = errUnknownRPC
	}
	if err == nil {
		err = g.check(g.remote, in)
	} else if !errors.Is(err, errUnknownRPC) && !errors.Is(err, errMalformedRPC) {
		if g.rec.readErr != nil {
			// The stream ended or failed mid-RPC: nothing to refuse, and
			// nothing reached Raft.
			return g.rec.readErr
		}
		err = fmt.Errorf("%w: %v", errMalformedRPC, err)
	}
	if err != nil {
		g.refused(in, err)
		return io.EOF
	}
	g.pending = g.rec.buf
	g.raw = max(size, 0)
	return nil
}

// recorder reads through a bufio.Reader and keeps every byte the decoder
// consumes, so the checked bytes can be handed on exactly. The msgpack decoder
// reads exactly what each value needs (raftNet.serve relies on that too,
// sharing one bufio.Reader between the type byte and the decoder).
type recorder struct {
	r       *bufio.Reader
	buf     []byte
	readErr error // the stream's own error (io.EOF included), if any
}

func (c *recorder) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.buf = append(c.buf, p[:n]...)
	if err != nil {
		c.readErr = err
	}
	return n, err
}

func (c *recorder) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err != nil {
		c.readErr = err
		return b, err
	}
	c.buf = append(c.buf, b)
	return b, nil
}

func (c *recorder) UnreadByte() error {
	if len(c.buf) == 0 {
		return bufio.ErrInvalidUnreadByte
	}
	if err := c.r.UnreadByte(); err != nil {
		return err
	}
	c.buf = c.buf[:len(c.buf)-1]
	return nil
}

// saneEntries refuses log entries hashicorp/raft would panic on: a type it
// does not know (it panics when it applies one, and again on every restart,
// since the entry is then in the log), a configuration that does not decode
// (it panics when it appends one), and the pre-v3 peer changes, which no
// server of protocol version 3 sends. A sender that may send AppendEntries
// could otherwise stop a node for good with one RPC.
func saneEntries(entries []*raft.Log) error {
	for _, e := range entries {
		if e == nil {
			return fmt.Errorf("%w: a nil entry", errMalformedRPC)
		}
		switch e.Type {
		case raft.LogCommand, raft.LogNoop, raft.LogBarrier:
		case raft.LogConfiguration:
			if err := saneConfiguration(e.Data); err != nil {
				return fmt.Errorf("%w at index %d", err, e.Index)
			}
		default:
			return fmt.Errorf("%w: entry %d has log type %d", errMalformedRPC, e.Index, e.Type)
		}
	}
	return nil
}

// saneConfiguration checks that data decodes as raft.DecodeConfiguration
// decodes it (which panics when it does not).
func saneConfiguration(data []byte) error {
	var c raft.Configuration
	if err := codec.NewDecoder(bytes.NewReader(data), &codec.MsgpackHandle{}).Decode(&c); err != nil {
		return fmt.Errorf("%w: configuration does not decode: %v", errMalformedRPC, err)
	}
	return nil
}

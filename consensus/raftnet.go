package consensus

//lint:file-ignore SA1019 hashicorp/raft's wire format still carries the deprecated Leader and Candidate fields; the transport and the RPC guard read them, and tests send them

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"go.uber.org/zap"
)

// Buffer sizes of a Raft stream. hashicorp/raft's NetworkTransport gives each
// stream a 256 KiB buffer at each end (the dialer's writer, the acceptor's
// reader) for the stream's life: a leader keeps a few pooled streams per
// follower, so at 25 members those buffers were 14 MB of its heap, a third of
// its resident memory. raftNet lends buffers for one request or one response
// instead (writeBufs, readBufs); only a pipeline's stream, and an
// accepted stream, keep a reader. A lent writer costs memory only while an
// RPC is being written, so it can be large enough that a big AppendEntries
// batch (a command may be 1 MiB) goes out in few writes: each write is a
// yamux frame, a Noise message and a system call.
const (
	// rpcWriteSize is a lent writer: one request or one response.
	rpcWriteSize = 64 << 10
	// rpcReadSize is a reader: responses, which are small, and requests,
	// which an accepted stream reads from the RPC guard's own buffer.
	rpcReadSize = 4 << 10
)

// rpcMaxInFlight is how many AppendEntries a pipeline has outstanding, as
// NetworkTransport's default (raft.DefaultMaxRPCsInFlight).
const rpcMaxInFlight = raft.DefaultMaxRPCsInFlight

// snapshotTimeoutScale is how many snapshot bytes one RPC timeout covers, as
// NetworkTransport's (raft.DefaultTimeoutScale).
const snapshotTimeoutScale = raft.DefaultTimeoutScale

// errTransportClosed is returned by RPCs after Close.
var errTransportClosed = raft.ErrTransportShutdown

// raftNet is the Raft transport. It speaks hashicorp/raft's NetworkTransport
// protocol byte for byte (a type byte and a msgpack request; a msgpack error
// string and a msgpack response; a snapshot's bytes after its request), so
// RaftProtocol did not change with it, over streamLayer's gated streams, with
// buffers lent per RPC instead of two 256 KiB ones per stream. Its semantics are
// NetworkTransport's: pooled streams per peer, a deadline per RPC (scaled by
// size for a snapshot), pipelined AppendEntries, and the heartbeat fast path.
type raftNet struct {
	stream  *streamLayer
	log     *zap.SugaredLogger
	timeout time.Duration
	maxPool int

	consume   chan raft.RPC
	heartbeat atomic.Pointer[func(raft.RPC)]

	mu     sync.Mutex
	pool   map[raft.ServerAddress][]*rpcConn
	closed chan struct{}
	once   sync.Once
}

func newRaftNet(stream *streamLayer, log *zap.SugaredLogger, maxPool int, timeout time.Duration) *raftNet {
	t := &raftNet{
		stream: stream, log: log, timeout: timeout, maxPool: maxPool,
		consume: make(chan raft.RPC),
		pool:    map[raft.ServerAddress][]*rpcConn{},
		closed:  make(chan struct{}),
	}
	go t.accept()
	return t
}

var (
	_ raft.Transport   = (*raftNet)(nil)
	_ raft.WithPreVote = (*raftNet)(nil)
	_ raft.WithClose   = (*raftNet)(nil)
)

// Consumer implements raft.Transport.
func (t *raftNet) Consumer() <-chan raft.RPC { return t.consume }

// LocalAddr implements raft.Transport: this node's peer ID.
func (t *raftNet) LocalAddr() raft.ServerAddress {
	return raft.ServerAddress(t.stream.Addr().String())
}

// EncodePeer implements raft.Transport. A server's address is its ID, the
// peer ID (addrProvider).
func (t *raftNet) EncodePeer(id raft.ServerID, _ raft.ServerAddress) []byte { return []byte(id) }

// DecodePeer implements raft.Transport.
func (t *raftNet) DecodePeer(b []byte) raft.ServerAddress { return raft.ServerAddress(b) }

// SetHeartbeatHandler implements raft.Transport.
func (t *raftNet) SetHeartbeatHandler(cb func(raft.RPC)) {
	if cb == nil {
		t.heartbeat.Store(nil)
		return
	}
	t.heartbeat.Store(&cb)
}

// Close stops the transport: pooled streams are closed, handlers waiting on
// Raft give up, and the stream layer stops accepting.
func (t *raftNet) Close() error {
	t.once.Do(func() {
		close(t.closed)
		t.mu.Lock()
		for k, conns := range t.pool {
			for _, c := range conns {
				c.release()
			}
			delete(t.pool, k)
		}
		t.mu.Unlock()
		t.stream.Close()
	})
	return nil
}

func (t *raftNet) isClosed() bool {
	select {
	case <-t.closed:
		return true
	default:
		return false
	}
}

// encodeHandle is NetworkTransport's msgpack handle for encoding, with its
// default encoding of time values. Both ends decode with a zero handle.
func encodeHandle() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	h.TimeNotBuiltin = true
	return h
}

// Buffers are lent to a stream for one request or one response, not owned
// by it: a leader keeps two or three streams to every follower, idle
// between heartbeats, and they then hold no buffer at all.
var (
	writeBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, rpcWriteSize) }}
	readBufs  = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, rpcReadSize) }}
)

// errTrailingBytes means a peer sent more than the one response a request
// asks for, as far as the reader has seen: it does not speak the protocol,
// and the stream is dropped.
var errTrailingBytes = errors.New("raft stream: bytes after the response")

// rpcConn is one dialled Raft stream.
type rpcConn struct {
	target raft.ServerAddress
	conn   net.Conn
	enc    *codec.Encoder // bound to a lent writer for each request
	dec    *codec.Decoder // bound to r, or to a lent reader for each response
	// r is the stream's own reader once a pipeline uses it: several
	// responses may then be in flight, and buffered, at once.
	r *bufio.Reader
}

func (c *rpcConn) release() { _ = c.conn.Close() }

// send writes one RPC through a lent buffer and flushes it; on failure the
// stream is released.
func (c *rpcConn) send(typ uint8, args any) error {
	w := writeBufs.Get().(*bufio.Writer)
	w.Reset(c.conn)
	defer func() {
		w.Reset(nil)
		writeBufs.Put(w)
	}()
	if c.enc == nil {
		c.enc = codec.NewEncoder(w, encodeHandle())
	} else {
		c.enc.Reset(w)
	}
	err := w.WriteByte(typ)
	if err == nil {
		err = c.enc.Encode(args)
	}
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		c.release()
	}
	return err
}

// recv reads one response into resp. It reports whether the stream may be
// reused: a remote error leaves it usable, a broken stream is released.
func (c *rpcConn) recv(resp any) (bool, error) {
	r := c.r
	if r == nil {
		r = readBufs.Get().(*bufio.Reader)
		r.Reset(c.conn)
		defer func() {
			r.Reset(nil)
			readBufs.Put(r)
		}()
		if c.dec == nil {
			c.dec = codec.NewDecoder(r, &codec.MsgpackHandle{})
		} else {
			c.dec.Reset(r)
		}
	}
	var remoteErr string
	if err := c.dec.Decode(&remoteErr); err != nil {
		c.release()
		return false, err
	}
	if err := c.dec.Decode(resp); err != nil {
		c.release()
		return false, err
	}
	if c.r == nil && r.Buffered() > 0 {
		c.release()
		return false, errTrailingBytes
	}
	if remoteErr != "" {
		return true, errors.New(remoteErr)
	}
	return true, nil
}

// pin gives the stream a reader of its own, for a pipeline.
func (c *rpcConn) pin() {
	c.r = bufio.NewReaderSize(c.conn, rpcReadSize)
	if c.dec == nil {
		c.dec = codec.NewDecoder(c.r, &codec.MsgpackHandle{})
	} else {
		c.dec.Reset(c.r)
	}
}

// conn returns a pooled stream to target, or dials one.
func (t *raftNet) conn(target raft.ServerAddress) (*rpcConn, error) {
	if t.isClosed() {
		return nil, errTransportClosed
	}
	t.mu.Lock()
	if conns := t.pool[target]; len(conns) > 0 {
		c := conns[len(conns)-1]
		conns[len(conns)-1] = nil
		t.pool[target] = conns[:len(conns)-1]
		t.mu.Unlock()
		return c, nil
	}
	t.mu.Unlock()
	nc, err := t.stream.Dial(target, t.timeout)
	if err != nil {
		return nil, err
	}
	return &rpcConn{target: target, conn: nc}, nil
}

// put returns a healthy stream to the pool, or closes it when the pool is
// full or the transport closed.
func (t *raftNet) put(c *rpcConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.isClosed() && len(t.pool[c.target]) < t.maxPool {
		t.pool[c.target] = append(t.pool[c.target], c)
		return
	}
	c.release()
}

// call makes one request/response RPC.
func (t *raftNet) call(target raft.ServerAddress, typ uint8, args, resp any) error {
	c, err := t.conn(target)
	if err != nil {
		return err
	}
	if t.timeout > 0 {
		_ = c.conn.SetDeadline(time.Now().Add(t.timeout))
	}
	if err := c.send(typ, args); err != nil {
		return err
	}
	reusable, err := c.recv(resp)
	if reusable {
		t.put(c)
	}
	return err
}

// AppendEntries implements raft.Transport.
func (t *raftNet) AppendEntries(_ raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	return t.call(target, rpcAppendEntries, args, resp)
}

// RequestVote implements raft.Transport.
func (t *raftNet) RequestVote(_ raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return t.call(target, rpcRequestVote, args, resp)
}

// RequestPreVote implements raft.WithPreVote.
func (t *raftNet) RequestPreVote(_ raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.call(target, rpcRequestPreVote, args, resp)
}

// TimeoutNow implements raft.Transport.
func (t *raftNet) TimeoutNow(_ raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return t.call(target, rpcTimeoutNow, args, resp)
}

// InstallSnapshot implements raft.Transport: the request, then the snapshot's
// bytes, on a stream of its own that is never pooled.
func (t *raftNet) InstallSnapshot(_ raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	c, err := t.conn(target)
	if err != nil {
		return err
	}
	defer c.release()
	if t.timeout > 0 {
		timeout := max(t.timeout*time.Duration(args.Size/snapshotTimeoutScale), t.timeout)
		_ = c.conn.SetDeadline(time.Now().Add(timeout))
	}
	if err := c.send(rpcInstallSnapshot, args); err != nil {
		return err
	}
	if _, err := io.Copy(c.conn, data); err != nil {
		return err
	}
	_, err = c.recv(resp)
	return err
}

// AppendEntriesPipeline implements raft.Transport.
func (t *raftNet) AppendEntriesPipeline(_ raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	c, err := t.conn(target)
	if err != nil {
		return nil, err
	}
	c.pin()
	p := &rpcPipeline{
		t: t, c: c,
		// As NetworkTransport's: the decoder holds one request and the
		// sender another, so rpcMaxInFlight-2 more may wait in the channels.
		inflight: make(chan *appendFuture, rpcMaxInFlight-2),
		done:     make(chan raft.AppendFuture, rpcMaxInFlight-2),
		stop:     make(chan struct{}),
	}
	go p.decode()
	return p, nil
}

// rpcPipeline sends AppendEntries on one stream without waiting for each
// response; a goroutine reads the responses in order.
type rpcPipeline struct {
	t        *raftNet
	c        *rpcConn
	inflight chan *appendFuture
	done     chan raft.AppendFuture
	stop     chan struct{}
	once     sync.Once
}

func (p *rpcPipeline) decode() {
	for {
		select {
		case f := <-p.inflight:
			if p.t.timeout > 0 {
				_ = p.c.conn.SetReadDeadline(time.Now().Add(p.t.timeout))
			}
			_, err := p.c.recv(f.resp)
			f.respond(err)
			select {
			case p.done <- f:
			case <-p.stop:
				return
			}
		case <-p.stop:
			return
		}
	}
}

// AppendEntries implements raft.AppendPipeline.
func (p *rpcPipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	f := &appendFuture{start: time.Now(), args: args, resp: resp, ch: make(chan struct{})}
	if p.t.timeout > 0 {
		_ = p.c.conn.SetWriteDeadline(time.Now().Add(p.t.timeout))
	}
	if err := p.c.send(rpcAppendEntries, args); err != nil {
		return nil, err
	}
	select {
	case p.inflight <- f:
		return f, nil
	case <-p.stop:
		return nil, raft.ErrPipelineShutdown
	}
}

// Consumer implements raft.AppendPipeline.
func (p *rpcPipeline) Consumer() <-chan raft.AppendFuture { return p.done }

// Close implements raft.AppendPipeline.
func (p *rpcPipeline) Close() error {
	p.once.Do(func() {
		p.c.release()
		close(p.stop)
	})
	return nil
}

// appendFuture is one pipelined AppendEntries.
type appendFuture struct {
	start time.Time
	args  *raft.AppendEntriesRequest
	resp  *raft.AppendEntriesResponse
	err   error
	ch    chan struct{}
}

func (f *appendFuture) respond(err error) {
	f.err = err
	close(f.ch)
}

func (f *appendFuture) Error() error {
	<-f.ch
	return f.err
}

func (f *appendFuture) Start() time.Time                      { return f.start }
func (f *appendFuture) Request() *raft.AppendEntriesRequest   { return f.args }
func (f *appendFuture) Response() *raft.AppendEntriesResponse { return f.resp }

// accept serves each admitted stream until the stream layer closes.
func (t *raftNet) accept() {
	for {
		conn, err := t.stream.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || t.isClosed() {
				return
			}
			t.log.Debugw("raft stream: accept", "err", err)
			continue
		}
		go t.serve(conn)
	}
}

// serve answers the RPCs of one accepted stream in order. The stream reads
// through the RPC guard, so every RPC decoded here has been checked against
// the stream's peer; a refused one ends the stream as a clean EOF.
func (t *raftNet) serve(conn net.Conn) {
	defer conn.Close()
	// The reader stays with the stream (a pipeline's requests arrive
	// back to back); a writer is lent for each response.
	r := bufio.NewReaderSize(conn, rpcReadSize)
	dec := codec.NewDecoder(r, &codec.MsgpackHandle{})
	var enc *codec.Encoder
	for {
		resp, err := t.serveOne(r, dec)
		if err == nil {
			enc, err = respond(conn, enc, resp)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !t.isClosed() {
				t.log.Debugw("raft stream ended", "peer", conn.RemoteAddr(), "err", err)
			}
			return
		}
	}
}

// respond writes Raft's answer, an error string then the response, through
// a lent buffer. It returns the encoder, for the stream's next answer.
func respond(conn net.Conn, enc *codec.Encoder, resp raft.RPCResponse) (*codec.Encoder, error) {
	w := writeBufs.Get().(*bufio.Writer)
	w.Reset(conn)
	defer func() {
		w.Reset(nil)
		writeBufs.Put(w)
	}()
	if enc == nil {
		enc = codec.NewEncoder(w, encodeHandle())
	} else {
		enc.Reset(w)
	}
	msg := ""
	if resp.Error != nil {
		msg = resp.Error.Error()
	}
	if err := enc.Encode(msg); err != nil {
		return enc, err
	}
	if err := enc.Encode(resp.Response); err != nil {
		return enc, err
	}
	return enc, w.Flush()
}

// serveOne reads one RPC, hands it to Raft (or to the heartbeat handler) and
// waits for Raft's answer.
func (t *raftNet) serveOne(r *bufio.Reader, dec *codec.Decoder) (raft.RPCResponse, error) {
	var none raft.RPCResponse
	typ, err := r.ReadByte()
	if err != nil {
		return none, err
	}
	respCh := make(chan raft.RPCResponse, 1)
	rpc := raft.RPC{RespChan: respCh}
	heartbeat := false
	switch typ {
	case rpcAppendEntries:
		var req raft.AppendEntriesRequest
		if err := dec.Decode(&req); err != nil {
			return none, err
		}
		rpc.Command = &req
		leader := req.Addr
		if len(leader) == 0 {
			leader = req.Leader
		}
		// NetworkTransport's test for a heartbeat.
		heartbeat = req.Term != 0 && leader != nil && req.PrevLogEntry == 0 && req.PrevLogTerm == 0 &&
			len(req.Entries) == 0 && req.LeaderCommitIndex == 0
	case rpcRequestVote:
		var req raft.RequestVoteRequest
		if err := dec.Decode(&req); err != nil {
			return none, err
		}
		rpc.Command = &req
	case rpcRequestPreVote:
		var req raft.RequestPreVoteRequest
		if err := dec.Decode(&req); err != nil {
			return none, err
		}
		rpc.Command = &req
	case rpcInstallSnapshot:
		var req raft.InstallSnapshotRequest
		if err := dec.Decode(&req); err != nil {
			return none, err
		}
		rpc.Command = &req
		rpc.Reader = io.LimitReader(r, req.Size)
	case rpcTimeoutNow:
		var req raft.TimeoutNowRequest
		if err := dec.Decode(&req); err != nil {
			return none, err
		}
		rpc.Command = &req
	default:
		// The guard refuses unknown types before they get here.
		return none, errUnknownRPC
	}
	if fn := t.heartbeat.Load(); heartbeat && fn != nil {
		(*fn)(rpc)
	} else {
		select {
		case t.consume <- rpc:
		case <-t.closed:
			return none, errTransportClosed
		}
	}
	select {
	case resp := <-respCh:
		return resp, nil
	case <-t.closed:
		return none, errTransportClosed
	}
}

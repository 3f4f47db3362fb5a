package consensus

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/p2pkey/p2pkey/consensus/pb"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
)

// ForwardProtocol carries commands from followers to the leader.
const ForwardProtocol protocol.ID = "/p2pkey/forward/1.0.0"

const (
	forwardServiceName = "p2pkey.forward"
	// forwardVersion1 requests are commands; forwardVersion2 requests say
	// what they ask (pb.Kind).
	forwardVersion1 = 1
	forwardVersion2 = 2
	// forwardOverhead bounds what a forward message adds to its command:
	// the version, the cluster ID, the kind and the framing, or a
	// response's error code and message.
	forwardOverhead = 4 << 10
	// MaxForwardSize bounds one forwarded message, request or response. It
	// is what each side reserves from the stream's resource scope before it
	// reads one.
	MaxForwardSize = MaxCommandSize + forwardOverhead
	// forwardTimeout bounds how long the leader serves one forward stream.
	forwardTimeout = 15 * time.Second
)

// Error codes the forward protocol uses for consensus's own errors. State
// machine errors use the codes of the configured ErrorCodec.
const (
	codeNotLeader    = "consensus.not_leader"
	codeNoLeader     = "consensus.no_leader"
	codeNotAllowed   = "consensus.not_allowed"
	codeBadRequest   = "consensus.bad_request"
	codeInternal     = "consensus.internal"
	codePanic        = "consensus.state_machine_panic"
	codeEntry        = "consensus.entry_version"
	codeEntryFormat  = "consensus.entry_format"
	codeMaybeApplied = "consensus.maybe_applied"
	codeTooLarge     = "consensus.command_too_large"
)

// ErrBadForward is returned for a malformed forward message: bytes that do
// not parse, exceed MaxForwardSize or carry an unknown version. A stream that
// ends, is reset or times out before a whole message arrived is not malformed
// (see errNoAnswer).
var ErrBadForward = errors.New("consensus: malformed forward message")

// errNoAnswer means the stream ended, was reset or timed out before a whole
// forward message arrived.
var errNoAnswer = errors.New("consensus: the leader did not answer")

// RemoteError is an error the leader returned for a forwarded command. It
// matches (errors.Is) the sentinel its code names.
type RemoteError struct {
	Code    string
	Message string
	target  error
}

func (e *RemoteError) Error() string { return e.Message }
func (e *RemoteError) Unwrap() error { return e.target }

type forwarder struct {
	c *Consensus
}

func newForwarder(c *Consensus) *forwarder {
	f := &forwarder{c: c}
	c.cfg.Host.SetStreamHandler(ForwardProtocol, f.handle)
	return f
}

func (f *forwarder) close() { f.c.cfg.Host.RemoveStreamHandler(ForwardProtocol) }

// DecodeForwardRequest reads one size-bounded, version-checked request.
func DecodeForwardRequest(r io.Reader) (*pb.ForwardRequest, error) {
	req := &pb.ForwardRequest{}
	if err := readDelimited(r, req); err != nil {
		return nil, err
	}
	switch v := req.GetVersion(); {
	case v == forwardVersion1 && req.GetKind() == pb.Kind_KIND_COMMAND:
	case v == forwardVersion2 && (req.GetKind() == pb.Kind_KIND_COMMAND || req.GetKind() == pb.Kind_KIND_READ_INDEX):
	default:
		return nil, fmt.Errorf("%w: version %d, kind %d", ErrBadForward, v, req.GetKind())
	}
	return req, nil
}

// DecodeForwardResponse reads one size-bounded, version-checked response.
func DecodeForwardResponse(r io.Reader) (*pb.ForwardResponse, error) {
	resp := &pb.ForwardResponse{}
	if err := readDelimited(r, resp); err != nil {
		return nil, err
	}
	if v := resp.GetVersion(); v != forwardVersion1 && v != forwardVersion2 {
		return nil, fmt.Errorf("%w: version %d", ErrBadForward, v)
	}
	return resp, nil
}

// readDelimited reads one length-delimited message of at most MaxForwardSize
// bytes. It tells a stream that failed or ended early (errNoAnswer) from bytes
// that do not parse (ErrBadForward).
func readDelimited(r io.Reader, m proto.Message) error {
	er := &errReader{r: r}
	err := (protodelim.UnmarshalOptions{MaxSize: MaxForwardSize}).UnmarshalFrom(bufio.NewReader(er), m)
	switch {
	case err == nil:
		return nil
	case er.err != nil:
		return fmt.Errorf("%w: %v", errNoAnswer, er.err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: the stream ended before a whole message", errNoAnswer)
	}
	return fmt.Errorf("%w: %v", ErrBadForward, err)
}

// errReader remembers the error of its reader, other than io.EOF.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

func (f *forwarder) handle(s network.Stream) {
	c := f.c
	remote := s.Conn().RemotePeer()
	if err := s.Scope().SetService(forwardServiceName); err != nil {
		s.Reset()
		return
	}
	if err := s.Scope().ReserveMemory(MaxForwardSize, network.ReservationPriorityAlways); err != nil {
		s.Reset()
		return
	}
	defer s.Scope().ReleaseMemory(MaxForwardSize)
	_ = s.SetDeadline(time.Now().Add(forwardTimeout))

	inConf := c.InConfiguration(remote)
	// Before reading anything, refuse peers that may ask nothing at all.
	if c.adm.denied(remote) || !(inConf || call(c.cfg.AllowForward, remote) || call(c.cfg.AllowMember, remote)) {
		log.Warnw("refused a forward request from a peer that is neither in the Raft configuration nor a member", "peer", remote)
		f.reply(s, &pb.ForwardResponse{Version: forwardVersion1, ErrorCode: codeNotAllowed, ErrorMessage: ErrNotAllowed.Error()})
		return
	}
	req, err := DecodeForwardRequest(s)
	if errors.Is(err, errNoAnswer) {
		s.Reset()
		return
	}
	if err != nil {
		log.Warnw("refused malformed forward request", "peer", remote, "err", err)
		f.reply(s, &pb.ForwardResponse{Version: forwardVersion1, ErrorCode: codeBadRequest, ErrorMessage: err.Error()})
		return
	}
	resp := &pb.ForwardResponse{Version: req.GetVersion()}
	if want := c.cfg.ClusterID(); want != "" && req.GetClusterId() != want {
		log.Warnw("refused a forward request for another cluster", "peer", remote, "cluster", req.GetClusterId())
		resp.ErrorCode, resp.ErrorMessage = codeBadRequest, fmt.Sprintf("wrong cluster %q", req.GetClusterId())
		f.reply(s, resp)
		return
	}
	kind := req.GetKind()
	// Commands come from servers and from the peers AllowForward names (a
	// joiner records receipts before it is a server); read indexes from
	// servers and members.
	if allowed := inConf || (kind == pb.Kind_KIND_COMMAND && call(c.cfg.AllowForward, remote)) ||
		(kind == pb.Kind_KIND_READ_INDEX && call(c.cfg.AllowMember, remote)); !allowed {
		log.Warnw("refused a forward request the peer may not make", "peer", remote, "kind", kind)
		resp.ErrorCode, resp.ErrorMessage = codeNotAllowed, ErrNotAllowed.Error()
		f.reply(s, resp)
		return
	}
	if !c.IsLeader() {
		resp.ErrorCode, resp.ErrorMessage = codeNotLeader, ErrNotLeader.Error()
		f.reply(s, resp)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), forwardTimeout)
	defer cancel()
	switch kind {
	case pb.Kind_KIND_READ_INDEX:
		resp.Index, err = c.localReads.do(ctx)
	default:
		resp.Result, resp.Index, err = c.applyLocal(ctx, req.GetCommand())
	}
	if err != nil {
		resp.ErrorCode, resp.ErrorMessage = f.code(err), err.Error()
	}
	f.reply(s, resp)
}

func (f *forwarder) code(err error) string {
	switch {
	case errors.Is(err, raft.ErrLeadershipLost):
		// Appended, perhaps committed: the follower must not assume
		// either.
		return codeMaybeApplied
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, ErrNotLeader):
		return codeNotLeader
	case errors.Is(err, ErrNoLeader):
		return codeNoLeader
	case errors.Is(err, ErrStateMachinePanic):
		return codePanic
	case errors.Is(err, ErrEntryVersion):
		return codeEntry
	case errors.Is(err, ErrEntryFormat):
		return codeEntryFormat
	case errors.Is(err, ErrCommandTooLarge):
		return codeTooLarge
	}
	if f.c.cfg.Errors != nil {
		if code := f.c.cfg.Errors.Code(err); code != "" {
			return code
		}
	}
	return codeInternal
}

func (f *forwarder) reply(s network.Stream, resp *pb.ForwardResponse) {
	if _, err := protodelim.MarshalTo(s, resp); err != nil {
		s.Reset()
		return
	}
	s.Close()
}

// send forwards cmd to leader in one attempt. An attempt whose request may
// have reached the leader but got no answer returns ErrMaybeApplied; one that
// could not reach the leader returns ErrNoLeader.
func (f *forwarder) send(ctx context.Context, leader peer.ID, cmd []byte) ([]byte, uint64, error) {
	req := &pb.ForwardRequest{Version: forwardVersion1, ClusterId: f.c.cfg.ClusterID(), Command: cmd}
	resp, err := f.roundTrip(ctx, leader, req)
	if errors.Is(err, errNoAnswer) || errors.Is(err, ErrBadForward) {
		return nil, 0, fmt.Errorf("%w: forward to %s: %w", ErrMaybeApplied, leader, err)
	}
	if err != nil {
		return nil, 0, err
	}
	if resp.GetErrorCode() == "" {
		return resp.GetResult(), resp.GetIndex(), nil
	}
	return resp.GetResult(), resp.GetIndex(), f.remoteError(resp)
}

// readIndex asks leader for its confirmed commit index in one attempt.
func (f *forwarder) readIndex(ctx context.Context, leader peer.ID) (uint64, error) {
	req := &pb.ForwardRequest{Version: forwardVersion2, ClusterId: f.c.cfg.ClusterID(), Kind: pb.Kind_KIND_READ_INDEX}
	resp, err := f.roundTrip(ctx, leader, req)
	if errors.Is(err, errNoAnswer) {
		return 0, fmt.Errorf("%w: read index from %s: %w", ErrNoLeader, leader, err)
	}
	if err != nil {
		return 0, err
	}
	if resp.GetErrorCode() != "" {
		return 0, f.remoteError(resp)
	}
	return resp.GetIndex(), nil
}

// roundTrip sends req to leader and reads its answer, within one attempt:
// ctx, at most the attempt timeout, and no longer than Raft takes to name
// another leader. Errors: ErrNoLeader if the request was not sent,
// errNoAnswer if it was but no whole answer came back, ErrBadForward if the
// answer did not parse.
func (f *forwarder) roundTrip(ctx context.Context, leader peer.ID, req *pb.ForwardRequest) (*pb.ForwardResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, f.c.attemptTimeout)
	defer cancel()
	s, err := f.c.cfg.Host.NewStream(network.WithAllowLimitedConn(ctx, "p2pkey-forward"), leader, ForwardProtocol)
	if err != nil {
		return nil, fmt.Errorf("%w: open stream to leader %s: %v", ErrNoLeader, leader, err)
	}
	if err := s.Scope().SetService(forwardServiceName); err != nil {
		s.Reset()
		return nil, fmt.Errorf("%w: forward stream scope: %v", ErrNoLeader, err)
	}
	if err := s.Scope().ReserveMemory(MaxForwardSize, network.ReservationPriorityAlways); err != nil {
		s.Reset()
		return nil, fmt.Errorf("%w: forward stream memory: %v", ErrNoLeader, err)
	}
	defer s.Scope().ReleaseMemory(MaxForwardSize)
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	// Reset the stream, so a blocked read returns, when the attempt ends
	// or Raft names another leader.
	var moved atomic.Pointer[peer.ID]
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	go func() {
		for {
			changed := f.c.LeaderChanged()
			if l := f.c.Leader(); l != "" && l != leader {
				moved.Store(&l)
				cancel()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
		}
	}()

	if _, err := protodelim.MarshalTo(s, req); err != nil {
		s.Reset()
		return nil, fmt.Errorf("%w: send to leader %s: %v", ErrNoLeader, leader, err)
	}
	if err := s.CloseWrite(); err != nil {
		s.Reset()
		return nil, fmt.Errorf("%w: send to leader %s: %v", errNoAnswer, leader, err)
	}
	resp, err := DecodeForwardResponse(s)
	if err != nil {
		s.Reset()
		if l := moved.Load(); l != nil {
			return nil, fmt.Errorf("%w: %s is no longer the leader (%s is)", errNoAnswer, leader, *l)
		}
		if errors.Is(err, errNoAnswer) && ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %s within %v", errNoAnswer, leader, f.c.attemptTimeout)
		}
		return nil, err
	}
	stop()
	s.Close()
	return resp, nil
}

func (f *forwarder) remoteError(resp *pb.ForwardResponse) error {
	e := &RemoteError{Code: resp.GetErrorCode(), Message: resp.GetErrorMessage()}
	switch e.Code {
	case codeNotLeader:
		e.target = ErrNotLeader
	case codeMaybeApplied:
		e.target = ErrMaybeApplied
	case codeTooLarge:
		e.target = ErrCommandTooLarge
	case codeEntryFormat:
		e.target = ErrEntryFormat
	case codeNoLeader:
		e.target = ErrNoLeader
	case codeNotAllowed:
		e.target = ErrNotAllowed
	case codeBadRequest:
		e.target = ErrBadForward
	case codePanic:
		e.target = ErrStateMachinePanic
	case codeEntry:
		e.target = ErrEntryVersion
	default:
		if f.c.cfg.Errors != nil {
			e.target = f.c.cfg.Errors.Error(e.Code)
		}
	}
	return e
}

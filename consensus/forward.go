package consensus

import (
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
	"github.com/p2pkey/p2pkey/wire"
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
// not parse, exceed MaxForwardSize or carry an unknown version (the error
// also wraps wire's ErrMalformed, ErrTooLarge or ErrBadVersion). A stream
// that ends, is reset or times out before a whole message arrived is not
// malformed (see errNoAnswer).
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

// forwardWire is the forward protocol's shape: one request, one response,
// each at most MaxForwardSize, which is what each side reserves.
var forwardWire = wire.Protocol{
	ID:          ForwardProtocol,
	Service:     forwardServiceName,
	MaxRequest:  MaxForwardSize,
	MaxResponse: MaxForwardSize,
	Timeout:     forwardTimeout,
	Versions:    []uint32{forwardVersion1, forwardVersion2},
}

// DecodeForwardRequest reads one size-bounded, version-checked request.
func DecodeForwardRequest(r io.Reader) (*pb.ForwardRequest, error) {
	req := &pb.ForwardRequest{}
	if err := wire.ReadMsg(r, req, MaxForwardSize, forwardWire.Versions...); err != nil {
		return nil, forwardReadError(err)
	}
	if err := checkForwardKind(req); err != nil {
		return nil, err
	}
	return req, nil
}

// checkForwardKind refuses a kind the request's version cannot ask.
func checkForwardKind(req *pb.ForwardRequest) error {
	switch v, k := req.GetVersion(), req.GetKind(); {
	case v == forwardVersion1 && k == pb.Kind_KIND_COMMAND:
	case v == forwardVersion2 && (k == pb.Kind_KIND_COMMAND || k == pb.Kind_KIND_READ_INDEX):
	default:
		return fmt.Errorf("%w: version %d, kind %d", ErrBadForward, v, k)
	}
	return nil
}

// DecodeForwardResponse reads one size-bounded, version-checked response.
func DecodeForwardResponse(r io.Reader) (*pb.ForwardResponse, error) {
	resp := &pb.ForwardResponse{}
	if err := wire.ReadMsg(r, resp, MaxForwardSize, forwardWire.Versions...); err != nil {
		return nil, forwardReadError(err)
	}
	return resp, nil
}

// forwardReadError gives a failed read of a forward message this package's
// sentinel, keeping wire's: a stream that failed, ended or timed out before a
// whole message arrived is errNoAnswer; bytes that were refused are
// ErrBadForward.
func forwardReadError(err error) error {
	if errors.Is(err, wire.ErrIncomplete) || errors.Is(err, wire.ErrTimeout) {
		return fmt.Errorf("%w: %w", errNoAnswer, err)
	}
	return fmt.Errorf("%w: %w", ErrBadForward, err)
}

func (f *forwarder) handle(s network.Stream) {
	c := f.c
	remote := s.Conn().RemotePeer()
	inConf := c.InConfiguration(remote)
	// Before reading anything, refuse peers that may ask nothing at all.
	if c.adm.denied(remote) || !(inConf || call(c.cfg.AllowForward, remote) || call(c.cfg.AllowMember, remote)) {
		c.cfg.Logger.Warnw("refused a forward request from a peer that is neither in the Raft configuration nor a member", "peer", remote)
		wire.Reply(s, forwardWire, &pb.ForwardResponse{Version: forwardVersion1, ErrorCode: codeNotAllowed, ErrorMessage: ErrNotAllowed.Error()})
		return
	}
	err := wire.Serve(context.Background(), s, forwardWire, func(ctx context.Context, req *pb.ForwardRequest) (*pb.ForwardResponse, error) {
		return f.serve(ctx, remote, inConf, req), nil
	}, wire.WithBadRequest(func(err error) *pb.ForwardResponse {
		err = forwardReadError(err)
		c.cfg.Logger.Warnw("refused malformed forward request", "peer", remote, "err", err)
		return &pb.ForwardResponse{Version: forwardVersion1, ErrorCode: codeBadRequest, ErrorMessage: err.Error()}
	}))
	if err != nil {
		c.cfg.Logger.Debugw("forward request refused or unanswered", "peer", remote, "err", err)
	}
}

// serve answers one well-formed request from remote; every refusal is an
// answer the follower reads.
func (f *forwarder) serve(ctx context.Context, remote peer.ID, inConf bool, req *pb.ForwardRequest) *pb.ForwardResponse {
	c := f.c
	resp := &pb.ForwardResponse{Version: req.GetVersion()}
	if err := checkForwardKind(req); err != nil {
		c.cfg.Logger.Warnw("refused malformed forward request", "peer", remote, "err", err)
		resp.Version, resp.ErrorCode, resp.ErrorMessage = forwardVersion1, codeBadRequest, err.Error()
		return resp
	}
	if want := c.cfg.ClusterID(); want != "" && req.GetClusterId() != want {
		c.cfg.Logger.Warnw("refused a forward request for another cluster", "peer", remote, "cluster", req.GetClusterId())
		resp.ErrorCode, resp.ErrorMessage = codeBadRequest, fmt.Sprintf("wrong cluster %q", req.GetClusterId())
		return resp
	}
	kind := req.GetKind()
	// Commands come from servers and from the peers AllowForward names (a
	// joiner records receipts before it is a server); read indexes from
	// servers and members.
	if allowed := inConf || (kind == pb.Kind_KIND_COMMAND && call(c.cfg.AllowForward, remote)) ||
		(kind == pb.Kind_KIND_READ_INDEX && call(c.cfg.AllowMember, remote)); !allowed {
		c.cfg.Logger.Warnw("refused a forward request the peer may not make", "peer", remote, "kind", kind)
		resp.ErrorCode, resp.ErrorMessage = codeNotAllowed, ErrNotAllowed.Error()
		return resp
	}
	if !c.IsLeader() {
		resp.ErrorCode, resp.ErrorMessage = codeNotLeader, ErrNotLeader.Error()
		return resp
	}
	var err error
	switch kind {
	case pb.Kind_KIND_READ_INDEX:
		resp.Index, err = c.localReads.do(ctx)
	default:
		resp.Result, resp.Index, err = c.applyLocal(ctx, req.GetCommand())
	}
	if err != nil {
		resp.ErrorCode, resp.ErrorMessage = f.code(err), err.Error()
	}
	return resp
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
// answer did not parse; each keeps wire's sentinel.
func (f *forwarder) roundTrip(ctx context.Context, leader peer.ID, req *pb.ForwardRequest) (*pb.ForwardResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, f.c.attemptTimeout)
	defer cancel()
	// End the attempt, which resets the stream so a blocked read returns,
	// when Raft names another leader.
	var moved atomic.Pointer[peer.ID]
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
	resp, err := wire.Call[pb.ForwardResponse](network.WithAllowLimitedConn(ctx, "p2pkey-forward"), f.c.cfg.Host, leader, forwardWire, req)
	switch {
	case err == nil:
		return resp, nil
	case errors.Is(err, wire.ErrNotSent):
		return nil, fmt.Errorf("%w: forward to leader %s: %w", ErrNoLeader, leader, err)
	}
	if l := moved.Load(); l != nil {
		return nil, fmt.Errorf("%w: %s is no longer the leader (%s is): %w", errNoAnswer, leader, *l, err)
	}
	if (errors.Is(err, wire.ErrIncomplete) || errors.Is(err, wire.ErrTimeout)) && ctx.Err() != nil {
		return nil, fmt.Errorf("%w: %s within %v: %w", errNoAnswer, leader, f.c.attemptTimeout, err)
	}
	return nil, forwardReadError(err)
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

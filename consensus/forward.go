package consensus

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/p2pkey/p2pkey/consensus/pb"
	"google.golang.org/protobuf/encoding/protodelim"
)

// ForwardProtocol carries commands from followers to the leader.
const ForwardProtocol protocol.ID = "/p2pkey/forward/1.0.0"

const (
	forwardServiceName = "p2pkey.forward"
	forwardVersion     = 1
	// MaxForwardSize bounds one forwarded message, request or response.
	MaxForwardSize = 2 << 20
	// forwardTimeout bounds one forwarded command end to end.
	forwardTimeout = 15 * time.Second
)

// Error codes the forward protocol uses for consensus's own errors. State
// machine errors use the codes of the configured ErrorCodec.
const (
	codeNotLeader  = "consensus.not_leader"
	codeNoLeader   = "consensus.no_leader"
	codeNotAllowed = "consensus.not_allowed"
	codeBadRequest = "consensus.bad_request"
	codeInternal   = "consensus.internal"
	codePanic      = "consensus.state_machine_panic"
	codeEntry      = "consensus.entry_version"
)

// ErrBadForward is returned for a malformed forward message.
var ErrBadForward = errors.New("consensus: malformed forward message")

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
	if err := (protodelim.UnmarshalOptions{MaxSize: MaxForwardSize}).UnmarshalFrom(bufio.NewReader(r), req); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadForward, err)
	}
	if req.GetVersion() != forwardVersion {
		return nil, fmt.Errorf("%w: version %d", ErrBadForward, req.GetVersion())
	}
	return req, nil
}

// DecodeForwardResponse reads one size-bounded, version-checked response.
func DecodeForwardResponse(r io.Reader) (*pb.ForwardResponse, error) {
	resp := &pb.ForwardResponse{}
	if err := (protodelim.UnmarshalOptions{MaxSize: MaxForwardSize}).UnmarshalFrom(bufio.NewReader(r), resp); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadForward, err)
	}
	if resp.GetVersion() != forwardVersion {
		return nil, fmt.Errorf("%w: version %d", ErrBadForward, resp.GetVersion())
	}
	return resp, nil
}

func (f *forwarder) handle(s network.Stream) {
	remote := s.Conn().RemotePeer()
	if err := s.Scope().SetService(forwardServiceName); err != nil {
		s.Reset()
		return
	}
	if err := s.Scope().ReserveMemory(64<<10, network.ReservationPriorityAlways); err != nil {
		s.Reset()
		return
	}
	defer s.Scope().ReleaseMemory(64 << 10)
	_ = s.SetDeadline(time.Now().Add(forwardTimeout))

	// A member the state machine knows may forward before the leader has
	// added it to the configuration: a joiner records its receipts first.
	if !f.c.InConfiguration(remote) && (f.c.cfg.AllowMember == nil || !f.c.cfg.AllowMember(remote)) {
		log.Warnw("refused forwarded command from a peer that is neither in the Raft configuration nor a member", "peer", remote)
		f.reply(s, &pb.ForwardResponse{ErrorCode: codeNotAllowed, ErrorMessage: ErrNotAllowed.Error()})
		return
	}
	req, err := DecodeForwardRequest(s)
	if err != nil {
		log.Warnw("refused malformed forwarded command", "peer", remote, "err", err)
		f.reply(s, &pb.ForwardResponse{ErrorCode: codeBadRequest, ErrorMessage: err.Error()})
		return
	}
	if want := f.c.cfg.ClusterID(); want != "" && req.GetClusterId() != want {
		log.Warnw("refused forwarded command for another cluster", "peer", remote, "cluster", req.GetClusterId())
		f.reply(s, &pb.ForwardResponse{ErrorCode: codeBadRequest, ErrorMessage: fmt.Sprintf("wrong cluster %q", req.GetClusterId())})
		return
	}
	resp := &pb.ForwardResponse{}
	if !f.c.IsLeader() {
		resp.ErrorCode, resp.ErrorMessage = codeNotLeader, ErrNotLeader.Error()
		f.reply(s, resp)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), forwardTimeout)
	defer cancel()
	res, idx, err := f.c.applyLocal(ctx, req.GetCommand())
	resp.Result, resp.Index = res, idx
	if err != nil {
		resp.ErrorCode, resp.ErrorMessage = f.code(err), err.Error()
	}
	f.reply(s, resp)
}

func (f *forwarder) code(err error) string {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, ErrNotLeader):
		return codeNotLeader
	case errors.Is(err, ErrStateMachinePanic):
		return codePanic
	case errors.Is(err, ErrEntryVersion):
		return codeEntry
	}
	if f.c.cfg.Errors != nil {
		if code := f.c.cfg.Errors.Code(err); code != "" {
			return code
		}
	}
	return codeInternal
}

func (f *forwarder) reply(s network.Stream, resp *pb.ForwardResponse) {
	resp.Version = forwardVersion
	if _, err := protodelim.MarshalTo(s, resp); err != nil {
		s.Reset()
		return
	}
	s.Close()
}

func (f *forwarder) send(ctx context.Context, leader peer.ID, cmd []byte) ([]byte, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, forwardTimeout)
	defer cancel()
	ctx = network.WithAllowLimitedConn(ctx, "p2pkey-forward")
	s, err := f.c.cfg.Host.NewStream(ctx, leader, ForwardProtocol)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: open stream to leader %s: %v", ErrNoLeader, leader, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	req := &pb.ForwardRequest{Version: forwardVersion, ClusterId: f.c.cfg.ClusterID(), Command: cmd}
	if _, err := protodelim.MarshalTo(s, req); err != nil {
		s.Reset()
		return nil, 0, fmt.Errorf("%w: send to leader: %v", ErrNoLeader, err)
	}
	if err := s.CloseWrite(); err != nil {
		s.Reset()
		return nil, 0, fmt.Errorf("%w: send to leader: %v", ErrNoLeader, err)
	}
	resp, err := DecodeForwardResponse(s)
	if err != nil {
		s.Reset()
		return nil, 0, fmt.Errorf("forward to leader %s: %w", leader, err)
	}
	s.Close()
	if resp.GetErrorCode() == "" {
		return resp.GetResult(), resp.GetIndex(), nil
	}
	return resp.GetResult(), resp.GetIndex(), f.remoteError(resp)
}

func (f *forwarder) remoteError(resp *pb.ForwardResponse) error {
	e := &RemoteError{Code: resp.GetErrorCode(), Message: resp.GetErrorMessage()}
	switch e.Code {
	case codeNotLeader:
		e.target = ErrNotLeader
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

package shares

import (
	"errors"
	"fmt"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/p2pkey/p2pkey/shares/pb"
	"github.com/p2pkey/p2pkey/wire"
)

// ProtocolID is the share protocol: one request and one response per
// stream, each a varint-length-delimited protobuf message.
const ProtocolID protocol.ID = "/p2pkey/shares/1.0.0"

// ServiceName is the resource manager service the share streams belong to.
const ServiceName = "p2pkey.shares"

// WireVersion is the version field of every Request and Response.
const WireVersion = 1

// MaxMessageSize bounds one delimited message on a share stream (rule S4).
// A push of a 32-byte K share is 260 bytes.
const MaxMessageSize = 64 << 10

// maxErrorMessage bounds the human-readable reason in a refusal.
const maxErrorMessage = 256

// Operation names in logs and in Tracer calls.
const (
	opPush    = "push"
	opFetch   = "fetch"
	opUnknown = "unknown"
)

// request is a decoded and validated Request.
type request struct {
	op        string
	clusterID string
	gen       uint64
	envelope  []byte // push only; the raw encoded envelope
}

// shareWire is the share protocol as package wire runs it: one request and
// one response per stream, each at most MaxMessageSize, version
// WireVersion. NewService sets Timeout from WithTimeout.
var shareWire = wire.Protocol{
	ID:          ProtocolID,
	Service:     ServiceName,
	MaxRequest:  MaxMessageSize,
	MaxResponse: MaxMessageSize,
	Timeout:     DefaultTimeout,
	Versions:    []uint32{WireVersion},
}

// requestError gives a request that could not be read its wire meaning:
// ErrTooLarge for an oversized message, ErrBadRequest for anything else
// that came in (bytes that do not parse, another version, a stream that
// ended or stalled before a whole request), and ErrInternal when the
// stream could not even be attached to the resource manager.
func requestError(err error) error {
	switch {
	case errors.Is(err, wire.ErrTooLarge):
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	case errors.Is(err, wire.ErrBadVersion), errors.Is(err, wire.ErrMalformed),
		errors.Is(err, wire.ErrIncomplete), errors.Is(err, wire.ErrTimeout):
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	default:
		return fmt.Errorf("%w: %w", ErrInternal, err)
	}
}

// responseError is the client's error for a Call to p that got no valid
// response. A response that came back and was refused (too large, another
// version, malformed) is ErrBadResponse, wrapping ErrTooLarge or
// ErrBadRequest as the holder's reading of a request would; a request not
// sent, or a stream that failed or timed out first, keeps package wire's
// sentinel and its cause (a reset, a deadline), and is not ErrBadResponse:
// it says nothing about the holder's answer.
func responseError(p peer.ID, err error) error {
	switch {
	case errors.Is(err, wire.ErrNotSent):
		return fmt.Errorf("shares: send to %s: %w", p, err)
	case errors.Is(err, wire.ErrTooLarge):
		return fmt.Errorf("shares: response from %s: %w: %w: %w", p, ErrBadResponse, ErrTooLarge, err)
	case errors.Is(err, wire.ErrBadVersion), errors.Is(err, wire.ErrMalformed):
		return fmt.Errorf("shares: response from %s: %w: %w: %w", p, ErrBadResponse, ErrBadRequest, err)
	default:
		return fmt.Errorf("shares: response from %s: %w", p, err)
	}
}

// validateRequest checks a Request that wire.ReadMsg read (its size and
// version are checked). It never panics; every malformed request is
// ErrBadRequest or ErrTooLarge.
func validateRequest(m *pb.Request) (*request, error) {
	var req *request
	switch body := m.GetBody().(type) {
	case *pb.Request_Push_:
		p := body.Push
		if len(p.GetEnvelope()) == 0 {
			return nil, fmt.Errorf("%w: push without an envelope", ErrBadRequest)
		}
		if len(p.GetEnvelope()) > MaxEnvelopeSize {
			return nil, fmt.Errorf("%w: envelope of %d bytes, limit %d", ErrTooLarge, len(p.GetEnvelope()), MaxEnvelopeSize)
		}
		req = &request{op: opPush, clusterID: p.GetClusterId(), gen: p.GetGeneration(), envelope: p.GetEnvelope()}
	case *pb.Request_Fetch_:
		f := body.Fetch
		req = &request{op: opFetch, clusterID: f.GetClusterId(), gen: f.GetGeneration()}
	default:
		return nil, fmt.Errorf("%w: neither push nor fetch", ErrBadRequest)
	}
	if err := validateClusterID(req.clusterID); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	return req, nil
}

// checkResponse checks the parts of a Response (read by wire.Call, size
// and version checked) that do not depend on the request.
func checkResponse(m *pb.Response) error {
	if m.GetCode() == pb.Response_CODE_UNSPECIFIED {
		return fmt.Errorf("%w: no response code", ErrBadResponse)
	}
	if err := validateClusterID(m.GetClusterId()); err != nil {
		return fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	return nil
}

func pushRequest(clusterID string, gen uint64, env []byte) *pb.Request {
	return &pb.Request{Version: WireVersion, Body: &pb.Request_Push_{Push: &pb.Request_Push{
		ClusterId: clusterID, Generation: gen, Envelope: env,
	}}}
}

func fetchRequest(clusterID string, gen uint64) *pb.Request {
	return &pb.Request{Version: WireVersion, Body: &pb.Request_Fetch_{Fetch: &pb.Request_Fetch{
		ClusterId: clusterID, Generation: gen,
	}}}
}

// errorResponse is the refusal for err. Its message is err's text, which
// never holds share bytes, truncated.
func errorResponse(clusterID string, err error) *pb.Response {
	msg := err.Error()
	if len(msg) > maxErrorMessage {
		msg = msg[:maxErrorMessage]
	}
	msg = strings.ToValidUTF8(msg, "?")
	return &pb.Response{Version: WireVersion, ClusterId: clusterID, Code: codeOf(err), Message: msg}
}

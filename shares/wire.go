package shares

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/shares/pb"
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

// readDelimited reads one message of at most MaxMessageSize bytes. An
// over-long length prefix is refused before anything is allocated.
func readDelimited(r *bufio.Reader, m proto.Message) error {
	err := protodelim.UnmarshalOptions{MaxSize: MaxMessageSize}.UnmarshalFrom(r, m)
	var tooLarge *protodelim.SizeTooLargeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tooLarge):
		return fmt.Errorf("%w: %d-byte message, limit %d", ErrTooLarge, tooLarge.Size, MaxMessageSize)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: empty stream", ErrBadRequest)
	default:
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
}

// writeDelimited writes one message in a single Write.
func writeDelimited(w io.Writer, m proto.Message) error {
	bw := bufio.NewWriterSize(w, 512)
	if _, err := protodelim.MarshalTo(bw, m); err != nil {
		return err
	}
	return bw.Flush()
}

// decodeRequest reads and validates one Request. It never panics; every
// malformed input is ErrBadRequest or ErrTooLarge.
func decodeRequest(r *bufio.Reader) (*request, error) {
	var m pb.Request
	if err := readDelimited(r, &m); err != nil {
		return nil, err
	}
	return validateRequest(&m)
}

func validateRequest(m *pb.Request) (*request, error) {
	if m.GetVersion() != WireVersion {
		return nil, fmt.Errorf("%w: wire version %d, want %d", ErrBadRequest, m.GetVersion(), WireVersion)
	}
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

// decodeResponse reads one Response and checks the parts that do not
// depend on the request.
func decodeResponse(r *bufio.Reader) (*pb.Response, error) {
	var m pb.Response
	if err := readDelimited(r, &m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	if m.GetVersion() != WireVersion {
		return nil, fmt.Errorf("%w: wire version %d, want %d", ErrBadResponse, m.GetVersion(), WireVersion)
	}
	if m.GetCode() == pb.Response_CODE_UNSPECIFIED {
		return nil, fmt.Errorf("%w: no response code", ErrBadResponse)
	}
	if err := validateClusterID(m.GetClusterId()); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	return &m, nil
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

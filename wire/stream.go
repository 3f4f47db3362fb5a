package wire

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/proto"
)

// Protocol is what both ends of a one-request, one-response protocol agree
// on. Declare one per protocol, beside its protocol.ID, and hand it to Serve
// and Call.
type Protocol struct {
	// ID is the versioned protocol ID streams are opened with.
	ID protocol.ID
	// Service is the resource manager service both ends attach their
	// streams to.
	Service string
	// MaxRequest and MaxResponse bound one message each way. Each end
	// reserves the larger of the two from its stream's scope before it
	// reads or writes anything.
	MaxRequest, MaxResponse int
	// Timeout bounds one exchange, on each end, from the stream's opening
	// to its close.
	Timeout time.Duration
	// Versions are the message versions this end speaks, requests and
	// responses alike.
	Versions []uint32
}

// Reservation is the memory each end reserves for one stream: its largest
// message.
func (pr Protocol) Reservation() int { return max(pr.MaxRequest, pr.MaxResponse) }

func (pr Protocol) validate() error {
	switch {
	case pr.ID == "" || pr.Service == "":
		return errors.New("wire: Protocol needs an ID and a Service")
	case pr.MaxRequest <= 0 || pr.MaxResponse <= 0:
		return fmt.Errorf("wire: %s: message limits must be positive", pr.ID)
	case pr.Timeout <= 0:
		return fmt.Errorf("wire: %s: Timeout must be positive", pr.ID)
	case len(pr.Versions) == 0:
		return fmt.Errorf("wire: %s: no Versions", pr.ID)
	}
	return nil
}

// attach validates pr, attaches s to pr's service and reserves pr's largest
// message in s's scope. The reservation is released when s is closed or
// reset (the scope is done then), or earlier by the caller.
func (pr Protocol) attach(s network.Stream) error {
	if err := pr.validate(); err != nil {
		return err
	}
	if err := s.Scope().SetService(pr.Service); err != nil {
		return fmt.Errorf("wire: %s: attach to service %s: %w", pr.ID, pr.Service, err)
	}
	if err := s.Scope().ReserveMemory(pr.Reservation(), network.ReservationPriorityAlways); err != nil {
		return fmt.Errorf("wire: %s: reserve %d bytes: %w", pr.ID, pr.Reservation(), err)
	}
	return nil
}

// Message is the constraint of Serve's request and Call's response: a
// pointer to a generated protobuf message type T that has a version field.
// Name T (Call[pb.Response]); Go infers the pointer.
type Message[T any] interface {
	*T
	Versioned
}

// ServeOption configures one Serve call.
type ServeOption[Resp any] func(*serveConfig[Resp])

type serveConfig[Resp any] struct {
	badRequest func(error) Resp
}

// WithBadRequest makes Serve answer a request that arrived whole but is
// refused (ErrTooLarge, ErrBadVersion, ErrMalformed) with answer(err), and
// close the stream, rather than reset it. A stream that fails or times out
// before a whole request arrived is always reset: there is no one to tell.
func WithBadRequest[Resp any](answer func(err error) Resp) ServeOption[Resp] {
	return func(c *serveConfig[Resp]) { c.badRequest = answer }
}

// Serve runs one exchange of pr on an incoming stream, the skeleton every
// stream handler shares: attach s to pr.Service and reserve pr's largest
// message; set a deadline pr.Timeout away; read one request (ReadMsg,
// pr.MaxRequest, pr.Versions); call handle with a context that ends at the
// same deadline, or when ctx does; write its response (at most
// pr.MaxResponse); close s. Any error resets s instead, and Serve returns it
// for the caller to log; handle's own error is returned as it is. When ctx
// ends first (the service stops), s is reset at once.
//
// A refusal the peer should read is a response, not an error: return it
// with a nil error.
func Serve[Req any, PReq Message[Req], Resp proto.Message](ctx context.Context, s network.Stream, pr Protocol, handle func(context.Context, PReq) (Resp, error), opts ...ServeOption[Resp]) error {
	var cfg serveConfig[Resp]
	for _, o := range opts {
		o(&cfg)
	}
	if err := pr.attach(s); err != nil {
		s.Reset()
		return err
	}
	defer s.Scope().ReleaseMemory(pr.Reservation())
	ctx, cancel := context.WithTimeout(ctx, pr.Timeout)
	defer cancel()
	dl, _ := ctx.Deadline()
	_ = s.SetDeadline(dl)
	// A caller's context that ends (its service stops) ends the exchange.
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()

	req := PReq(new(Req))
	if err := ReadMsg(s, req, pr.MaxRequest, pr.Versions...); err != nil {
		err = ctxError(ctx, err)
		if cfg.badRequest != nil && refused(err) {
			if werr := WriteMsg(s, cfg.badRequest(err), pr.MaxResponse); werr != nil {
				s.Reset()
				return errors.Join(err, werr)
			}
			s.Close()
			return err
		}
		s.Reset()
		return err
	}
	resp, err := handle(ctx, req)
	if err != nil {
		s.Reset()
		return err
	}
	if err := WriteMsg(s, resp, pr.MaxResponse); err != nil {
		s.Reset()
		return ctxError(ctx, err)
	}
	stop()
	s.Close()
	return nil
}

// Reply answers an incoming stream of pr with resp without reading its
// request, for a refusal decided before anything is read (a peer that may
// not ask, a rate limit). It attaches and bounds s as Serve does, then
// closes it, or resets it if resp cannot be sent.
func Reply(s network.Stream, pr Protocol, resp proto.Message) error {
	if err := pr.attach(s); err != nil {
		s.Reset()
		return err
	}
	defer s.Scope().ReleaseMemory(pr.Reservation())
	_ = s.SetDeadline(time.Now().Add(pr.Timeout))
	if err := WriteMsg(s, resp, pr.MaxResponse); err != nil {
		s.Reset()
		return err
	}
	s.Close()
	return nil
}

// refused reports whether err says the peer's bytes were refused, rather
// than that the stream failed.
func refused(err error) bool {
	return errors.Is(err, ErrTooLarge) || errors.Is(err, ErrBadVersion) || errors.Is(err, ErrMalformed)
}

// Open opens a stream of pr to p for one exchange: attached to pr.Service,
// with pr's largest message reserved in its scope (released when the stream
// is closed or reset), and a deadline at ctx's or pr.Timeout from now,
// whichever comes first. Wrap ctx with network.WithAllowLimitedConn to allow
// relayed connections. Errors wrap ErrNotSent.
func Open(ctx context.Context, h host.Host, p peer.ID, pr Protocol) (network.Stream, error) {
	if err := pr.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	s, err := h.NewStream(ctx, p, pr.ID)
	if err != nil {
		return nil, fmt.Errorf("%w: open %s stream to %s: %w", ErrNotSent, pr.ID, p, ctxError(ctx, err))
	}
	if err := pr.attach(s); err != nil {
		s.Reset()
		return nil, fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	_ = s.SetDeadline(deadline(ctx, pr.Timeout))
	return s, nil
}

// Call sends req to p over a new stream of pr and returns p's response:
// Open, write req (at most pr.MaxRequest), close the write side, read one
// response (ReadMsg, pr.MaxResponse, pr.Versions), close the stream. Any
// error resets the stream. When ctx ends, the stream is reset at once, and
// the error wraps ctx's.
//
// Errors: ErrNotSent (possibly with ErrTimeout) if p cannot have seen req;
// otherwise ErrIncomplete or ErrTimeout if no whole response came back, and
// ErrTooLarge, ErrBadVersion or ErrMalformed if it did not parse.
//
// Call it with the response type named: Call[pb.Response](ctx, h, p, pr, req).
func Call[Resp any, PResp Message[Resp]](ctx context.Context, h host.Host, p peer.ID, pr Protocol, req proto.Message) (PResp, error) {
	if err := pr.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	ctx, cancel := context.WithDeadline(ctx, deadline(ctx, pr.Timeout))
	defer cancel()
	s, err := Open(ctx, h, p, pr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	if err := WriteMsg(s, req, pr.MaxRequest); err != nil {
		s.Reset()
		return nil, fmt.Errorf("%w: %s request to %s: %w", ErrNotSent, pr.ID, p, ctxError(ctx, err))
	}
	if err := s.CloseWrite(); err != nil {
		s.Reset()
		return nil, fmt.Errorf("%s request to %s: %w", pr.ID, p, ctxError(ctx, writeError(err)))
	}
	resp := PResp(new(Resp))
	if err := ReadMsg(s, resp, pr.MaxResponse, pr.Versions...); err != nil {
		s.Reset()
		return nil, fmt.Errorf("%s response from %s: %w", pr.ID, p, ctxError(ctx, err))
	}
	// A whole response is an answer even if ctx ends now and the
	// stream is reset rather than closed.
	stop()
	s.Close()
	return resp, nil
}

// deadline is ctx's deadline or d from now, whichever comes first.
func deadline(ctx context.Context, d time.Duration) time.Time {
	dl := time.Now().Add(d)
	if cdl, ok := ctx.Deadline(); ok && cdl.Before(dl) {
		return cdl
	}
	return dl
}

// ctxError says that err was caused by ctx's end, the stream having been
// reset by it or its deadline, which is ctx's, having passed: a deadline makes it ErrTimeout (and context.DeadlineExceeded)
// instead of ErrIncomplete; a cancellation adds context.Canceled. Refusals
// of the peer's bytes stay as they are.
func ctxError(ctx context.Context, err error) error {
	cerr := ctx.Err()
	if cerr == nil && errors.Is(err, ErrTimeout) {
		// The stream's deadline is ctx's, and it fired first.
		cerr = context.DeadlineExceeded
	}
	switch {
	case cerr == nil, refused(err), errors.Is(err, cerr):
		return err
	case errors.Is(cerr, context.DeadlineExceeded):
		if errors.Is(err, ErrTimeout) {
			return fmt.Errorf("%w (%w)", err, cerr)
		}
		return fmt.Errorf("%w: %w (%v)", ErrTimeout, cerr, err)
	default:
		return fmt.Errorf("%w (%w)", err, cerr)
	}
}

package wire_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/wire"
	"github.com/p2pkey/p2pkey/wire/internal/testpb"
)

var echo = wire.Protocol{
	ID:          "/p2pkey-test/echo/1.0.0",
	Service:     "p2pkey-test.echo",
	MaxRequest:  1 << 10,
	MaxResponse: 4 << 10,
	Timeout:     5 * time.Second,
	Versions:    []uint32{1, 2},
}

// pair is two hosts on loopback, b connected to a; both closed at the end.
func pair(t *testing.T) (a, b host.Host) {
	t.Helper()
	mk := func() host.Host {
		h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		return h
	}
	a, b = mk(), mk()
	if err := b.Connect(context.Background(), peer.AddrInfo{ID: a.ID(), Addrs: a.Addrs()}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// scopeOf reports the service and the reserved memory of s's scope.
func scopeOf(s network.Stream) (string, int64) {
	svc := ""
	if ms, ok := s.Scope().(network.StreamManagementScope); ok && ms.ServiceScope() != nil {
		svc = ms.ServiceScope().Name()
	}
	return svc, s.Scope().Stat().Memory
}

type served struct {
	err        error
	service    string
	memory     int64
	hadTimeout bool
}

// serve installs a handler of pr on h that runs handle through wire.Serve
// and reports each stream's outcome.
func serve(t *testing.T, h host.Host, pr wire.Protocol, handle func(context.Context, *testpb.Msg) (*testpb.Msg, error), opts ...wire.ServeOption[*testpb.Msg]) <-chan served {
	out := make(chan served, 8)
	h.SetStreamHandler(pr.ID, func(s network.Stream) {
		var r served
		err := wire.Serve(context.Background(), s, pr, func(ctx context.Context, req *testpb.Msg) (*testpb.Msg, error) {
			r.service, r.memory = scopeOf(s)
			_, r.hadTimeout = ctx.Deadline()
			return handle(ctx, req)
		}, opts...)
		r.err = err
		out <- r
	})
	return out
}

func wait[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
		panic("unreachable")
	}
}

func TestServeAndCall(t *testing.T) {
	a, b := pair(t)
	got := serve(t, a, echo, func(_ context.Context, req *testpb.Msg) (*testpb.Msg, error) {
		return &testpb.Msg{Version: req.GetVersion(), Body: append([]byte("echo "), req.GetBody()...)}, nil
	})
	resp, err := wire.Call[testpb.Msg](context.Background(), b, a.ID(), echo, &testpb.Msg{Version: 2, Body: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.GetBody()) != "echo hi" || resp.GetVersion() != 2 {
		t.Fatalf("response %v", resp)
	}
	r := wait(t, got)
	if r.err != nil {
		t.Fatalf("Serve: %v", r.err)
	}
	if r.service != echo.Service || r.memory != int64(echo.Reservation()) || !r.hadTimeout {
		t.Fatalf("server stream: service %q, %d bytes reserved, deadline %v; want %q, %d, true", r.service, r.memory, r.hadTimeout, echo.Service, echo.Reservation())
	}
}

// The client stream is attached and bounded as the server's is.
func TestOpenSetsScope(t *testing.T) {
	a, b := pair(t)
	release := make(chan struct{})
	defer close(release)
	a.SetStreamHandler(echo.ID, func(s network.Stream) { <-release; s.Reset() })
	s, err := wire.Open(context.Background(), b, a.ID(), echo)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	if svc, mem := scopeOf(s); svc != echo.Service || mem != int64(echo.Reservation()) {
		t.Fatalf("client stream: service %q, %d bytes reserved; want %q, %d", svc, mem, echo.Service, echo.Reservation())
	}
}

func TestHandlerErrorResets(t *testing.T) {
	a, b := pair(t)
	boom := errors.New("boom")
	got := serve(t, a, echo, func(context.Context, *testpb.Msg) (*testpb.Msg, error) { return nil, boom })
	_, err := wire.Call[testpb.Msg](context.Background(), b, a.ID(), echo, &testpb.Msg{Version: 1})
	if !errors.Is(err, wire.ErrIncomplete) || errors.Is(err, wire.ErrNotSent) {
		t.Fatalf("Call to a failing handler: %v, want ErrIncomplete, sent", err)
	}
	if r := wait(t, got); !errors.Is(r.err, boom) {
		t.Fatalf("Serve returned %v, want the handler's error", r.err)
	}
}

// A peer that opens a stream and sends half a request is a timeout on the
// server, not a malformed request.
func TestServeSlowPeerIsTimeout(t *testing.T) {
	a, b := pair(t)
	pr := echo
	pr.Timeout = 300 * time.Millisecond
	got := serve(t, a, pr, func(context.Context, *testpb.Msg) (*testpb.Msg, error) {
		t.Error("handler called for half a request")
		return nil, nil
	})
	s, err := b.NewStream(context.Background(), a.ID(), pr.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	if _, err := s.Write([]byte{10, 8, 1}); err != nil { // a 10-byte message, 2 bytes of it
		t.Fatal(err)
	}
	r := wait(t, got)
	if !errors.Is(r.err, wire.ErrTimeout) || errors.Is(r.err, wire.ErrMalformed) {
		t.Fatalf("Serve of a stalled request: %v, want ErrTimeout", r.err)
	}
}

// A server that does not answer within the caller's context: ErrTimeout
// and context.DeadlineExceeded, not ErrNotSent, as soon as ctx ends.
func TestCallTimeout(t *testing.T) {
	a, b := pair(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	serve(t, a, echo, func(context.Context, *testpb.Msg) (*testpb.Msg, error) {
		<-release
		return nil, errors.New("released")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := wire.Call[testpb.Msg](ctx, b, a.ID(), echo, &testpb.Msg{Version: 1})
	if !errors.Is(err, wire.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, wire.ErrNotSent) || errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("Call past its deadline: %v, want ErrTimeout and DeadlineExceeded only", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Call returned %v after a 300ms deadline", d)
	}
}

func TestCallCancel(t *testing.T) {
	a, b := pair(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	arrived := make(chan struct{}, 1)
	serve(t, a, echo, func(context.Context, *testpb.Msg) (*testpb.Msg, error) {
		arrived <- struct{}{}
		<-release
		return nil, errors.New("released")
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { wait(t, arrived); cancel() }()
	_, err := wire.Call[testpb.Msg](ctx, b, a.ID(), echo, &testpb.Msg{Version: 1})
	if !errors.Is(err, context.Canceled) || !errors.Is(err, wire.ErrIncomplete) || errors.Is(err, wire.ErrTimeout) {
		t.Fatalf("cancelled Call: %v, want ErrIncomplete and Canceled", err)
	}
}

func TestCallNotSent(t *testing.T) {
	a, b := pair(t)
	// No handler: the stream does not open.
	_, err := wire.Call[testpb.Msg](context.Background(), b, a.ID(), echo, &testpb.Msg{Version: 1})
	if !errors.Is(err, wire.ErrNotSent) {
		t.Fatalf("Call of an unsupported protocol: %v, want ErrNotSent", err)
	}
	// Too large to send.
	serve(t, a, echo, func(context.Context, *testpb.Msg) (*testpb.Msg, error) { return &testpb.Msg{Version: 1}, nil })
	_, err = wire.Call[testpb.Msg](context.Background(), b, a.ID(), echo, &testpb.Msg{Version: 1, Body: make([]byte, echo.MaxRequest)})
	if !errors.Is(err, wire.ErrNotSent) || !errors.Is(err, wire.ErrTooLarge) {
		t.Fatalf("oversized Call: %v, want ErrNotSent and ErrTooLarge", err)
	}
}

// A response of a version the client does not speak is refused as such.
func TestCallBadVersion(t *testing.T) {
	a, b := pair(t)
	serve(t, a, echo, func(context.Context, *testpb.Msg) (*testpb.Msg, error) { return &testpb.Msg{Version: 7}, nil })
	_, err := wire.Call[testpb.Msg](context.Background(), b, a.ID(), echo, &testpb.Msg{Version: 1})
	if !errors.Is(err, wire.ErrBadVersion) || errors.Is(err, wire.ErrNotSent) {
		t.Fatalf("Call answered with version 7: %v, want ErrBadVersion", err)
	}
}

// sendRaw sends req with the given versions allowed back, as an old or
// foreign client would.
func sendRaw(t *testing.T, b host.Host, to peer.ID, req *testpb.Msg) (*testpb.Msg, error) {
	t.Helper()
	s, err := wire.Open(context.Background(), b, to, echo)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := wire.WriteMsg(s, req, 1<<20); err != nil {
		t.Fatal(err)
	}
	s.CloseWrite()
	var resp testpb.Msg
	return &resp, wire.ReadMsg(s, &resp, echo.MaxResponse, 1, 2)
}

func TestBadRequest(t *testing.T) {
	a, b := pair(t)
	ok := func(context.Context, *testpb.Msg) (*testpb.Msg, error) { return &testpb.Msg{Version: 1}, nil }

	// Without WithBadRequest, a refused request resets the stream.
	got := serve(t, a, echo, ok)
	if _, err := sendRaw(t, b, a.ID(), &testpb.Msg{Version: 9}); !errors.Is(err, wire.ErrIncomplete) {
		t.Fatalf("bad version, no answer configured: %v, want a reset", err)
	}
	if r := wait(t, got); !errors.Is(r.err, wire.ErrBadVersion) {
		t.Fatalf("Serve: %v, want ErrBadVersion", r.err)
	}

	// With it, the peer reads why.
	got = serve(t, a, echo, ok, wire.WithBadRequest(func(err error) *testpb.Msg {
		return &testpb.Msg{Version: 1, Error: err.Error()}
	}))
	for _, req := range []*testpb.Msg{{Version: 9}, {Version: 1, Body: make([]byte, echo.MaxRequest)}} {
		resp, err := sendRaw(t, b, a.ID(), req)
		if err != nil || resp.GetError() == "" {
			t.Fatalf("refused request: %v, %v; want an answer saying why", resp, err)
		}
		if r := wait(t, got); !errors.Is(r.err, wire.ErrBadVersion) && !errors.Is(r.err, wire.ErrTooLarge) {
			t.Fatalf("Serve: %v, want the refusal", r.err)
		}
	}
}

func TestReply(t *testing.T) {
	a, b := pair(t)
	a.SetStreamHandler(echo.ID, func(s network.Stream) {
		wire.Reply(s, echo, &testpb.Msg{Version: 1, Error: "not allowed"})
	})
	resp, err := wire.Call[testpb.Msg](context.Background(), b, a.ID(), echo, &testpb.Msg{Version: 1})
	if err != nil || resp.GetError() != "not allowed" {
		t.Fatalf("Reply: %v, %v", resp, err)
	}
}

// A service that stops ends the exchanges it serves at once.
func TestServeStopsWithItsContext(t *testing.T) {
	a, b := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan error, 1)
	a.SetStreamHandler(echo.ID, func(s network.Stream) {
		got <- wire.Serve(ctx, s, echo, func(context.Context, *testpb.Msg) (*testpb.Msg, error) {
			return &testpb.Msg{Version: 1}, nil
		})
	})
	s, err := wire.Open(context.Background(), b, a.ID(), echo)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	if _, err := s.Write([]byte{10}); err != nil { // a request that never ends
		t.Fatal(err)
	}
	cancel()
	if err := wait(t, got); !errors.Is(err, context.Canceled) || !errors.Is(err, wire.ErrIncomplete) {
		t.Fatalf("Serve after its context ended: %v, want ErrIncomplete and Canceled", err)
	}
}

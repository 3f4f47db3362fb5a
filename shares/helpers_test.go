package shares

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/internal/testkit"
	"github.com/p2pkey/p2pkey/shares/pb"
	"github.com/p2pkey/p2pkey/wire"
)

// testPolicy is a Policy the tests steer: pushes are allowed into open
// generations, fetches unless the owner is removed.
type testPolicy struct {
	mu      sync.Mutex
	open    map[uint64]bool
	removed map[peer.ID]bool
	other   error // if set, every decision returns it
	allOpen bool  // every generation is open
}

func newTestPolicy(open ...uint64) *testPolicy {
	p := &testPolicy{open: map[uint64]bool{}, removed: map[peer.ID]bool{}}
	for _, g := range open {
		p.open[g] = true
	}
	return p
}

func (p *testPolicy) AllowPush(owner peer.ID, gen uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.other != nil {
		return p.other
	}
	if !p.open[gen] && !p.allOpen {
		return fmt.Errorf("%w: generation %d", ErrGenerationNotOpen, gen)
	}
	return nil
}

func (p *testPolicy) AllowFetch(owner peer.ID, gen uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.other != nil {
		return p.other
	}
	if p.removed[owner] {
		return fmt.Errorf("%w: %s", ErrOwnerRemoved, owner)
	}
	return nil
}

func (p *testPolicy) set(f func(p *testPolicy)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

type refusal struct {
	op     string
	remote peer.ID
	gen    uint64
	err    error
}

// testTracer records what the service reports.
type testTracer struct {
	mu       sync.Mutex
	refusals []refusal
	served   int
}

func (t *testTracer) Refused(op string, remote peer.ID, gen uint64, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.refusals = append(t.refusals, refusal{op, remote, gen, err})
}

func (t *testTracer) Served(string, peer.ID, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.served++
}

type testNode struct {
	t      testing.TB
	h      host.Host
	key    crypto.PrivKey
	id     peer.ID
	split  generations.SplitID // the split seal uses
	store  *Store
	path   string
	policy *testPolicy
	svc    *Service
	logs   *observer.ObservedLogs
	tracer *testTracer
}

// newTestNode starts a libp2p host on loopback with a real store and the
// share service. Its logs go to t.Log and to an observer the tests read.
func newTestNode(t testing.TB, cluster string, opts ...Option) *testNode {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(libp2p.Identity(key), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	store, path := openTestStore(t)
	obsCore, logs := observer.New(zapcore.DebugLevel)
	core := obsCore
	if tt, ok := t.(*testing.T); ok {
		core = zapcore.NewTee(obsCore, zaptest.NewLogger(tt, zaptest.Level(zapcore.InfoLevel)).Core())
	}
	logger := &logging.ZapEventLogger{SugaredLogger: *zap.New(core).Sugar()}
	n := &testNode{t: t, h: h, key: key, id: h.ID(), split: NewSplitID(), store: store, path: path,
		policy: newTestPolicy(1, 2, 3), logs: logs, tracer: &testTracer{}}
	opts = append([]Option{WithLogger(logger), WithTracer(n.tracer)}, opts...)
	n.svc, err = NewService(h, store, key, cluster, n.policy, opts...)
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: the service closes before the store
	// and the host.
	t.Cleanup(func() { n.svc.Close() })
	return n
}

func connect(t testing.TB, nodes ...*testNode) {
	t.Helper()
	for i, a := range nodes {
		for _, b := range nodes[i+1:] {
			if err := a.h.Connect(context.Background(), peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// seal seals share (see shareOf) as n's envelope for holder in gen, in
// n's split.
func (n *testNode) seal(holder peer.ID, gen uint64, share []byte) *Envelope {
	n.t.Helper()
	return n.sealSplit(holder, gen, share, n.split)
}

// sealSplit is seal for another split.
func (n *testNode) sealSplit(holder peer.ID, gen uint64, share []byte, split generations.SplitID) *Envelope {
	n.t.Helper()
	env, err := Seal(n.key, Binding{ClusterID: n.svc.clusterID, Owner: n.id, Generation: gen, Holder: holder, Split: split}, shareOf(share), nil)
	if err != nil {
		n.t.Fatal(err)
	}
	return env
}

// testSplit is the split of the envelopes that tests seal outside a
// testNode.
var testSplit = NewSplitID()

// shareOf returns s if it is shaped like a share Split makes, and
// otherwise a share-shaped plaintext (Seal accepts nothing else) that holds
// s, so tests can seal readable bytes.
func shareOf(s []byte) []byte {
	if len(s) >= 3 && s[0] == schemeShamir {
		return s
	}
	return append(append([]byte{schemeShamir}, s...), 0x01)
}

// refusedLog waits until n has logged a refusal of peer from with the
// given code, and returns the log line's fields.
func (n *testNode) refusedLog(from peer.ID, code pb.Response_Code) map[string]any {
	n.t.Helper()
	var fields map[string]any
	waitFor(n.t, fmt.Sprintf("a %s refusal of %s logged", code, from), func() bool {
		for _, e := range n.logs.FilterMessage("share request refused").All() {
			f := e.ContextMap()
			if f["owner"] == from.String() && f["reason"] == code.String() {
				fields = f
				return true
			}
		}
		return false
	})
	return fields
}

// waitFor polls cond until it holds, or fails the test after 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testkit.WaitFor(t, what, 10*time.Second, cond)
}

// rawStream opens a share stream from a to b without the client's checks.
func rawStream(t testing.TB, a, b *testNode) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := a.h.NewStream(ctx, b.id, ProtocolID)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	return s
}

// rawRoundTrip sends req from a to b and returns b's response.
func rawRoundTrip(t testing.TB, a, b *testNode, req *pb.Request) (*pb.Response, error) {
	t.Helper()
	s := rawStream(t, a, b)
	defer s.Close()
	if err := writeDelimited(s, req); err != nil {
		return nil, err
	}
	_ = s.CloseWrite()
	return decodeResponse(bufio.NewReader(s))
}

// logsContain reports whether any log line of n contains needle in its
// message or fields.
func logsContain(n *testNode, needle string) bool {
	for _, e := range n.logs.All() {
		if strings.Contains(e.Message, needle) || strings.Contains(fmt.Sprint(e.ContextMap()), needle) {
			return true
		}
	}
	return false
}

// writeDelimited writes one share message as the service does.
func writeDelimited(w io.Writer, m proto.Message) error {
	return wire.WriteMsg(w, m, MaxMessageSize)
}

// readDelimited reads one share message as the service does, with the
// holder's errors.
func readDelimited(r io.Reader, m wire.Versioned) error {
	if err := wire.ReadMsg(r, m, MaxMessageSize, WireVersion); err != nil {
		return requestError(err)
	}
	return nil
}

// decodeRequest reads and validates one Request as the holder does.
func decodeRequest(r io.Reader) (*request, error) {
	var m pb.Request
	if err := readDelimited(r, &m); err != nil {
		return nil, err
	}
	return validateRequest(&m)
}

// decodeResponse reads and checks one Response as the client does.
func decodeResponse(r io.Reader) (*pb.Response, error) {
	var m pb.Response
	if err := wire.ReadMsg(r, &m, MaxMessageSize, WireVersion); err != nil {
		return nil, responseError("holder", err)
	}
	if err := checkResponse(&m); err != nil {
		return nil, err
	}
	return &m, nil
}

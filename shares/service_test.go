package shares

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/p2pkey/p2pkey/shares/pb"
	"github.com/p2pkey/p2pkey/wire"
)

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// TestPushFetchUnlock runs the whole life of one generation on three real
// hosts: split, seal, push (including to self), receipts, fetch, open,
// combine.
func TestPushFetchUnlock(t *testing.T) {
	nodes := []*testNode{newTestNode(t, testCluster), newTestNode(t, testCluster), newTestNode(t, testCluster)}
	connect(t, nodes...)
	owner := nodes[0]
	k := randomKey(t)
	parts, err := Split(k, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	for i, holder := range nodes {
		env := owner.seal(holder.id, 1, parts[i])
		r, err := owner.svc.Push(ctx(t), holder.id, env)
		if err != nil {
			t.Fatalf("push to %d: %v", i, err)
		}
		if r.Generation != 1 || r.Owner != owner.id || r.Holder != holder.id || r.Digest != Digest(env) || r.Split != owner.split {
			t.Fatalf("receipt %d: %+v", i, r)
		}
		if err := VerifyReceipt(testCluster, 1, owner.id, holder.id, owner.split, Digest(env), r.Signature); err != nil {
			t.Fatalf("receipt %d: %v", i, err)
		}
		if err := VerifyReceipt(testCluster, 1, owner.id, holder.id, NewSplitID(), Digest(env), r.Signature); !errors.Is(err, ErrBadReceipt) {
			t.Fatalf("receipt %d verifies for another split: %v", i, err)
		}
		stored, err := holder.store.Get(1, owner.id)
		if err != nil || Digest(stored) != Digest(env) {
			t.Fatalf("holder %d store: %v, %v", i, stored, err)
		}
	}
	// Unlock from two holders other than itself.
	var got [][]byte
	for _, holder := range nodes[1:] {
		env, err := owner.svc.Fetch(ctx(t), holder.id, 1)
		if err != nil {
			t.Fatal(err)
		}
		share, b, err := Open(owner.key, env)
		if err != nil {
			t.Fatal(err)
		}
		if b.Holder != holder.id || b.Generation != 1 || b.Split != owner.split {
			t.Fatalf("binding %+v", b)
		}
		got = append(got, share)
	}
	kk, err := Combine(got)
	if err != nil || !bytes.Equal(kk, k) {
		t.Fatalf("combined %x, %v", kk, err)
	}
	// The self-addressed envelope comes from the local store.
	self, err := owner.svc.Fetch(ctx(t), owner.id, 1)
	if err != nil {
		t.Fatal(err)
	}
	if share, _, err := Open(owner.key, self); err != nil || !bytes.Equal(share, parts[0]) {
		t.Fatalf("self envelope: %v", err)
	}
	// A holder never sees plaintext: its store and its logs hold neither
	// the share nor its hex.
	for i, n := range nodes {
		for j, p := range parts {
			if logsContain(n, hex.EncodeToString(p)) || logsContain(n, string(p)) {
				t.Fatalf("node %d logged share %d", i, j)
			}
		}
	}
}

// TestStoreHoldsNoPlaintext searches the bbolt file's bytes for the shares.
func TestStoreHoldsNoPlaintext(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	k := randomKey(t)
	parts, _ := Split(k, 2, 2)
	if _, err := a.svc.Push(ctx(t), a.id, a.seal(a.id, 1, parts[0])); err != nil {
		t.Fatal(err)
	}
	if _, err := a.svc.Push(ctx(t), b.id, a.seal(b.id, 1, parts[1])); err != nil {
		t.Fatal(err)
	}
	a.svc.Close()
	b.svc.Close()
	a.store.Close()
	b.store.Close()
	for _, n := range []*testNode{a, b} {
		raw, err := os.ReadFile(n.path)
		if err != nil {
			t.Fatal(err)
		}
		secrets := [][]byte{k, k[:16], k[16:]}
		for _, p := range parts {
			secrets = append(secrets, p, p[1:17])
		}
		for _, s := range secrets {
			for _, form := range [][]byte{s, []byte(hex.EncodeToString(s)), bytes.ToUpper([]byte(hex.EncodeToString(s)))} {
				if bytes.Contains(raw, form) {
					t.Fatalf("%s contains plaintext %x", n.path, s)
				}
			}
		}
	}
}

func TestPushIdempotentAndDuplicate(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	env := a.seal(b.id, 1, []byte("first"))
	r1, err := a.svc.Push(ctx(t), b.id, env)
	if err != nil {
		t.Fatal(err)
	}
	// A retry of the same bytes gets the same receipt.
	r2, err := a.svc.Push(ctx(t), b.id, env)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if !bytes.Equal(r1.Signature, r2.Signature) || r1.Digest != r2.Digest {
		t.Fatal("a retried push got a different receipt")
	}
	// A different envelope for the same (generation, owner, holder) is
	// refused, and the first one stays.
	_, err = a.svc.Push(ctx(t), b.id, a.seal(b.id, 1, []byte("second")))
	if !errors.Is(err, ErrDuplicate) {
		t.Fatalf("second envelope: %v, want ErrDuplicate", err)
	}
	b.refusedLog(a.id, pb.Response_DUPLICATE)
	if got, _ := b.store.Get(1, a.id); Digest(got) != Digest(env) {
		t.Fatal("the first envelope was replaced")
	}
	// Same for the self-addressed envelope.
	self := a.seal(a.id, 1, []byte("mine"))
	if _, err := a.svc.Push(ctx(t), a.id, self); err != nil {
		t.Fatal(err)
	}
	if _, err := a.svc.Push(ctx(t), a.id, a.seal(a.id, 1, []byte("other"))); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("second self envelope: %v, want ErrDuplicate", err)
	}
}

func TestFetchByNonOwner(t *testing.T) {
	a, b, c := newTestNode(t, testCluster), newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b, c)
	env := a.seal(b.id, 1, []byte("a's share"))
	if _, err := a.svc.Push(ctx(t), b.id, env); err != nil {
		t.Fatal(err)
	}
	// c asks b for "its" envelope of generation 1: b looks it up under the
	// authenticated c, and there is none.
	if _, err := c.svc.Fetch(ctx(t), b.id, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("non-owner fetch: %v, want ErrNotFound", err)
	}
	b.refusedLog(c.id, pb.Response_NOT_FOUND)
	// c cannot push a's envelope as if it were a's either.
	raw, _ := env.MarshalBinary()
	resp, err := rawRoundTrip(t, c, b, pushRequest(testCluster, 1, raw))
	if err != nil || resp.GetCode() != pb.Response_FORBIDDEN {
		t.Fatalf("push of another owner's envelope: %v, %v", resp, err)
	}
	b.refusedLog(c.id, pb.Response_FORBIDDEN)
}

func TestFetchRemovedOwner(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	if _, err := a.svc.Push(ctx(t), b.id, a.seal(b.id, 1, []byte("share"))); err != nil {
		t.Fatal(err)
	}
	b.policy.set(func(p *testPolicy) { p.removed[a.id] = true })
	if _, err := a.svc.Fetch(ctx(t), b.id, 1); !errors.Is(err, ErrOwnerRemoved) {
		t.Fatalf("fetch by a removed owner: %v, want ErrOwnerRemoved", err)
	}
	b.refusedLog(a.id, pb.Response_OWNER_REMOVED)

	// A policy refusal without one of our sentinels is ErrForbidden.
	b.policy.set(func(p *testPolicy) { p.other = errors.New("not a member") })
	if _, err := a.svc.Fetch(ctx(t), b.id, 1); !errors.Is(err, ErrForbidden) {
		t.Fatalf("fetch refused by policy: %v, want ErrForbidden", err)
	}
	b.refusedLog(a.id, pb.Response_FORBIDDEN)
}

func TestPushGenerationNotOpen(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	_, err := a.svc.Push(ctx(t), b.id, a.seal(b.id, 42, []byte("share")))
	if !errors.Is(err, ErrGenerationNotOpen) {
		t.Fatalf("push into a closed generation: %v, want ErrGenerationNotOpen", err)
	}
	b.refusedLog(a.id, pb.Response_GENERATION_NOT_OPEN)
	if _, err := b.store.Get(42, a.id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refused envelope stored: %v", err)
	}
}

func TestPushBindingChecks(t *testing.T) {
	a, b, c := newTestNode(t, testCluster), newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b, c)
	// Addressed to c, pushed to b.
	toC, _ := a.seal(c.id, 1, []byte("share")).MarshalBinary()
	if resp, err := rawRoundTrip(t, a, b, pushRequest(testCluster, 1, toC)); err != nil || resp.GetCode() != pb.Response_FORBIDDEN {
		t.Fatalf("envelope for another holder: %v, %v", resp, err)
	}
	b.refusedLog(a.id, pb.Response_FORBIDDEN)
	// Request generation differs from the envelope's.
	toB, _ := a.seal(b.id, 1, []byte("share")).MarshalBinary()
	if resp, err := rawRoundTrip(t, a, b, pushRequest(testCluster, 2, toB)); err != nil || resp.GetCode() != pb.Response_BAD_REQUEST {
		t.Fatalf("generation mismatch: %v, %v", resp, err)
	}
	b.refusedLog(a.id, pb.Response_BAD_REQUEST)
	// The client refuses to send an envelope to the wrong holder.
	if _, err := a.svc.Push(ctx(t), b.id, a.seal(c.id, 1, []byte("share"))); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("client push to the wrong holder: %v", err)
	}
	if keys, _ := b.store.List(); len(keys) != 0 {
		t.Fatalf("refused envelopes stored: %v", keys)
	}
}

func TestWrongCluster(t *testing.T) {
	a := newTestNode(t, "ffffffffffffffffffffffffffffffff")
	b := newTestNode(t, testCluster)
	connect(t, a, b)
	// a's client sees b answer for another cluster.
	if _, err := a.svc.Push(ctx(t), b.id, a.seal(b.id, 1, []byte("share"))); !errors.Is(err, ErrWrongCluster) {
		t.Fatalf("push across clusters: %v, want ErrWrongCluster", err)
	}
	b.refusedLog(a.id, pb.Response_WRONG_CLUSTER)
	if _, err := a.svc.Fetch(ctx(t), b.id, 1); !errors.Is(err, ErrWrongCluster) {
		t.Fatalf("fetch across clusters: %v, want ErrWrongCluster", err)
	}
	// An envelope for another cluster inside a request for this one.
	c := newTestNode(t, testCluster)
	connect(t, c, b)
	other, err := Seal(c.key, Binding{ClusterID: "ffffffffffffffffffffffffffffffff", Owner: c.id, Generation: 1, Holder: b.id, Split: c.split}, shareOf([]byte("s")), nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := other.MarshalBinary()
	resp, err := rawRoundTrip(t, c, b, pushRequest(testCluster, 1, raw))
	if err != nil || resp.GetCode() != pb.Response_WRONG_CLUSTER {
		t.Fatalf("envelope of another cluster: %v, %v", resp, err)
	}
	b.refusedLog(c.id, pb.Response_WRONG_CLUSTER)
}

// expectReset reads what is left of s; it must end in an error (the reset),
// not a response.
func expectReset(t *testing.T, s io.Reader) {
	t.Helper()
	if _, err := io.ReadAll(s); err == nil {
		t.Fatal("stream closed cleanly, want a reset")
	}
}

func TestOversizedMessage(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	for _, size := range []uint64{MaxMessageSize + 1, 1 << 30, 1<<64 - 1} {
		s := rawStream(t, a, b)
		frame := protowire.AppendVarint(nil, size)
		frame = append(frame, bytes.Repeat([]byte{0x0a}, 64)...)
		if _, err := s.Write(frame); err != nil {
			t.Fatal(err)
		}
		expectReset(t, s)
	}
	f := b.refusedLog(a.id, pb.Response_TOO_LARGE)
	if f["op"] != "unknown" {
		t.Fatalf("log fields %v", f)
	}
	// An envelope over MaxEnvelopeSize inside a small enough message.
	big := make([]byte, MaxEnvelopeSize+1)
	if resp, err := rawRoundTrip(t, a, b, pushRequest(testCluster, 1, big)); err == nil {
		t.Fatalf("oversized envelope answered %v", resp)
	}
	// The holder is healthy afterwards.
	if _, err := a.svc.Push(ctx(t), b.id, a.seal(b.id, 1, []byte("share"))); err != nil {
		t.Fatalf("push after oversized messages: %v", err)
	}
	if _, err := a.svc.Fetch(ctx(t), b.id, 1); err != nil {
		t.Fatalf("fetch after oversized messages: %v", err)
	}
}

func TestGarbage(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	garbage := [][]byte{
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, // varint overflow
		{0x05, 0x0a, 0xff},             // truncated message
		{0x03, 0xff, 0xff, 0xff},       // invalid protobuf
		[]byte("\x05hello"),            // decodes, but no version or body
		{0x02, 0x08, 0x01},             // version 1, no body
		{0x04, 0x08, 0x02, 0x1a, 0x00}, // version 2
	}
	for i, g := range garbage {
		s := rawStream(t, a, b)
		if _, err := s.Write(g); err != nil {
			t.Fatal(err)
		}
		_ = s.CloseWrite()
		if _, err := io.ReadAll(s); err == nil {
			t.Fatalf("garbage %d: stream closed cleanly", i)
		}
	}
	// An empty stream.
	s := rawStream(t, a, b)
	_ = s.CloseWrite()
	expectReset(t, s)
	b.refusedLog(a.id, pb.Response_BAD_REQUEST)
	waitFor(t, "every garbage stream traced", func() bool {
		b.tracer.mu.Lock()
		defer b.tracer.mu.Unlock()
		return len(b.tracer.refusals) >= len(garbage)+1
	})
	if _, err := a.svc.Push(ctx(t), b.id, a.seal(b.id, 1, []byte("share"))); err != nil {
		t.Fatalf("push after garbage: %v", err)
	}
}

func TestFetchRateLimit(t *testing.T) {
	a, c := newTestNode(t, testCluster), newTestNode(t, testCluster)
	b := newTestNode(t, testCluster, WithFetchRateLimit(rate.Every(time.Hour), 3))
	connect(t, a, b, c)
	if _, err := a.svc.Push(ctx(t), b.id, a.seal(b.id, 1, []byte("share"))); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := a.svc.Fetch(ctx(t), b.id, 1); err != nil {
			t.Fatalf("fetch %d: %v", i, err)
		}
	}
	if _, err := a.svc.Fetch(ctx(t), b.id, 1); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("fetch over the limit: %v, want ErrRateLimited", err)
	}
	b.refusedLog(a.id, pb.Response_RATE_LIMITED)
	// The bucket is per peer: c is not limited by a's fetches.
	if _, err := c.svc.Fetch(ctx(t), b.id, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("other peer: %v, want ErrNotFound", err)
	}
	// Pushes are not rate limited.
	if _, err := a.svc.Push(ctx(t), b.id, a.seal(b.id, 2, []byte("share"))); err != nil {
		t.Fatal(err)
	}
}

func TestFetchChecksBinding(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	// b stores, out of band, a's envelope of generation 2 under generation
	// 1's key: the store refuses.
	if err := b.store.Put(1, a.id, a.seal(b.id, 2, []byte("s"))); !errors.Is(err, ErrInvalidEnvelope) {
		t.Fatalf("store accepted a mismatched key: %v", err)
	}
	// a's own fetch from b of a generation b never got.
	if _, err := a.svc.Fetch(ctx(t), b.id, 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fetch of a missing generation: %v", err)
	}
}

func TestClientRefusesBadResponses(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	// b's service is replaced by a liar that answers with reply.
	b.svc.Close()
	var reply func(req *pb.Request) []byte
	b.h.SetStreamHandler(ProtocolID, func(s network.Stream) {
		defer s.Close()
		var req pb.Request
		if err := readDelimited(bufio.NewReader(s), &req); err != nil {
			s.Reset()
			return
		}
		_, _ = s.Write(reply(&req))
	})
	frame := func(m *pb.Response) []byte {
		var buf bytes.Buffer
		_ = writeDelimited(&buf, m)
		return buf.Bytes()
	}
	env := a.seal(b.id, 1, []byte("share"))
	d := Digest(env)
	liarKey, _ := newKey(t)
	wrongSig, _ := SignReceipt(liarKey, testCluster, 1, a.id, a.split, d)
	// b's own key, but over another split than the envelope's.
	splitSig, err := SignReceipt(b.key, testCluster, 1, a.id, NewSplitID(), d)
	if err != nil {
		t.Fatal(err)
	}
	otherEnv, _ := b.seal2(a, 2).MarshalBinary()

	for name, c := range map[string]struct {
		reply func(*pb.Request) []byte
		fetch bool
		want  error
	}{
		"receipt signed by another key": {func(*pb.Request) []byte {
			return frame(&pb.Response{Version: 1, ClusterId: testCluster, Code: pb.Response_OK, Digest: d[:], ReceiptSignature: wrongSig})
		}, false, ErrBadResponse},
		"receipt for another split": {func(*pb.Request) []byte {
			return frame(&pb.Response{Version: 1, ClusterId: testCluster, Code: pb.Response_OK, Digest: d[:], ReceiptSignature: splitSig})
		}, false, ErrBadResponse},
		"receipt for another digest": {func(*pb.Request) []byte {
			return frame(&pb.Response{Version: 1, ClusterId: testCluster, Code: pb.Response_OK, Digest: make([]byte, 32), ReceiptSignature: wrongSig})
		}, false, ErrBadResponse},
		"no code": {func(*pb.Request) []byte {
			return frame(&pb.Response{Version: 1, ClusterId: testCluster})
		}, false, ErrBadResponse},
		"unknown code": {func(*pb.Request) []byte {
			return frame(&pb.Response{Version: 1, ClusterId: testCluster, Code: 99})
		}, false, ErrBadResponse},
		"wrong version": {func(*pb.Request) []byte {
			return frame(&pb.Response{Version: 2, ClusterId: testCluster, Code: pb.Response_OK})
		}, false, ErrBadResponse},
		"oversized response": {func(*pb.Request) []byte {
			return protowire.AppendVarint(nil, 1<<40)
		}, true, ErrTooLarge},
		"garbage": {func(*pb.Request) []byte { return []byte{0x03, 0xff, 0xff, 0xff} }, true, ErrBadResponse},
		"envelope bound to another generation": {func(*pb.Request) []byte {
			return frame(&pb.Response{Version: 1, ClusterId: testCluster, Code: pb.Response_OK, Envelope: otherEnv})
		}, true, ErrBadResponse},
		"envelope not an envelope": {func(*pb.Request) []byte {
			return frame(&pb.Response{Version: 1, ClusterId: testCluster, Code: pb.Response_OK, Envelope: []byte("nope")})
		}, true, ErrBadResponse},
	} {
		reply = c.reply
		var err error
		if c.fetch {
			_, err = a.svc.Fetch(ctx(t), b.id, 1)
		} else {
			_, err = a.svc.Push(ctx(t), b.id, env)
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	// A holder that closes without answering gave no response: that is a
	// failed stream, not a bad response (issue 14: a failure to hear is
	// never a malformed answer).
	reply = func(*pb.Request) []byte { return nil }
	_, err = a.svc.Fetch(ctx(t), b.id, 1)
	if !errors.Is(err, wire.ErrIncomplete) || errors.Is(err, ErrBadResponse) {
		t.Errorf("no answer: %v, want wire.ErrIncomplete and not ErrBadResponse", err)
	}
}

// seal2 returns an envelope of owner o, held by n, for gen: as n would
// return it if it lied about the generation.
func (n *testNode) seal2(o *testNode, gen uint64) *Envelope {
	return o.seal(n.id, gen, []byte("other"))
}

func TestServiceClose(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	// A stream that never sends holds a handler until Close resets it.
	s := rawStream(t, a, b)
	if _, err := s.Write([]byte{0x10}); err != nil { // a length, then nothing
		t.Fatal(err)
	}
	waitFor(t, "the handler to start", func() bool {
		b.svc.mu.Lock()
		defer b.svc.mu.Unlock()
		return len(b.svc.streams) == 1
	})
	b.svc.Close()
	expectReset(t, s)
	if _, err := a.svc.Push(ctx(t), b.id, a.seal(b.id, 1, []byte("share"))); err == nil {
		t.Fatal("push to a closed service succeeded")
	}
	b.svc.Close() // idempotent
}

// TestConcurrentPushesOneWins pushes different envelopes for the same
// (generation, owner, holder) at once: exactly one is stored and receipted.
func TestConcurrentPushesOneWins(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	const n = 8
	envs := make([]*Envelope, n)
	for i := range envs {
		envs[i] = a.seal(b.id, 1, []byte{byte(i) + 1})
	}
	type result struct {
		i   int
		r   *Receipt
		err error
	}
	results := make(chan result, n)
	for i := range envs {
		go func() {
			r, err := a.svc.Push(ctx(t), b.id, envs[i])
			results <- result{i, r, err}
		}()
	}
	winner := -1
	for range n {
		res := <-results
		switch {
		case res.err == nil:
			if winner >= 0 {
				t.Fatalf("pushes %d and %d both accepted", winner, res.i)
			}
			winner = res.i
		case !errors.Is(res.err, ErrDuplicate):
			t.Fatalf("push %d: %v", res.i, res.err)
		}
	}
	if winner < 0 {
		t.Fatal("no push accepted")
	}
	got, err := b.store.Get(1, a.id)
	if err != nil || Digest(got) != Digest(envs[winner]) {
		t.Fatalf("stored envelope is not the receipted one: %v", err)
	}
}

// TestHandlerDeadline: a peer that opens a stream and sends nothing is
// reset when the handler's deadline passes, and the refusal is logged.
func TestHandlerDeadline(t *testing.T) {
	a := newTestNode(t, testCluster)
	b := newTestNode(t, testCluster, WithTimeout(200*time.Millisecond))
	connect(t, a, b)
	s := rawStream(t, a, b)
	if _, err := s.Write([]byte{0x10, 0x08}); err != nil { // a length, then too little
		t.Fatal(err)
	}
	expectReset(t, s)
	b.refusedLog(a.id, pb.Response_BAD_REQUEST)
	if _, err := a.svc.Push(ctx(t), b.id, a.seal(b.id, 1, []byte("share"))); err != nil {
		t.Fatalf("push after a stalled stream: %v", err)
	}
}

func TestNewServiceChecks(t *testing.T) {
	a := newTestNode(t, testCluster)
	otherKey, _ := newKey(t)
	if _, err := NewService(a.h, a.store, otherKey, testCluster, a.policy); err == nil {
		t.Error("accepted a key that is not the host's")
	}
	if _, err := NewService(a.h, a.store, a.key, "", a.policy); err == nil {
		t.Error("accepted an empty cluster ID")
	}
	if _, err := NewService(a.h, a.store, a.key, testCluster, nil); err == nil {
		t.Error("accepted a nil policy")
	}
	if _, err := NewService(a.h, a.store, a.key, testCluster, a.policy, WithTimeout(0)); err == nil {
		t.Error("accepted a zero timeout")
	}
	if _, err := NewService(a.h, a.store, a.key, testCluster, a.policy, WithFetchRateLimit(0, 1)); err == nil {
		t.Error("accepted a zero fetch rate")
	}
}

// TestCloseResetsOutgoing: Close ends a Fetch waiting on a holder that
// never answers, at once rather than at the exchange's deadline, and
// Fetch after Close is ErrClosed.
func TestCloseResetsOutgoing(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	b.svc.Close()
	entered, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	b.h.SetStreamHandler(ProtocolID, func(s network.Stream) {
		close(entered)
		<-release
		s.Reset()
	})
	done := make(chan error, 1)
	go func() {
		_, err := a.svc.Fetch(context.Background(), b.id, 1)
		done <- err
	}()
	<-entered
	start := time.Now()
	a.svc.Close()
	err := <-done
	if took := time.Since(start); took > DefaultTimeout/2 {
		t.Fatalf("Fetch returned %v after Close", took)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Fetch ended by Close: %v, want context.Canceled", err)
	}
	if _, err := a.svc.Fetch(context.Background(), b.id, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Fetch after Close: %v, want ErrClosed", err)
	}
}

package shares

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/internal/testkit"
	"github.com/p2pkey/p2pkey/shares/pb"
)

// splitCall is one question to a SplitDecision.
type splitCall struct {
	owner          peer.ID
	gen            uint64
	stored, pushed generations.SplitID
}

// testDecision records its calls and answers with answer.
type testDecision struct {
	mu     sync.Mutex
	calls  []splitCall
	answer error
}

func (d *testDecision) decide(owner peer.ID, gen uint64, stored, pushed generations.SplitID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, splitCall{owner, gen, stored, pushed})
	return d.answer
}

func (d *testDecision) set(answer error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.answer = answer
}

func (d *testDecision) log() []splitCall {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]splitCall(nil), d.calls...)
}

// TestPushOtherSplitRefusedByDefault: a holder keeps the first split it
// stored for (generation, owner); a push of another split is a duplicate.
func TestPushOtherSplitRefusedByDefault(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	first := a.seal(b.id, 1, []byte("first split"))
	if _, err := a.svc.Push(ctx(t), b.id, first); err != nil {
		t.Fatal(err)
	}
	second := a.sealSplit(b.id, 1, []byte("second split"), NewSplitID())
	_, err := a.svc.Push(ctx(t), b.id, second)
	if !errors.Is(err, ErrDuplicate) {
		t.Fatalf("push of another split: %v, want ErrDuplicate", err)
	}
	if !testkit.ErrorSays(err, fmt.Sprintf("%x", a.split[:])) {
		t.Errorf("the refusal does not name the stored split: %v", err)
	}
	b.refusedLog(a.id, pb.Response_DUPLICATE)
	got, err := b.store.Get(1, a.id)
	if err != nil || got.Binding.Split != a.split || Digest(got) != Digest(first) {
		t.Fatalf("stored envelope after the refusal: %v", err)
	}
}

// TestPushOtherSplitDecided: the SplitDecision is told the stored and the
// pushed split, and its answer replaces or refuses.
func TestPushOtherSplitDecided(t *testing.T) {
	d := &testDecision{}
	a := newTestNode(t, testCluster, WithSplitDecision(d.decide))
	b := newTestNode(t, testCluster, WithSplitDecision(d.decide))
	connect(t, a, b)
	first := a.seal(b.id, 1, []byte("first split"))
	if _, err := a.svc.Push(ctx(t), b.id, first); err != nil {
		t.Fatal(err)
	}
	// Same split, other bytes: a duplicate, and nobody is asked.
	if _, err := a.svc.Push(ctx(t), b.id, a.seal(b.id, 1, []byte("same split"))); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("another envelope of the same split: %v", err)
	}
	if calls := d.log(); len(calls) != 0 {
		t.Fatalf("the decision was asked about one split: %+v", calls)
	}

	// Refused, with the decision's reason and code.
	sp2 := NewSplitID()
	second := a.sealSplit(b.id, 1, []byte("second split"), sp2)
	d.set(errors.New("the ledger counts split 1"))
	_, err := a.svc.Push(ctx(t), b.id, second)
	if !errors.Is(err, ErrDuplicate) || !testkit.ErrorSays(err, "the ledger counts split 1") {
		t.Fatalf("refused by the decision: %v", err)
	}
	d.set(fmt.Errorf("%w: gone", ErrOwnerRemoved))
	if _, err := a.svc.Push(ctx(t), b.id, second); !errors.Is(err, ErrOwnerRemoved) {
		t.Fatalf("refused by the decision with a wire sentinel: %v", err)
	}
	calls := d.log()
	if len(calls) != 2 || calls[0] != (splitCall{a.id, 1, a.split, sp2}) {
		t.Fatalf("decision calls: %+v", calls)
	}
	if got, _ := b.store.Get(1, a.id); got.Binding.Split != a.split {
		t.Fatal("a refused split replaced the stored one")
	}

	// Replaced: the receipt is for the new split, the holder serves it,
	// and the old envelope is gone from the holder's disk.
	d.set(nil)
	r, err := a.svc.Push(ctx(t), b.id, second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Split != sp2 || r.Digest != Digest(second) {
		t.Fatalf("receipt of the replacement: %+v", r)
	}
	if err := VerifyReceipt(testCluster, 1, a.id, b.id, sp2, r.Digest, r.Signature); err != nil {
		t.Fatal(err)
	}
	got, err := a.svc.Fetch(ctx(t), b.id, 1)
	if err != nil || got.Binding.Split != sp2 || Digest(got) != Digest(second) {
		t.Fatalf("fetch after the replacement: %v", err)
	}
	// The old envelope's deletion is recorded, naming its split.
	if st := b.svc.Stats(); st.Deleted[DeletedReplaced] != 1 {
		t.Fatalf("replacement not counted as a deletion: %+v", st)
	}
	del := b.logs.FilterMessage("share envelope deleted").All()
	if len(del) != 1 || del[0].ContextMap()["reason"] != DeletedReplaced || del[0].ContextMap()["split"] != fmt.Sprintf("%x", a.split[:]) {
		t.Fatalf("replacement logged as %+v", del)
	}
	// A retry of the replacement is idempotent and asks nobody.
	n := len(d.log())
	if r2, err := a.svc.Push(ctx(t), b.id, second); err != nil || r2.Digest != r.Digest {
		t.Fatalf("retried replacement: %v", err)
	}
	// The first split cannot come back without the decision either.
	d.set(errors.New("no going back"))
	if _, err := a.svc.Push(ctx(t), b.id, first); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("push of the first split again: %v", err)
	}
	if calls := d.log(); len(calls) != n+1 || calls[n] != (splitCall{a.id, 1, sp2, a.split}) {
		t.Fatalf("decision calls: %+v", calls[n:])
	}

	// Pushing to itself goes through the decision too.
	d.set(nil)
	if _, err := a.svc.Push(ctx(t), a.id, a.seal(a.id, 2, []byte("self 1"))); err != nil {
		t.Fatal(err)
	}
	self2 := a.sealSplit(a.id, 2, []byte("self 2"), sp2)
	if r, err := a.svc.Push(ctx(t), a.id, self2); err != nil || r.Split != sp2 {
		t.Fatalf("self push of another split: %v", err)
	}
	if calls := d.log(); calls[len(calls)-1] != (splitCall{a.id, 2, a.split, sp2}) {
		t.Fatalf("self push: decision calls %+v", calls)
	}

	b.svc.Close()
	b.store.Close()
	if tr := traces(t, filepath.Dir(b.path), map[string]*Envelope{"replaced": first}); len(tr) > 0 {
		t.Fatalf("the replaced envelope is still on the holder's disk: %v", tr)
	}
	if tr := traces(t, filepath.Dir(b.path), map[string]*Envelope{"live": second}); len(tr) != 1 {
		t.Fatal("the replacement is not on the holder's disk")
	}
}

func TestZeroSplitRefused(t *testing.T) {
	a, b := newTestNode(t, testCluster), newTestNode(t, testCluster)
	connect(t, a, b)
	if _, err := NewService(a.h, a.store, a.key, testCluster, a.policy, WithSplitDecision(nil)); err == nil {
		t.Error("accepted a nil split decision")
	}
	// An envelope with a zero split cannot be made, encoded or pushed.
	env := a.seal(b.id, 1, []byte("share"))
	env.Binding.Split = generations.SplitID{}
	if _, err := env.MarshalBinary(); !errors.Is(err, ErrZeroSplit) {
		t.Fatalf("encoding with a zero split: %v", err)
	}
	if _, err := a.svc.Push(ctx(t), b.id, env); !errors.Is(err, ErrZeroSplit) {
		t.Fatalf("push with a zero split: %v", err)
	}
	if err := b.store.Put(1, a.id, env); !errors.Is(err, ErrZeroSplit) {
		t.Fatalf("store with a zero split: %v", err)
	}
	// A hand-made push with a zero split is refused by the holder.
	raw, _ := a.seal(b.id, 1, []byte("share")).MarshalBinary()
	m := &pb.Envelope{}
	if err := proto.Unmarshal(raw, m); err != nil {
		t.Fatal(err)
	}
	m.Split = make([]byte, generations.SplitSize)
	bad, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rawRoundTrip(t, a, b, pushRequest(testCluster, 1, bad))
	if err != nil || resp.GetCode() != pb.Response_BAD_REQUEST || !strings.Contains(resp.GetMessage(), "zero split") {
		t.Fatalf("push of a zero split: %v, %v", resp, err)
	}
}

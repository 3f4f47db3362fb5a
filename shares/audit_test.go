package shares

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/internal/testkit"
	"go.uber.org/zap/zapcore"
)

func readAll(t *testing.T, path string) []Event {
	t.Helper()
	var out []Event
	if err := ReadAuditLog(path, func(e Event) error { out = append(out, e); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func testEvent(gen uint64) Event {
	// A fixed time, so every record has the same length.
	return Event{Time: time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC), Kind: EventServed, Op: opFetch, Owner: testPeer, Holder: testPeer,
		Generation: gen, Split: testSplit, Remote: testPeer}
}

// testPeer is a fixed, valid peer ID.
var testPeer = func() peer.ID {
	id, err := peer.Decode("12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf")
	if err != nil {
		panic(err)
	}
	return id
}()

// TestAuditLogRotation: past MaxSize the log rotates, keeps Keep old
// files, drops older ones, and reads back oldest first with no gap.
func TestAuditLogRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	line, _ := testEvent(1000).MarshalJSON()
	perFile := 4
	a, err := OpenAuditLog(path, AuditOptions{MaxSize: int64(perFile * (len(line) + 1)), Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	const total = 30
	for g := range uint64(total) {
		if err := a.Append(testEvent(1000 + g)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Append(testEvent(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	for _, name := range []string{path, path + ".1", path + ".2"} {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, want 0600", name, fi.Mode().Perm())
		}
		if fi.Size() > int64(perFile*(len(line)+1)) {
			t.Fatalf("%s: %d bytes, over the limit", name, fi.Size())
		}
	}
	if _, err := os.Stat(path + ".3"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a third rotated file: %v", err)
	}
	got := readAll(t, path)
	// 30 records, 4 a file: the current file holds 2, each kept one 4.
	if len(got) != 10 {
		t.Fatalf("read %d records, want 10", len(got))
	}
	for i, e := range got {
		if want := uint64(1000 + total - 10 + i); e.Generation != want {
			t.Fatalf("record %d: generation %d, want %d (order or gap)", i, e.Generation, want)
		}
		if e.Owner != testPeer || e.Split != testSplit || e.Kind != EventServed || e.Op != opFetch {
			t.Fatalf("record %d does not round-trip: %+v", i, e)
		}
	}

	// Reopening appends to the current file and tightens its mode.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	a, err = OpenAuditLog(path, AuditOptions{MaxSize: 1 << 20, Keep: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Append(testEvent(5000)); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("reopened file has mode %v", fi.Mode().Perm())
	}
	if got := readAll(t, path); len(got) != 11 || got[10].Generation != 5000 {
		t.Fatalf("after reopening: %d records", len(got))
	}
}

// TestAuditLogReadPartial: an unterminated last line (a write cut short)
// is skipped; a malformed complete line is an error naming file and line.
func TestAuditLogReadPartial(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	if got := readAll(t, path); len(got) != 0 {
		t.Fatalf("missing log: %d records", len(got))
	}
	a, err := OpenAuditLog(path, AuditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a.Append(testEvent(1))
	a.Close()
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"time":"2026-01-01T00:00:00Z","event":"ser`)
	f.Close()
	if got := readAll(t, path); len(got) != 1 {
		t.Fatalf("read %d records, want 1 (the partial line skipped)", len(got))
	}
	os.WriteFile(path+".1", []byte("{}\nnot json\n"), 0o600)
	err = ReadAuditLog(path, func(Event) error { return nil })
	if err == nil || !testkit.ErrorSays(err, "audit.jsonl.1 line 2") {
		t.Fatalf("malformed line: %v", err)
	}
}

// TestAuditLogConcurrentAppends: appends from many goroutines, across
// rotations, each land whole, exactly once.
func TestAuditLogConcurrentAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	a, err := OpenAuditLog(path, AuditOptions{MaxSize: 16 << 10, Keep: 100})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 100
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if err := a.Append(testEvent(uint64(w*each + i))); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	a.Close()
	rotated, _ := filepath.Glob(path + ".*")
	if len(rotated) < 3 {
		t.Fatalf("only %d rotations: the test does not cover appends across rotation", len(rotated))
	}
	seen := map[uint64]bool{}
	last := map[int]int{}
	for _, e := range readAll(t, path) {
		if seen[e.Generation] {
			t.Fatalf("record %d twice", e.Generation)
		}
		seen[e.Generation] = true
		// Each writer's records come back in its own order.
		w, i := int(e.Generation)/each, int(e.Generation)%each
		if p, ok := last[w]; ok && p >= i {
			t.Fatalf("writer %d: record %d after %d", w, i, p)
		}
		last[w] = i
	}
	if len(seen) != writers*each {
		t.Fatalf("read %d records, want %d", len(seen), writers*each)
	}
}

// testObserver records what the service reports.
type testObserver struct {
	mu       sync.Mutex
	events   []Event
	requests []string // "op reason"
}

func (o *testObserver) HolderEvent(e Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, e)
}

func (o *testObserver) OwnerRequest(op string, _ peer.ID, took time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if took <= 0 {
		panic("non-positive request duration")
	}
	o.requests = append(o.requests, op+" "+Reason(err))
}

// TestAuditTwoHosts: on real hosts, a holder with an audit log records the
// push it stores, the fetch it serves, the fetch it refuses (with the
// reason), and the envelope it deletes; logs each at INFO; counts them in
// Stats; and writes no share or envelope bytes to the file.
func TestAuditTwoHosts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	audit, err := OpenAuditLog(path, AuditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { audit.Close() })
	holderObs, ownerObs := &testObserver{}, &testObserver{}
	a := newTestNode(t, testCluster, WithObserver(ownerObs))
	b := newTestNode(t, testCluster, WithAuditLog(audit), WithObserver(holderObs))
	connect(t, a, b)

	parts, err := Split(randomKey(t), 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	share := parts[1]
	env := a.seal(b.id, 2, share)
	raw, _ := env.MarshalBinary()
	if _, err := a.svc.Push(ctx(t), b.id, env); err != nil {
		t.Fatal(err)
	}
	if _, err := a.svc.Fetch(ctx(t), b.id, 2); err != nil {
		t.Fatal(err)
	}
	b.policy.set(func(p *testPolicy) { p.removed[a.id] = true })
	if _, err := a.svc.Fetch(ctx(t), b.id, 2); !errors.Is(err, ErrOwnerRemoved) {
		t.Fatalf("fetch of a removed owner: %v", err)
	}
	if err := b.store.DeleteGeneration(2); err != nil {
		t.Fatal(err)
	}

	type want struct {
		kind   EventKind
		op     string
		reason string
		split  bool
	}
	wants := []want{
		{EventStored, opPush, "", true},
		{EventServed, opFetch, "", true},
		{EventRefused, opFetch, "OWNER_REMOVED", false},
		{EventDeleted, "", DeletedGeneration, true},
	}
	var got []Event
	waitFor(t, "four audit records", func() bool {
		got = nil
		if err := ReadAuditLog(path, func(e Event) error { got = append(got, e); return nil }); err != nil {
			t.Fatal(err)
		}
		return len(got) >= len(wants)
	})
	if len(got) != len(wants) {
		t.Fatalf("%d records, want %d: %+v", len(got), len(wants), got)
	}
	for i, w := range wants {
		e := got[i]
		if e.Kind != w.kind || e.Op != w.op || e.Reason != w.reason || e.Owner != a.id || e.Holder != b.id || e.Generation != 2 {
			t.Fatalf("record %d: %+v, want %+v from %s on %s", i, e, w, a.id, b.id)
		}
		if w.split && e.Split != a.split {
			t.Fatalf("record %d: split %x, want %x", i, e.Split, a.split)
		}
		if w.kind != EventDeleted && e.Remote != a.id {
			t.Fatalf("record %d: remote %s", i, e.Remote)
		}
		if time.Since(e.Time) > time.Minute || e.Time.Location() != time.UTC {
			t.Fatalf("record %d: time %v", i, e.Time)
		}
	}

	// The same events are INFO log lines naming owner, holder,
	// generation, split and reason.
	for _, msg := range []string{"share envelope stored", "share envelope served", "share request refused", "share envelope deleted"} {
		entries := b.logs.FilterMessage(msg).All()
		if len(entries) != 1 {
			t.Fatalf("%d log lines %q", len(entries), msg)
		}
		if entries[0].Level != zapcore.InfoLevel {
			t.Fatalf("%q logged at %v", msg, entries[0].Level)
		}
		f := entries[0].ContextMap()
		if f["owner"] != a.id.String() || f["holder"] != b.id.String() || f["generation"] != uint64(2) {
			t.Fatalf("%q: fields %v", msg, f)
		}
		if msg == "share request refused" && f["reason"] != "OWNER_REMOVED" {
			t.Fatalf("refusal logged without its reason: %v", f)
		}
		if msg != "share request refused" && f["split"] != hex.EncodeToString(a.split[:]) {
			t.Fatalf("%q logged without its split: %v", msg, f)
		}
	}
	for _, e := range b.logs.All() {
		if e.Level >= zapcore.WarnLevel {
			t.Fatalf("normal operation logged at %v: %s %v", e.Level, e.Message, e.ContextMap())
		}
	}

	st := b.svc.Stats()
	if st.Stored != 1 || st.Served != 1 || st.Refused[RefusalKey{opFetch, "OWNER_REMOVED"}] != 1 || st.Deleted[DeletedGeneration] != 1 {
		t.Fatalf("stats: %+v", st)
	}
	holderObs.mu.Lock()
	if len(holderObs.events) != 4 {
		t.Fatalf("observer saw %d holder events", len(holderObs.events))
	}
	holderObs.mu.Unlock()
	ownerObs.mu.Lock()
	if fmt.Sprint(ownerObs.requests) != "[push OK fetch OK fetch OWNER_REMOVED]" {
		t.Fatalf("owner requests observed: %v", ownerObs.requests)
	}
	ownerObs.mu.Unlock()

	// No share or envelope bytes, in any encoding, in the file.
	audit.Close()
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for name, secret := range map[string][]byte{"share": share, "envelope": raw, "ciphertext": env.Ciphertext} {
		for _, enc := range [][]byte{secret, []byte(hex.EncodeToString(secret)), []byte(base64.StdEncoding.EncodeToString(secret)),
			[]byte(base64.RawURLEncoding.EncodeToString(secret))} {
			// A 16-byte window is enough to be unmistakable.
			if bytes.Contains(file, enc[:min(len(enc), 16)]) {
				t.Fatalf("the audit log holds %s bytes", name)
			}
		}
	}
}

func TestReason(t *testing.T) {
	for err, want := range map[error]string{
		nil:                                 "OK",
		fmt.Errorf("x: %w", ErrNotFound):    "NOT_FOUND",
		ErrInternal:                         "INTERNAL",
		errors.New("dial backoff"):          "OTHER",
		fmt.Errorf("%w: x", ErrBadResponse): "OTHER",
	} {
		if got := Reason(err); got != want {
			t.Errorf("Reason(%v) = %s, want %s", err, got, want)
		}
	}
}

// TestAuditSelf: a node's own envelopes, pushed to and fetched from its own
// store without a stream, are recorded too.
func TestAuditSelf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	audit, err := OpenAuditLog(path, AuditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { audit.Close() })
	a := newTestNode(t, testCluster, WithAuditLog(audit))
	if _, err := a.svc.Push(ctx(t), a.id, a.seal(a.id, 1, []byte("own share"))); err != nil {
		t.Fatal(err)
	}
	if _, err := a.svc.Fetch(ctx(t), a.id, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := a.svc.Fetch(ctx(t), a.id, 2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fetch of a missing own envelope: %v", err)
	}
	got := readAll(t, path)
	want := []string{"stored push  1", "served fetch  1", "refused fetch NOT_FOUND 2"}
	if len(got) != len(want) {
		t.Fatalf("%d records: %+v", len(got), got)
	}
	for i, e := range got {
		if s := fmt.Sprintf("%s %s %s %d", e.Kind, e.Op, e.Reason, e.Generation); s != want[i] {
			t.Fatalf("record %d: %q, want %q", i, s, want[i])
		}
		if e.Owner != a.id || e.Holder != a.id || e.Remote != a.id {
			t.Fatalf("record %d: %+v", i, e)
		}
	}
	if got[0].Split != a.split || got[1].Split != a.split {
		t.Fatalf("own records without their split: %+v", got)
	}
}

package consensus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/peer"
)

// testClock is a clock a test sets by hand.
type testClock struct{ ns atomic.Int64 }

func (c *testClock) Now() time.Time { return time.Unix(0, c.ns.Load()) }

// clockedCluster starts a cluster in which every node has its own testClock.
func clockedCluster(t *testing.T, n int) (*cluster, map[peer.ID]*testClock) {
	t.Helper()
	var mu sync.Mutex
	clocks := map[peer.ID]*testClock{}
	cl := newClusterWith(t, n, func(c *Config) {
		clk := &testClock{}
		mu.Lock()
		clocks[c.Host.ID()] = clk
		mu.Unlock()
		c.Now = clk.Now
	})
	return cl, clocks
}

// waitStamps waits until every node has applied want, and checks that every
// node applied exactly those stamps.
func waitStamps(t *testing.T, cl *cluster, want []int64) {
	t.Helper()
	waitFor(t, "every node to apply the commands", 10*time.Second, func() bool {
		for _, nd := range cl.live() {
			if len(nd.sm.Stamps()) < len(want) {
				return false
			}
		}
		return true
	})
	for _, nd := range cl.live() {
		if got := nd.sm.Stamps(); !slices.Equal(got, want) {
			t.Fatalf("node %s applied stamps %v, want %v", nd.host.ID(), got, want)
		}
	}
}

// Rule S7: time in the log is the leader's clock, stamped when the leader
// appends, whoever proposed the command and whatever its own clock says; and
// it never goes backwards within one leader.
func TestLeaderStampsItsClock(t *testing.T) {
	cl, clocks := clockedCluster(t, 3)
	leader := cl.waitLeader(cl.nodes)
	f := cl.followers(leader)
	const base = int64(1_900_000_000_000_000_000)
	clocks[leader].ns.Store(base)
	clocks[f[0].host.ID()].ns.Store(base + int64(time.Hour)) // a proposer's clock far ahead
	clocks[f[1].host.ID()].ns.Store(base - int64(time.Hour)) // and one far behind

	apply(t, f[0].c, "from the follower ahead")
	apply(t, f[1].c, "from the follower behind")
	clocks[leader].ns.Store(base - int64(time.Second)) // the leader's clock steps back
	apply(t, cl.byID(leader).c, "after the step back")
	clocks[leader].ns.Store(base + 5*int64(time.Second))
	// A proposer cannot set the stamp: a command that looks like a stamped
	// entry is only a command, wrapped in the leader's entry.
	forged := EncodeEntry(base+int64(time.Hour), []byte("forged"))
	apply(t, f[0].c, string(forged))

	waitStamps(t, cl, []int64{base, base + 1, base + 2, base + 5*int64(time.Second)})
	for _, nd := range cl.nodes {
		if nd.sm.Count(string(forged)) != 1 {
			t.Fatalf("node %s did not apply the forged-looking command verbatim", nd.host.ID())
		}
	}
}

// Concurrent proposers, on the leader and forwarded, get stamps that
// strictly increase in log order: the stamp is taken and the entry appended
// under one lock.
func TestStampsIncreaseInLogOrder(t *testing.T) {
	cl, clocks := clockedCluster(t, 3)
	leader := cl.waitLeader(cl.nodes)
	const base = int64(1_900_000_000_000_000_000)
	clocks[leader].ns.Store(base) // a clock that does not move

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 48 {
		nd := cl.nodes[i%3]
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if _, err := nd.c.Apply(ctx, fmt.Appendf(nil, "cmd %d", i)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	want := make([]int64, 48)
	for i := range want {
		want[i] = base + int64(i)
	}
	waitStamps(t, cl, want)
}

// An entry of an unknown version is refused with a deterministic error on
// every node, and changes nothing.
func TestUnknownEntryVersionRefused(t *testing.T) {
	cl := newCluster(t, 3)
	leader := cl.byID(cl.waitLeader(cl.nodes))
	for _, data := range [][]byte{{9, 'x'}, {entryVersion2, 1, 2}, {}} {
		f := leader.c.raft.Apply(data, 5*time.Second)
		if err := f.Error(); err != nil {
			t.Fatal(err)
		}
		r := f.Response().(applyResult)
		if !errors.Is(r.err, ErrEntryVersion) && !errors.Is(r.err, ErrEntryFormat) {
			t.Fatalf("entry %x: got %v, want ErrEntryVersion or ErrEntryFormat", data, r.err)
		}
	}
	apply(t, leader.c, "after")
	waitFor(t, "every node to apply the good command", 5*time.Second, func() bool {
		for _, nd := range cl.nodes {
			if nd.sm.Len() != 1 {
				return false
			}
		}
		return true
	})
}

// A snapshot carries the highest stamp applied (version 2), so a node
// restored from one, now the usual restart, floors its stamps as a node
// that replayed the log would (S7); a version 1 snapshot still restores.
func TestSnapshotCarriesTheStampFloor(t *testing.T) {
	src := &fsm{sm: &stampSM{}}
	if res := src.Apply(&raft.Log{Type: raft.LogCommand, Index: 1, Data: EncodeEntry(1_000_000, []byte("x"))}); res.(applyResult).err != nil {
		t.Fatal(res.(applyResult).err)
	}
	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	dst := &fsm{sm: &stampSM{}}
	if err := dst.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got := dst.maxStamp.Load(); got != 1_000_000 {
		t.Fatalf("restored stamp floor %d, want 1000000", got)
	}
	old := &fsm{sm: &stampSM{}}
	if err := old.Restore(io.NopCloser(bytes.NewReader([]byte(snapshotMagic + "\x01state")))); err != nil {
		t.Fatalf("a version 1 snapshot: %v", err)
	}
	for _, bad := range []string{snapshotMagic + "\x02short", snapshotMagic + "\x03"} {
		if err := old.Restore(io.NopCloser(bytes.NewReader([]byte(bad)))); !errors.Is(err, ErrSnapshotFormat) {
			t.Errorf("Restore(%q) = %v, want ErrSnapshotFormat", bad, err)
		}
	}
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct{ bytes.Buffer }

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { return nil }
func (s *memSink) Close() error  { return nil }
